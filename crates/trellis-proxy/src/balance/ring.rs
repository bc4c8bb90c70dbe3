//! Ketama-style consistent hash ring.
//!
//! Each endpoint owns about 100 points per unit of weight on a 64-bit ring, placed by hashing
//! its address (not its position in the list), so rebuilding the ring after an endpoint leaves
//! moves only the keys that endpoint owned. A key belongs to the first point at or after its
//! hash; when that endpoint is unavailable the walk continues clockwise, which again disturbs
//! only the keys of the unavailable endpoint. The ring is bounded at [`MAX_POINTS`] points: large
//! sets get fewer points per endpoint rather than unbounded memory.
use super::hash::{fnv1a, fnv1a_extend, mix64};
use super::weighted::effective_weight;
use super::Endpoint;

/// Points per unit of weight.
const POINTS_PER_WEIGHT: u64 = 100;
/// Upper bound on ring size (12 bytes a point).
const MAX_POINTS: u64 = 65_536;

#[derive(Debug)]
pub(super) struct Ring {
    /// Point hashes, ascending.
    hashes: Vec<u64>,
    /// Endpoint index owning the point at the same position.
    owners: Vec<u32>,
}

impl Ring {
    pub(super) fn new(endpoints: &[Endpoint]) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(effective_weight).collect();
        let total = weights.iter().fold(0u64, |s, w| s.saturating_add(*w));
        let mut points: Vec<(u64, u32)> = Vec::new();
        for (i, (e, &w)) in endpoints.iter().zip(&weights).enumerate() {
            let Ok(owner) = u32::try_from(i) else { break };
            let wanted = u128::from(w) * u128::from(POINTS_PER_WEIGHT);
            let count =
                if u128::from(total) * u128::from(POINTS_PER_WEIGHT) <= u128::from(MAX_POINTS) {
                    wanted
                } else {
                    // Scale down to fit, keeping every endpoint on the ring.
                    (u128::from(w) * u128::from(MAX_POINTS) / u128::from(total.max(1))).max(1)
                };
            let count = u64::try_from(count).unwrap_or(MAX_POINTS);
            let seed = fnv1a(e.addr.to_string().as_bytes());
            points.extend((0..count).map(|k| (mix64(fnv1a_extend(seed, &k.to_le_bytes())), owner)));
        }
        // Ties (equal hashes, or duplicate addresses) resolve by index, so builds are repeatable.
        points.sort_unstable();
        let (hashes, owners) = points.into_iter().unzip();
        Self { hashes, owners }
    }

    /// The owner of the first point at or after `key` that `available` accepts.
    pub(super) fn pick(&self, key: u64, available: &impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.owners.len();
        let point = mix64(key);
        let start = self.hashes.partition_point(|&h| h < point);
        (0..len)
            .filter_map(|k| self.owners.get((start + k) % len))
            .filter_map(|&owner| usize::try_from(owner).ok())
            .find(|&i| available(i))
    }

    pub(super) fn len(&self) -> usize {
        self.owners.len()
    }
}
