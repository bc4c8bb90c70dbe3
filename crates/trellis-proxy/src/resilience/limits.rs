//! Circuit breaking by limits, per destination service: concurrent requests, connections (one per
//! in-flight HTTP/1 request), requests waiting for a connection, and retries in flight. Past a
//! limit the proxy answers `503` with `trellis-error: pool-overflow` at once, instead of queueing
//! without bound. Requests wait for a connection only while fewer than `maxPendingRequests` wait,
//! and never longer than the connect timeout.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trellis_api::policy::ConnectionPool;

/// Envoy's defaults for every threshold.
const DEFAULT_LIMIT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_requests: usize,
    pub max_retries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_LIMIT,
            max_pending: DEFAULT_LIMIT,
            max_requests: DEFAULT_LIMIT,
            max_retries: DEFAULT_LIMIT,
        }
    }
}

impl Limits {
    pub fn from_config(c: Option<&ConnectionPool>) -> Self {
        let d = Self::default();
        let Some(c) = c else {
            return d;
        };
        let get = |v: Option<u32>, default: usize| v.map_or(default, |n| n as usize);
        Self {
            max_connections: get(c.max_connections, d.max_connections),
            max_pending: get(c.max_pending_requests, d.max_pending),
            max_requests: get(c.max_requests, d.max_requests),
            max_retries: get(c.max_retries, d.max_retries),
        }
    }
}

/// Which limit overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Requests,
    Pending,
    Retries,
}

impl Overflow {
    pub fn describe(self, limits: &Limits) -> String {
        match self {
            Overflow::Requests => {
                format!("{} concurrent requests (maxRequests)", limits.max_requests)
            }
            Overflow::Pending => format!(
                "{} connections busy and {} requests waiting (maxConnections, maxPendingRequests)",
                limits.max_connections, limits.max_pending
            ),
            Overflow::Retries => format!("{} retries in flight (maxRetries)", limits.max_retries),
        }
    }
}

/// Live counters of one destination service, carried across snapshots.
#[derive(Debug)]
pub struct LimitState {
    requests: AtomicUsize,
    pending: AtomicUsize,
    retries: AtomicUsize,
    connections: Arc<Semaphore>,
    connection_limit: AtomicUsize,
}

