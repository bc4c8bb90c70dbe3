//! Default failure accrual: an endpoint that fails several tries in a row is backed off (left
//! out of picks) for a while that doubles each time it fails again, with no configuration at all.
//!
//! Why by default: a killed instance stays in endpoint sets until its lease lapses (10 s by
//! default; forever in a static config), and a balancer that does not know it is dead keeps
//! choosing it. linkerd2-proxy never sends to an endpoint whose connection is backing off, and
//! its consecutive-failures accrual shuts an endpoint and lets one request through after an
//! exponentially growing wait; Finagle ships failure accrual on by default. Trellis does the
//! same for every service that has no `outlierDetection` in its DestinationPolicy. A configured
//! outlier detector replaces this one (the user chose their thresholds and ejection times), so
//! the two never disagree about the same endpoint.
//!
//! What counts as a failure here is "the endpoint did not serve": a refused or failed connect,
//! a reset, a per-try timeout, or a gateway answer (502/503/504, or gRPC `UNAVAILABLE` in the
//! headers of a trailers-only answer, which is how a peer sidecar says its app is gone). Any
//! other answer, a 500 included, proves the endpoint is there and resets the count: this is not
//! a judge of the application's correctness, only of whether it can be reached.
//!
//! Parameters (see [`AccrualParams::DEFAULT`]): 5 consecutive failures (Finagle's default), a
//! first back-off of 1 s, doubling to at most 60 s (linkerd2's consecutive-failures defaults),
//! each back-off shortened by up to half at random so proxies that saw the same death do not
//! probe in step. When a back-off ends the endpoint is in probation: it is picked again, and
//! the first outcome decides, a failure backing it off at once for twice as long, a success
//! clearing its record. There is no timer task; expiry is checked when picking. If every
//! endpoint of a set is backed off the caller uses them all anyway (see [`super::passive_filter`]):
//! sending to a sick endpoint beats sending nowhere.
use super::Outcome;
use rand::Rng;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How default failure accrual behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccrualParams {
    /// Consecutive failures that back an endpoint off.
    pub max_failures: u32,
    /// The first back-off.
    pub min_backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// Each back-off is shortened by a random fraction in `[0, jitter]`.
    pub jitter: f64,
}

impl AccrualParams {
    pub const DEFAULT: AccrualParams = AccrualParams {
        max_failures: 5,
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
        jitter: 0.5,
    };

    /// The longest back-off after `level` back-offs in a row (1 for the first).
    pub fn ceiling(&self, level: u32) -> Duration {
        let doublings = level.saturating_sub(1).min(31);
        self.min_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff.max(self.min_backoff))
    }

    fn backoff(&self, level: u32) -> Duration {
        let ceiling = self.ceiling(level);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return ceiling;
        }
        ceiling.mul_f64(1.0 - rand::rng().random_range(0.0..=jitter))
    }
}

impl Default for AccrualParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One endpoint's failure record, shared across config snapshots (it lives in the endpoint's
/// [`super::OutlierState`]).
#[derive(Debug, Default)]
pub struct FailureAccrual {
    consecutive: AtomicU32,
    /// Back-offs in a row without a success since; 0 for an endpoint in good standing.
    level: AtomicU32,
    /// Set while a back-off may be running, so picks check the clock only then.
    backing_off: AtomicBool,
    until: Mutex<Option<Instant>>,
}

impl FailureAccrual {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the endpoint may be picked now: not backed off, or its back-off has ended.
    /// Costs one atomic load for an endpoint in good standing.
    pub fn is_available(&self) -> bool {
        if !self.backing_off.load(Ordering::Acquire) {
            return true;
        }
        let until = self.lock();
        match *until {
            Some(t) if Instant::now() < t => false,
            _ => {
                self.backing_off.store(false, Ordering::Release);
                true
            }
        }
    }

    /// Whether the endpoint might be backed off (a cheap pre-check for a set's filter).
    pub fn may_be_backed_off(&self) -> bool {
        self.backing_off.load(Ordering::Acquire)
    }

