//! The retry budget: retries may be at most a ratio of live requests, plus a small floor.
//!
//! Attempt limits alone multiply load when a service is sick (three attempts triple it exactly
//! when it can least take it). A budget, as in linkerd2 and tower's `TpsBudget`, lets retries
//! through only while they stay under `ratio` × the requests seen in the last `ttl`, plus
//! `min_retries_per_second` × `ttl` so a quiet route can still retry at all.
//!
//! The window is `ttl` cut into ten slices; a slice's count expires as a whole, so the window
//! is between 0.9 and 1.0 × `ttl` long. Counts are kept in fixed-point units (one retry is
//! [`UNIT`]) so fractional ratios add up exactly. One short `std::sync::Mutex` guards the slices:
//! each call takes it for a few additions and never across an await, which keeps a withdrawal
//! and its check atomic (tower's lock-free version can overdraw under contention). Time comes
//! from `tokio::time::Instant` so tests run on the paused clock.
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long deposits and withdrawals count, when the config does not say.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Bounds on `ttl` (as linkerd2 and tower).
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(60);
/// Bounds on `ratio`: above 1000 retries per request means no budget at all.
const MAX_RATIO: f64 = 1000.0;
const SLICES: usize = 10;
/// The cost of one retry in fixed-point units; a request deposits `ratio × UNIT`.
const UNIT: i64 = 10_000;

/// A route's retry budget, shared by every request on the route (`Arc` it).
pub struct RetryBudget {
    /// `None` means unlimited.
    window: Option<Window>,
}

struct Window {
    deposit: i64,
    reserve: i64,
    slice: Duration,
    epoch: Instant,
    state: Mutex<Slices>,
}

struct Slices {
    balance: [i64; SLICES],
    /// The absolute number (since `epoch`) of the slice being written.
    head: u64,
}

impl RetryBudget {
    /// A budget that allows every retry (attempts and the replay buffer still bound them).
    pub fn unlimited() -> Self {
        Self { window: None }
    }

    /// Allows a retry while retries in the last `ttl` stay below `ratio` × requests in the last
    /// `ttl` + `min_retries_per_second` × `ttl`. `ratio` is clamped to `[0, 1000]` (NaN is 0),
    /// `ttl` to `[1 s, 60 s]`.
    pub fn new(ratio: f64, min_retries_per_second: u32, ttl: Duration) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, MAX_RATIO)
        };
        let ttl = ttl.clamp(MIN_TTL, MAX_TTL);
        let reserve = f64::from(min_retries_per_second) * ttl.as_secs_f64() * UNIT as f64;
        Self {
            window: Some(Window {
                // Float-to-int `as` saturates; both are far inside i64 after the clamps.
                deposit: (ratio * UNIT as f64).round() as i64,
                reserve: reserve.round() as i64,
                slice: ttl / SLICES as u32,
                epoch: Instant::now(),
                state: Mutex::new(Slices {
                    balance: [0; SLICES],
                    head: 0,
                }),
            }),
        }
    }

    /// From a route's `retries.budget`.
    pub fn from_config(config: &trellis_api::route::RetryBudget) -> Self {
        let ttl = config.ttl.map_or(DEFAULT_TTL, |d| d.as_std());
        Self::new(config.ratio, config.min_retries_per_second, ttl)
    }

    pub fn is_unlimited(&self) -> bool {
        self.window.is_none()
    }

    /// Records an original (not retried) request.
    pub fn deposit(&self) {
        if let Some(w) = &self.window {
            w.with_current(|slot, _| *slot = slot.saturating_add(w.deposit));
        }
    }

    /// Takes one retry from the budget if it has one.
    pub fn try_withdraw(&self) -> bool {
        let Some(w) = &self.window else {
            return true;
        };
        w.with_current(|slot, balance| {
            if balance >= UNIT {
                *slot = slot.saturating_sub(UNIT);
                true
            } else {
                false
            }
        })
    }
}