/// Held for the life of an admitted request (or retry); releases its counts on drop.
#[derive(Debug)]
pub struct RequestPermit {
    state: Arc<LimitState>,
    retry: bool,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        self.state.requests.fetch_sub(1, Ordering::AcqRel);
        if self.retry {
            self.state.retries.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl LimitState {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            requests: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            connection_limit: AtomicUsize::new(limits.max_connections),
        })
    }

    /// Adapts the connection semaphore when a reload changed `maxConnections`.
    pub fn resize(&self, limits: &Limits) {
        let old = self
            .connection_limit
            .swap(limits.max_connections, Ordering::AcqRel);
        if limits.max_connections > old {
            self.connections.add_permits(limits.max_connections - old);
        } else if old > limits.max_connections {
            self.connections
                .forget_permits(old - limits.max_connections);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    fn try_increment(counter: &AtomicUsize, limit: usize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Admits a request (or a retry) or says which limit overflowed. `hold_connection` applies
    /// the connection limit (HTTP/1, one connection per in-flight request).
    pub async fn admit(
        self: &Arc<Self>,
        limits: &Limits,
        retry: bool,
        hold_connection: bool,
        wait_at_most: Duration,
    ) -> Result<RequestPermit, Overflow> {
        if retry && !Self::try_increment(&self.retries, limits.max_retries) {
            return Err(Overflow::Retries);
        }
        let undo_retry = |s: &Self| {
            if retry {
                s.retries.fetch_sub(1, Ordering::AcqRel);
            }
        };
        if !Self::try_increment(&self.requests, limits.max_requests) {
            undo_retry(self);
            return Err(Overflow::Requests);
        }
        let mut permit = RequestPermit {
            state: self.clone(),
            retry,
            _connection: None,
        };
        if hold_connection {
            permit._connection = Some(self.connection(limits, wait_at_most).await?);
        }
        Ok(permit)
    }

    /// Admits an opaque TCP connection: it holds one of `maxConnections` for as long as it is
    /// open, waiting for one as an HTTP/1 request would (while fewer than `maxPendingRequests`
    /// wait, and at most `wait_at_most`). A connection is not a request: `maxRequests` and
    /// `maxRetries` do not count it.
    pub async fn admit_connection(
        &self,
        limits: &Limits,
        wait_at_most: Duration,
    ) -> Result<OwnedSemaphorePermit, Overflow> {
        self.connection(limits, wait_at_most).await
    }

    async fn connection(
        &self,
        limits: &Limits,
        wait_at_most: Duration,
    ) -> Result<OwnedSemaphorePermit, Overflow> {
        if let Ok(p) = self.connections.clone().try_acquire_owned() {
            return Ok(p);
        }
        if !Self::try_increment(&self.pending, limits.max_pending) {
            return Err(Overflow::Pending);
        }
        let waited =
            tokio::time::timeout(wait_at_most, self.connections.clone().acquire_owned()).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Overflow::Pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: usize, pending: usize, requests: usize, retries: usize) -> Limits {
        Limits {
            max_connections: conns,
            max_pending: pending,
            max_requests: requests,
            max_retries: retries,
        }
    }

    #[tokio::test]
    async fn max_requests_overflows_at_once_and_frees_on_drop() {
        let l = limits(100, 100, 2, 10);
        let s = LimitState::new(&l);
        let a = s.admit(&l, false, false, Duration::ZERO).await.unwrap();
        let _b = s.admit(&l, false, false, Duration::ZERO).await.unwrap();
        assert_eq!(
            s.admit(&l, false, false, Duration::ZERO).await.unwrap_err(),
            Overflow::Requests
        );
        drop(a);
        assert!(s.admit(&l, false, false, Duration::ZERO).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_wait_bounded_then_overflow() {
        let l = limits(1, 1, 100, 10);
        let s = LimitState::new(&l);
        let first = s
            .admit(&l, false, true, Duration::from_secs(1))
            .await
            .unwrap();
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { s2.admit(&l, false, true, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        // One waits already; a third overflows at once.
        assert_eq!(
            s.admit(&l, false, true, Duration::from_secs(5))
                .await
                .unwrap_err(),
            Overflow::Pending
        );
        drop(first);
        assert!(
            waiter.await.unwrap().is_ok(),
            "the waiter gets the freed connection"
        );
        let held = s.admit(&l, false, true, Duration::from_millis(100)).await;
        assert!(held.is_ok());
        let timed_out = s.admit(&l, false, true, Duration::from_millis(100)).await;
        assert_eq!(
            timed_out.unwrap_err(),
            Overflow::Pending,
            "waiting is bounded"
        );
    }

    #[tokio::test]
    async fn retries_have_their_own_limit() {
        let l = limits(100, 100, 100, 1);
        let s = LimitState::new(&l);
        let r = s.admit(&l, true, false, Duration::ZERO).await.unwrap();
        assert_eq!(
            s.admit(&l, true, false, Duration::ZERO).await.unwrap_err(),
            Overflow::Retries
        );
        assert!(
            s.admit(&l, false, false, Duration::ZERO).await.is_ok(),
            "first tries still pass"
        );
        drop(r);
        assert!(s.admit(&l, true, false, Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn opaque_connections_hold_a_connection_but_no_request() {
        let l = limits(1, 0, 1, 10);
        let s = LimitState::new(&l);
        let conn = s.admit_connection(&l, Duration::ZERO).await.unwrap();
        assert_eq!(s.in_flight(), 0, "not a request");
        assert_eq!(
            s.admit_connection(&l, Duration::ZERO).await.unwrap_err(),
            Overflow::Pending
        );
        assert_eq!(
            s.admit(&l, false, true, Duration::ZERO).await.unwrap_err(),
            Overflow::Pending,
            "HTTP/1 requests share the connection limit"
        );
        assert!(s.admit(&l, false, false, Duration::ZERO).await.is_ok());
        drop(conn);
        assert!(s.admit_connection(&l, Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn resize_follows_config() {
        let l = limits(1, 0, 100, 10);
        let s = LimitState::new(&l);
        let _a = s.admit(&l, false, true, Duration::ZERO).await.unwrap();
        assert!(s.admit(&l, false, true, Duration::ZERO).await.is_err());
        let bigger = limits(2, 0, 100, 10);
        s.resize(&bigger);
        assert!(s.admit(&bigger, false, true, Duration::ZERO).await.is_ok());
    }
}