    /// Back-offs in a row since the endpoint last served (0: in good standing).
    pub fn level(&self) -> u32 {
        self.level.load(Ordering::Relaxed)
    }

    /// Records a try's outcome. Returns the back-off it started, if it started one.
    pub fn record(&self, params: &AccrualParams, outcome: Outcome) -> Option<Duration> {
        if !counts_as_failure(outcome) {
            self.consecutive.store(0, Ordering::Relaxed);
            self.level.store(0, Ordering::Relaxed);
            return None;
        }
        if !self.is_available() {
            // A straggler sent before the back-off began: already accounted for.
            return None;
        }
        let level = self.level.load(Ordering::Relaxed);
        let failures = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        // On probation (back from a back-off, no success since) one failure is enough.
        if level == 0 && failures < params.max_failures.max(1) {
            return None;
        }
        let level = level.saturating_add(1);
        let backoff = params.backoff(level);
        {
            let mut until = self.lock();
            *until = Some(Instant::now() + backoff);
        }
        self.level.store(level, Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.backing_off.store(true, Ordering::Release);
        Some(backoff)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // An instant is valid whatever a panicking holder did.
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// "The endpoint did not serve": see the module docs.
fn counts_as_failure(outcome: Outcome) -> bool {
    match outcome {
        Outcome::ConnectFailed | Outcome::GatewayError => true,
        Outcome::Success | Outcome::ServerError => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXACT: AccrualParams = AccrualParams {
        jitter: 0.0,
        ..AccrualParams::DEFAULT
    };

    fn fail(a: &FailureAccrual, n: u32) -> Option<Duration> {
        let mut last = None;
        for _ in 0..n {
            last = a.record(&EXACT, Outcome::ConnectFailed);
        }
        last
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_after_consecutive_failures_then_probes() {
        let a = FailureAccrual::new();
        assert_eq!(fail(&a, 4), None);
        assert!(a.is_available());
        assert_eq!(fail(&a, 1), Some(Duration::from_secs(1)));
        assert!(!a.is_available());
        assert_eq!(a.level(), 1);
        // Stragglers that were in flight when it backed off change nothing.
        assert_eq!(fail(&a, 10), None);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!a.is_available());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(a.is_available(), "on probation after the back-off");
        // The probe fails: backed off at once, for twice as long.
        assert_eq!(fail(&a, 1), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(!a.is_available());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(a.is_available());
        // The probe succeeds: in good standing, five failures needed again.
        assert_eq!(a.record(&EXACT, Outcome::Success), None);
        assert_eq!(a.level(), 0);
        assert_eq!(fail(&a, 4), None);
        assert_eq!(fail(&a, 1), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap() {
        let a = FailureAccrual::new();
        let mut seen = vec![fail(&a, 5).unwrap()];
        for _ in 0..8 {
            tokio::time::advance(seen[seen.len() - 1]).await;
            assert!(a.is_available());
            seen.push(fail(&a, 1).unwrap());
        }
        let secs: Vec<u64> = seen.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(EXACT.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_not_a_gateway_error_resets_the_count() {
        let a = FailureAccrual::new();
        fail(&a, 4);
        // A 500 proves the endpoint is reachable.
        assert_eq!(a.record(&EXACT, Outcome::ServerError), None);
        assert_eq!(fail(&a, 4), None);
        assert!(a.is_available());
        // Gateway answers (a peer sidecar whose app is gone) count like refused connects.
        assert_eq!(
            a.record(&EXACT, Outcome::GatewayError),
            Some(Duration::from_secs(1))
        );
        assert!(!a.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_only_shortens_and_by_at_most_half() {
        let p = AccrualParams::DEFAULT;
        for level in 1..8 {
            let ceiling = p.ceiling(level);
            for _ in 0..200 {
                let b = p.backoff(level);
                assert!(b <= ceiling && b >= ceiling / 2, "{level}: {b:?}");
            }
        }
    }
}