impl Window {
    /// Expires old slices, then runs `f` on the current slice and the whole balance.
    fn with_current<T>(&self, f: impl FnOnce(&mut i64, i64) -> T) -> T {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        let abs = u64::try_from(elapsed / self.slice.as_nanos().max(1)).unwrap_or(u64::MAX);
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Clear the slices that fell out of the window (all of them after a long idle).
        let stale = abs.saturating_sub(s.head).min(SLICES as u64);
        for k in 1..=stale {
            let i = slot_index(s.head.wrapping_add(k));
            if let Some(slot) = s.balance.get_mut(i) {
                *slot = 0;
            }
        }
        s.head = s.head.max(abs);
        let balance = s
            .balance
            .iter()
            .fold(self.reserve, |sum, b| sum.saturating_add(*b));
        let current = slot_index(s.head);
        let mut scratch = 0;
        let slot = s.balance.get_mut(current).unwrap_or(&mut scratch);
        f(slot, balance)
    }
}

fn slot_index(abs: u64) -> usize {
    // Always < SLICES.
    usize::try_from(abs % SLICES as u64).unwrap_or(0)
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.window {
            None => f.write_str("RetryBudget(unlimited)"),
            Some(w) => f
                .debug_struct("RetryBudget")
                .field("ratio", &(w.deposit as f64 / UNIT as f64))
                .field("reserve", &(w.reserve / UNIT))
                .field("ttl", &(w.slice * SLICES as u32))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn withdrawals(b: &RetryBudget) -> usize {
        (0..10_000).take_while(|_| b.try_withdraw()).count()
    }

    #[test]
    fn unlimited_always_allows() {
        let b = RetryBudget::unlimited();
        b.deposit();
        assert!(b.is_unlimited());
        assert_eq!(withdrawals(&b), 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_of_requests_is_allowed() {
        let b = RetryBudget::new(0.2, 0, DEFAULT_TTL);
        assert!(!b.try_withdraw(), "no traffic, no floor: no retries");
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(withdrawals(&b), 20);
        // Refused withdrawals cost nothing: five more requests buy exactly one retry.
        for _ in 0..5 {
            b.deposit();
        }
        assert_eq!(withdrawals(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_ttl() {
        let b = RetryBudget::new(0.5, 0, DEFAULT_TTL);
        for _ in 0..10 {
            b.deposit();
        }
        advance(DEFAULT_TTL + Duration::from_millis(1)).await;
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_and_tokens_come_back() {
        let b = RetryBudget::new(0.2, 1, DEFAULT_TTL);
        for _ in 0..100 {
            b.deposit();
        }
        // 20 from the ratio, 10 from the floor (1/s over 10 s).
        assert_eq!(withdrawals(&b), 30);
        advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw(), "still inside the window");
        advance(DEFAULT_TTL).await;
        assert_eq!(
            withdrawals(&b),
            10,
            "the floor is back once old retries expired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_retries_without_traffic() {
        let b = RetryBudget::new(0.2, 10, Duration::from_secs(2));
        assert_eq!(withdrawals(&b), 20);
        // A long idle clears everything, however long.
        advance(Duration::from_secs(3600)).await;
        assert_eq!(withdrawals(&b), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn config_and_bounds() {
        let config = trellis_api::route::RetryBudget {
            ratio: 0.1,
            min_retries_per_second: 0,
            ttl: None,
        };
        let b = RetryBudget::from_config(&config);
        for _ in 0..50 {
            b.deposit();
        }
        assert_eq!(withdrawals(&b), 5);
        // Out-of-range values are clamped instead of panicking or misbehaving.
        assert!(!RetryBudget::new(f64::NAN, 0, Duration::ZERO).try_withdraw());
        let huge = RetryBudget::new(f64::INFINITY, u32::MAX, Duration::MAX);
        huge.deposit();
        assert!(huge.try_withdraw());
    }
}
