//! Exponential backoff with full jitter between retries.
//!
//! Retries that fire in lockstep hit a recovering endpoint all at once; spreading each wait
//! uniformly over `[0, base × 2^(n-1)]` ("full jitter") breaks them apart, and the cap keeps a
//! long retry chain from waiting longer than the caller would. Defaults follow Envoy: a 25 ms
//! base and a cap of ten times the base.
use rand::Rng;
use std::time::Duration;

/// The first retry's ceiling when a policy names no backoff.
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// How long to wait before a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// `max` defaults to ten times `base`, and is never below `base`.
    pub fn new(base: Duration, max: Option<Duration>) -> Self {
        let max = max.unwrap_or_else(|| base.saturating_mul(10)).max(base);
        Self { base, max }
    }

    /// From a route's `backoff`, or the defaults when it has none.
    pub fn from_config(config: Option<&trellis_api::route::Backoff>) -> Self {
        match config {
            Some(b) => Self::new(b.base_interval.as_std(), b.max_interval.map(|d| d.as_std())),
            None => Self::default(),
        }
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The longest wait before retry number `retry_number` (1 for the first retry; 0 counts as
    /// 1): `base × 2^(n-1)`, capped at `max`.
    pub fn ceiling(&self, retry_number: u32) -> Duration {
        let doublings = retry_number.saturating_sub(1);
        1u32.checked_shl(doublings)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random wait in `[0, ceiling(retry_number)]`.
    pub fn delay(&self, retry_number: u32) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry_number).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=ceiling))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_BASE_INTERVAL, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn defaults_follow_envoy() {
        let b = Backoff::default();
        assert_eq!(b.base(), 25 * MS);
        assert_eq!(b.max(), 250 * MS);
        assert_eq!(Backoff::from_config(None), b);
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(25 * MS, None);
        let ceilings: Vec<Duration> = (0..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [25, 25, 50, 100, 200, 250, 250].map(|ms| ms * MS).to_vec()
        );
        // Huge retry numbers saturate instead of overflowing.
        assert_eq!(b.ceiling(u32::MAX), 250 * MS);
        assert_eq!(Backoff::new(Duration::MAX, None).ceiling(40), Duration::MAX);
    }

    #[test]
    fn configured_max_is_honoured_but_not_below_base() {
        let config = trellis_api::route::Backoff {
            base_interval: trellis_api::Duration::from_millis(100),
            max_interval: Some(trellis_api::Duration::from_millis(300)),
        };
        let b = Backoff::from_config(Some(&config));
        assert_eq!((b.ceiling(2), b.ceiling(3)), (200 * MS, 300 * MS));
        assert_eq!(Backoff::new(100 * MS, Some(10 * MS)).max(), 100 * MS);
    }

    #[test]
    fn delay_is_jittered_within_the_ceiling() {
        let b = Backoff::new(100 * MS, Some(Duration::from_secs(10)));
        for n in 1..=5 {
            let ceiling = b.ceiling(n);
            let delays: Vec<Duration> = (0..500).map(|_| b.delay(n)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            let mean = delays.iter().sum::<Duration>() / 500;
            // Uniform on [0, ceiling]: the mean is half the ceiling.
            assert!(
                mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5,
                "{n}: {mean:?}"
            );
        }
        assert_eq!(Backoff::new(Duration::ZERO, None).delay(3), Duration::ZERO);
    }
}
