//! The weight-aware building blocks shared by the algorithms: weighted random draws, the
//! precomputed round-robin schedule, and power-of-two-choices.
//!
//! Everything here is decided at build time where it can be, so a pick costs a random number or
//! an atomic increment and never takes a lock. `available` is asked at pick time so ejected or
//! unhealthy endpoints are skipped without rebuilding anything.
use super::Endpoint;
use rand::Rng;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Random draws that hit an unavailable endpoint before falling back to an exact scan.
const FAST_TRIES: usize = 4;
/// Longest round-robin schedule; larger weight sums are scaled down to about this size.
const MAX_SCHEDULE: u64 = 8192;

/// An endpoint's weight as the algorithms use it: 0 counts as 1 (to take an endpoint out of
/// rotation, leave it out of the set or mark it unavailable).
pub(super) fn effective_weight(e: &Endpoint) -> u64 {
    u64::from(e.weight.max(1))
}

/// Cumulative weights, for O(log n) weighted random draws.
#[derive(Debug)]
pub(super) struct Weights {
    cumulative: Vec<u64>,
}

impl Weights {
    pub(super) fn new(endpoints: &[Endpoint]) -> Self {
        let mut sum = 0u64;
        let cumulative = endpoints
            .iter()
            .map(|e| {
                sum = sum.saturating_add(effective_weight(e));
                sum
            })
            .collect();
        Self { cumulative }
    }

    pub(super) fn len(&self) -> usize {
        self.cumulative.len()
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    fn weight(&self, i: usize) -> u64 {
        let upto = self.cumulative.get(i).copied().unwrap_or(0);
        let before = i
            .checked_sub(1)
            .and_then(|j| self.cumulative.get(j))
            .copied()
            .unwrap_or(0);
        upto.saturating_sub(before)
    }

    /// An index drawn with probability proportional to its weight; `None` when empty.
    fn draw(&self, rng: &mut impl Rng) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let r = rng.random_range(0..total);
        Some(self.cumulative.partition_point(|&c| c <= r))
    }
}

/// A weighted random available endpoint.
pub(super) fn pick_random(weights: &Weights, available: &impl Fn(usize) -> bool) -> Option<usize> {
    let mut rng = rand::rng();
    for _ in 0..FAST_TRIES {
        let i = weights.draw(&mut rng)?;
        if available(i) {
            return Some(i);
        }
    }
    // Several draws hit unavailable endpoints: draw exactly among the available ones.
    let total = (0..weights.len())
        .filter(|&i| available(i))
        .fold(0u64, |sum, i| sum.saturating_add(weights.weight(i)));
    if total == 0 {
        return None;
    }
    let mut r = rng.random_range(0..total);
    let mut last = None;
    for i in (0..weights.len()).filter(|&i| available(i)) {
        let w = weights.weight(i);
        if r < w {
            return Some(i);
        }
        r -= w;
        last = Some(i);
    }
    // Only reached if availability changed between the two passes.
    last
}

/// Power of two choices: two distinct weighted random available candidates, the one with the
/// lower `score` wins (the first drawn on a tie, so idle endpoints share by weight).
pub(super) fn pick_p2c(
    weights: &Weights,
    available: &impl Fn(usize) -> bool,
    score: impl Fn(usize) -> f64,
) -> Option<usize> {
    let a = pick_random(weights, available)?;
    let Some(b) = pick_random(weights, &|i| i != a && available(i)) else {
        return Some(a);
    };
    if score(b) < score(a) {
        Some(b)
    } else {
        Some(a)
    }
}

