//! Live load of one endpoint: requests in flight and a peak-sensitive EWMA of latency.
//!
//! This is the signal the default balancer (power of two choices over peak-EWMA, as in
//! linkerd2-proxy and tower's `PeakEwma`) compares. It lives in an `Arc` that the config layer
//! carries from one snapshot to the next, so a reload neither forgets that an endpoint is slow
//! nor loses count of the requests already on their way to it.
//!
//! The estimate is "peak" sensitive: a response slower than the estimate replaces it at once,
//! while faster ones pull it down gradually with a time constant (`decay`, 10 s by default), so
//! one slow response is enough to steer traffic away but one fast response is not enough to
//! bring it all back. An endpoint with nothing in flight sees its estimate fade toward zero with
//! the same time constant (tower does this by folding a zero RTT in on every load read); without
//! that an endpoint that was slow once would never be picked again and so never be re-measured.
//! The fade stops while requests are in flight, so an endpoint that has stopped answering does
//! not look cheaper the longer it hangs.
//!
//! A failed try (the connection refused or reset) has no latency to report, yet it is the most
//! expensive answer an endpoint can give: left out, a killed instance's estimate would fade to
//! zero and P2C would prefer it to every live one. So a failure is recorded as a response of
//! [`FAILURE_PENALTY`] (as Finagle's and linkerd's balancers charge a failure), which a peak
//! estimate takes at once; the same idle fade brings the endpoint back into consideration about
//! a minute later if nothing else (failure accrual, outlier detection) has decided first.
//!
//! Time comes from `tokio::time::Instant` so tests can drive it on tokio's paused clock. The
//! estimate sits behind a `std::sync::Mutex` held for a few arithmetic operations, never across
//! an await.
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The latency assumed for an endpoint that has not answered yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How quickly old latency observations lose weight.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
/// The latency a failed try (connect failure, reset) is charged: far above any healthy answer
/// on a mesh, so one failure is enough to steer P2C away, yet it fades like any other estimate.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Shared, reload-surviving load state of one endpoint.
pub struct EndpointLoad {
    in_flight: AtomicU64,
    decay_ns: f64,
    ewma: Mutex<Ewma>,
}

#[derive(Debug, Clone, Copy)]
struct Ewma {
    rtt_ns: f64,
    /// When `rtt_ns` was last updated by an observation.
    stamp: Instant,
}

impl EndpointLoad {
    /// An endpoint with nothing in flight and the default 30 ms latency estimate.
    pub fn new() -> Self {
        Self::with_params(DEFAULT_RTT, DEFAULT_DECAY)
    }

