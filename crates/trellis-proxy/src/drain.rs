//! Graceful drain: listeners stop accepting, HTTP connections finish in-flight requests and close,
//! and shutdown waits (bounded) until every tracked connection is gone.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    signal: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

/// Held by each live connection; dropping it lets the drain finish.
pub struct ConnGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                signal: watch::channel(false).0,
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Starts draining; idempotent.
    pub fn start(&self) {
        self.inner.signal.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.signal.borrow()
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        let mut rx = self.inner.signal.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn track(&self) -> ConnGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard {
            inner: self.inner.clone(),
        }
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is tracked, or `limit` passes; true when idle.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_connections() {
        let drain = Drain::new();
        let guard = drain.track();
        assert!(!drain.wait_idle(Duration::from_millis(10)).await);
        let d = drain.clone();
        let waiter = tokio::spawn(async move { d.wait_idle(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(guard);
        assert!(waiter.await.unwrap());
    }
}