/// Weighted round robin over a schedule precomputed by earliest-deadline-first, which
/// interleaves endpoints smoothly (weights 1:2 give `B A B`, not `A B B`) like nginx's smooth
/// weighted round robin. Equal weights need no schedule.
#[derive(Debug)]
pub(super) struct RoundRobin {
    /// Endpoint indices in serving order; empty means "all weights equal: index = turn".
    schedule: Vec<u32>,
    len: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    pub(super) fn new(endpoints: &[Endpoint]) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(effective_weight).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let schedule = if uniform {
            Vec::new()
        } else {
            let weights = bounded(&weights);
            let total = weights.iter().sum::<u64>();
            // Bounded above by MAX_SCHEDULE + n, and indices fit u32 for any sane set.
            let len = usize::try_from(total).unwrap_or(usize::MAX);
            Edf::new(&weights)
                .take(len)
                .filter_map(|i| u32::try_from(i).ok())
                .collect()
        };
        let len = if uniform {
            endpoints.len()
        } else {
            schedule.len()
        };
        Self {
            schedule,
            len,
            // Start at a random turn so proxies restarted together do not march in step.
            next: AtomicUsize::new(rand::rng().random_range(0..len.max(1))),
        }
    }

    /// The next endpoint in turn; an unavailable endpoint's turn goes to a weighted random
    /// available one, so its share spreads over the rest rather than all landing on its
    /// neighbour in the schedule.
    pub(super) fn pick(
        &self,
        weights: &Weights,
        available: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.len;
        let i = match self.schedule.get(turn) {
            Some(&i) => usize::try_from(i).ok()?,
            None => turn,
        };
        if available(i) {
            Some(i)
        } else {
            pick_random(weights, available)
        }
    }
}

/// Divides weights by their greatest common divisor and scales them down (keeping each ≥ 1)
/// when their sum exceeds [`MAX_SCHEDULE`].
fn bounded(weights: &[u64]) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total = reduced.iter().fold(0u64, |s, w| s.saturating_add(*w));
    if total <= MAX_SCHEDULE {
        return reduced;
    }
    reduced
        .iter()
        .map(|&w| {
            let scaled = u128::from(w) * u128::from(MAX_SCHEDULE) / u128::from(total);
            u64::try_from(scaled).unwrap_or(MAX_SCHEDULE).max(1)
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// An endless weighted sequence of indices: each index's k-th turn is due at time k / weight,
/// and the earliest due turn goes next (ties to the lower index). Over any prefix each index
/// has had its share of turns to within one.
pub(super) struct Edf {
    heap: BinaryHeap<Turn>,
}

impl Edf {
    /// Weights of 0 are treated as 1.
    pub(super) fn new(weights: &[u64]) -> Self {
        let heap = weights
            .iter()
            .enumerate()
            .map(|(index, &w)| Turn {
                nth: 1,
                weight: w.max(1),
                index,
            })
            .collect();
        Self { heap }
    }
}

impl Iterator for Edf {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let mut turn = self.heap.pop()?;
        let index = turn.index;
        turn.nth = turn.nth.saturating_add(1);
        self.heap.push(turn);
        Some(index)
    }
}

/// Ordered so that the max-heap pops the earliest deadline `nth / weight`.
#[derive(Debug, Clone, Copy)]
struct Turn {
    nth: u64,
    weight: u64,
    index: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        let mine = u128::from(self.nth) * u128::from(other.weight);
        let theirs = u128::from(other.nth) * u128::from(self.weight);
        theirs.cmp(&mine).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl Eq for Turn {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edf_interleaves_by_weight() {
        let seq: Vec<usize> = Edf::new(&[1, 2]).take(6).collect();
        assert_eq!(seq, vec![1, 0, 1, 1, 0, 1]);
        let mut counts = [0usize; 3];
        for i in Edf::new(&[1, 3, 6]).take(1000) {
            counts[i] += 1;
        }
        assert_eq!(counts, [100, 300, 600]);
    }

    #[test]
    fn schedule_weights_are_reduced_and_bounded() {
        assert_eq!(bounded(&[10, 20, 30]), vec![1, 2, 3]);
        let big = bounded(&[1, u64::from(u32::MAX), 7]);
        assert!(big.iter().sum::<u64>() <= MAX_SCHEDULE + 3);
        assert!(big.iter().all(|&w| w >= 1));
    }
}