    /// An endpoint with a chosen initial estimate and decay time constant.
    pub fn with_params(default_rtt: Duration, decay: Duration) -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            // A zero decay would divide by zero; one nanosecond means "forget at once".
            decay_ns: nanos(decay).max(1.0),
            ewma: Mutex::new(Ewma {
                rtt_ns: nanos(default_rtt),
                stamp: Instant::now(),
            }),
        }
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            load: Arc::clone(self),
            started: Instant::now(),
            observed: false,
        }
    }

    /// Requests sent to this endpoint that have not finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The balancing cost: latency estimate in milliseconds × (requests in flight + 1).
    pub fn cost(&self) -> f64 {
        let pending = self.in_flight();
        // u64 → f64 loses precision only beyond 2^53 requests in flight.
        self.estimate_ms(pending) * (pending as f64 + 1.0)
    }

    /// The latency estimate in milliseconds, as `cost` sees it now (including the idle fade).
    pub fn ewma_ms(&self) -> f64 {
        self.estimate_ms(self.in_flight())
    }

    fn estimate_ms(&self, pending: u64) -> f64 {
        let ewma = *self.lock();
        let rtt_ns = if pending == 0 {
            let idle = nanos(Instant::now().saturating_duration_since(ewma.stamp));
            ewma.rtt_ns * (-idle / self.decay_ns).exp()
        } else {
            ewma.rtt_ns
        };
        rtt_ns / 1e6
    }

    /// Folds one latency observation into the estimate.
    fn observe(&self, latency: Duration) {
        let now = Instant::now();
        let rtt_ns = nanos(latency);
        let mut ewma = self.lock();
        if rtt_ns > ewma.rtt_ns {
            ewma.rtt_ns = rtt_ns;
        } else {
            let elapsed = nanos(now.saturating_duration_since(ewma.stamp));
            let decay = (-elapsed / self.decay_ns).exp();
            ewma.rtt_ns = ewma.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        ewma.stamp = now;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ewma> {
        // The state is two plain numbers, valid even if a holder panicked.
        self.ewma.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for EndpointLoad {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EndpointLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointLoad")
            .field("in_flight", &self.in_flight())
            .field("ewma_ms", &self.ewma_ms())
            .finish()
    }
}

/// One request in flight to an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<EndpointLoad>,
    started: Instant,
    observed: bool,
}

impl InFlight {
    /// Records the time to the first response byte. Only the first observation of a request
    /// counts, so callers may report at several places without double counting.
    pub fn observe_latency(&mut self, latency: Duration) {
        if !self.observed {
            self.observed = true;
            self.load.observe(latency);
        }
    }

    /// Records a failed try (no response: connection refused, reset) as a response of
    /// [`FAILURE_PENALTY`], or of the time it took if that was longer. Like a latency, only the
    /// first observation of a request counts.
    pub fn observe_failure(&mut self) {
        let took = Instant::now().saturating_duration_since(self.started);
        self.observe_latency(took.max(FAILURE_PENALTY));
    }

    /// Records the time since this guard was created as the latency.
    pub fn observe_now(&mut self) {
        let latency = Instant::now().saturating_duration_since(self.started);
        self.observe_latency(latency);
    }

    /// The endpoint this request counts against.
    pub fn load(&self) -> &Arc<EndpointLoad> {
        &self.load
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Every guard was counted once in `start`, so this never goes below zero.
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_default_and_counts_in_flight() {
        let load = Arc::new(EndpointLoad::new());
        assert!(close(load.ewma_ms(), 30.0));
        assert!(close(load.cost(), 30.0));
        let a = load.start();
        let b = load.start();
        assert_eq!(load.in_flight(), 2);
        assert!(close(load.cost(), 90.0));
        drop(a);
        drop(b);
        assert_eq!(load.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn slower_observation_is_taken_at_once() {
        let load = Arc::new(EndpointLoad::new());
        let mut req = load.start();
        req.observe_latency(Duration::from_millis(500));
        // A second observation of the same request is ignored.
        req.observe_latency(Duration::from_secs(5));
        assert!(close(load.ewma_ms(), 500.0));
        drop(req);
        assert!(close(load.cost(), 500.0));
    }

    #[tokio::test(start_paused = true)]
    async fn faster_observations_decay_toward_it_over_time() {
        let load = Arc::new(EndpointLoad::new());
        load.start().observe_latency(Duration::from_millis(500));
        // No time has passed: a faster response does not move the peak.
        load.start().observe_latency(Duration::from_millis(100));
        assert!(close(load.ewma_ms(), 500.0));
        // One time constant later the old value keeps e^-1 of its weight.
        tokio::time::advance(DEFAULT_DECAY).await;
        load.start().observe_latency(Duration::from_millis(100));
        let e = (-1.0f64).exp();
        assert!(close(load.ewma_ms(), 500.0 * e + 100.0 * (1.0 - e)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_estimate_fades_but_not_while_requests_hang() {
        let load = Arc::new(EndpointLoad::new());
        load.start().observe_latency(Duration::from_secs(1));
        tokio::time::advance(DEFAULT_DECAY).await;
        assert!(close(load.ewma_ms(), 1000.0 * (-1.0f64).exp()));

        let hung = load.start();
        tokio::time::advance(Duration::from_secs(60)).await;
        // Requests in flight: no fade, and the cost grows with them.
        assert!(close(load.ewma_ms(), 1000.0));
        assert!(close(load.cost(), 2000.0));
        drop(hung);
        assert!(load.ewma_ms() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_costs_the_penalty_at_once_and_fades_like_any_estimate() {
        let load = Arc::new(EndpointLoad::new());
        load.start().observe_latency(Duration::from_millis(2));
        let mut failed = load.start();
        failed.observe_failure();
        // A later observation of the same try does not undo the penalty.
        failed.observe_latency(Duration::from_millis(1));
        drop(failed);
        assert!(close(load.ewma_ms(), 1000.0));
        // Idle, the penalty fades: one decay constant keeps e^-1 of it.
        tokio::time::advance(DEFAULT_DECAY).await;
        assert!(close(load.ewma_ms(), 1000.0 * (-1.0f64).exp()));
        // A try that took longer than the penalty before failing is charged what it took.
        let slow = Arc::new(EndpointLoad::new());
        let mut hung = slow.start();
        tokio::time::advance(Duration::from_secs(3)).await;
        hung.observe_failure();
        drop(hung);
        assert!(close(slow.ewma_ms(), 3000.0));
        // A success after a long pause is taken nearly as measured.
        tokio::time::advance(DEFAULT_DECAY * 6).await;
        load.start().observe_latency(Duration::from_millis(2));
        assert!(load.ewma_ms() < 5.0, "{}", load.ewma_ms());
    }

    #[tokio::test(start_paused = true)]
    async fn observe_now_measures_guard_lifetime() {
        let load = Arc::new(EndpointLoad::new());
        let mut req = load.start();
        tokio::time::advance(Duration::from_millis(200)).await;
        req.observe_now();
        assert!(close(req.load().ewma_ms(), 200.0));
    }
}
