//! Idle tracking for HTTP connections, so keep-alive connections live as long as their idle
//! timeout says and no longer: on the sidecar's listeners (`--idle-timeout`, 1 h like Envoy's
//! default, counted from the end of the last response) and for multiplexed HTTP/2 connections to
//! upstreams (`--upstream-idle-timeout`).
//!
//! Why not hyper's own timer: hyper's HTTP/1 header-read timer runs from the moment it waits for
//! a head, so between keep-alive requests too; used as the idle timeout it either closes
//! keep-alive connections after the header-read timeout (30 s: shorter than most clients' pools,
//! which then reuse a closed connection) or lets a slow head take as long as the idle timeout.
//! HTTP/2 has no idle timeout in hyper at all. So an [`Activity`] counts the requests in flight
//! on one connection (a request is in flight until its response body is finished or dropped,
//! so a long stream keeps its connection) and [`Activity::expired`] resolves once the connection
//! has had none for long enough.
//!
//! What it must never do: time out a connection with a request in flight.
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

#[derive(Debug, Clone, Copy)]
struct State {
    in_flight: usize,
    /// When the last request finished (or the connection opened, before any).
    idle_since: Instant,
    /// Whether any request started yet.
    served: bool,
    /// Timed out: a connection being closed takes no new requests from [`Activity::try_start`].
    retired: bool,
}

impl State {
    /// The earliest moment the connection may be closed, given what it did so far.
    fn due(&self, idle: Duration, first: Duration) -> Instant {
        self.idle_since + if self.served { idle } else { first }
    }
}

/// The requests in flight on one connection, and since when it has had none.
///
/// Counting a request takes an uncontended lock and wakes nothing: the timer task looks at the
/// count only when its deadline passes. (Notifying it on every request start and end costs two
/// extra polls of the connection per request, measurable on the request path.)
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
}

/// A request in flight; it ends when this is dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
    }
}

impl Activity {
    /// A connection that just opened: idle since now, nothing served yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                served: false,
                retired: false,
            }),
        })
    }

    /// The state; a panic elsewhere while holding it leaves plain counters, still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request the connection is serving (a server takes every request it is given).
    pub fn start(self: &Arc<Self>) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.served = true;
        drop(s);
        InFlight(self.clone())
    }

    /// Counts a request to send on this connection, unless it timed out (then open another).
    pub fn try_start(self: &Arc<Self>) -> Option<InFlight> {
        let mut s = self.lock();
        if s.retired {
            return None;
        }
        s.in_flight += 1;
        s.served = true;
        drop(s);
        Some(InFlight(self.clone()))
    }

    /// Resolves once the connection has had no request in flight for `idle` (or, before its
    /// first request, for `first`), and marks it retired.
    ///
    /// It sleeps to the earliest moment the connection could be due and looks again then: with
    /// a request in flight that is `idle` from now at the soonest (a request ending later only
    /// moves the moment further); before the first request, `first` from the start or `idle`
    /// from now, whichever is sooner. So it never closes early and never sleeps past a due time.
    pub async fn expired(&self, idle: Duration, first: Duration) {
        loop {
            let wake = {
                let mut s = self.lock();
                let now = Instant::now();
                if s.in_flight > 0 {
                    now + idle
                } else if now >= s.due(idle, first) {
                    s.retired = true;
                    return;
                } else {
                    // Before the first request the deadline is `first` from the start, but a
                    // request finishing meanwhile moves it to `idle` after that, which may be
                    // sooner: look again by then.
                    s.due(idle, first).min(now + idle)
                }
            };
            sleep_until(wake).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(3600);
    const FIRST: Duration = Duration::from_secs(30);

    async fn expires_within(a: &Activity, limit: Duration) -> bool {
        tokio::time::timeout(limit, a.expired(IDLE, FIRST))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_asks_expires_after_the_first_request_timeout() {
        let a = Activity::new();
        assert!(!expires_within(&a, FIRST - Duration::from_secs(1)).await);
        assert!(expires_within(&a, Duration::from_secs(2)).await);
        assert!(
            a.try_start().is_none(),
            "a retired connection takes no requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_lasts_the_idle_timeout_from_the_last_response() {
        let a = Activity::new();
        drop(a.start());
        // Idle much longer than a header-read timeout: still open.
        assert!(!expires_within(&a, IDLE - Duration::from_secs(60)).await);
        // A request resets the clock.
        drop(a.start());
        assert!(!expires_within(&a, IDLE - Duration::from_secs(1)).await);
        assert!(expires_within(&a, Duration::from_secs(2)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_idle_timeout_applies_after_a_first_request_under_a_long_first_timeout() {
        let a = Activity::new();
        let short = Duration::from_secs(1);
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.expired(short, FIRST).await })
        };
        tokio::task::yield_now().await;
        drop(a.start());
        let expired = tokio::time::timeout(Duration::from_secs(3), waiting).await;
        assert!(expired.is_ok(), "still open well past the idle timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_timed_out() {
        let a = Activity::new();
        let stream = a.try_start().expect("not retired");
        assert!(!expires_within(&a, IDLE * 3).await);
        drop(stream);
        assert!(expires_within(&a, IDLE + Duration::from_secs(1)).await);
    }
}
