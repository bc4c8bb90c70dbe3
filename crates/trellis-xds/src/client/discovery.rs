//! On-demand discovery, the proxy's side: instead of every Service it may call, the client names
//! the Services its app actually calls, one at a time as they are first called, so the proxy
//! holds config in proportion to what it uses (as Envoy's on-demand CDS, and as Linkerd's proxy
//! does by design).
//!
//! [`Discovery`] is shared by the proxy (which asks for a name and waits) and the client's
//! session (which sends the subscription and reports what came back). The server answers a
//! name with the Service — after its endpoints, routes and policies, so the first call finds
//! them in place — or, when the Service does not exist or this proxy may not call it, with the
//! name in `removed_resources`, so the caller learns at once instead of waiting out a timeout.
//! Names stay subscribed for the proxy's life and are named again on every reconnect.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// What became of a name the proxy asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The Service is in the proxy's config.
    Found,
    /// The control plane says there is no such Service for this proxy.
    Absent,
    /// No answer in time (the control plane is away or slow).
    TimedOut,
}

#[derive(Debug, Default)]
struct Names {
    /// Every name subscribed (`namespace/name`).
    wanted: BTreeSet<String>,
    /// Names the control plane said it does not have (until they appear).
    absent: BTreeSet<String>,
}

/// The Services a client names, shared between the proxy and the client.
#[derive(Debug, Clone)]
pub struct Discovery {
    names: Arc<Mutex<Names>>,
    /// Bumped when a name is added (the session sends it).
    asked: watch::Sender<u64>,
    /// Bumped after every Service response is applied (waiters look again).
    answered: watch::Sender<u64>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            names: Arc::default(),
            asked: watch::Sender::new(0),
            answered: watch::Sender::new(0),
        }
    }
}

impl Discovery {
    pub fn new() -> Self {
        Discovery::default()
    }

    fn lock(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to a Service (`namespace/name`); nothing happens if it already is.
    pub fn want(&self, name: &str) {
        let added = self.lock().wanted.insert(name.to_string());
        if added {
            self.asked.send_modify(|n| *n += 1);
        }
    }

    /// Every subscribed name.
    pub fn wanted(&self) -> BTreeSet<String> {
        self.lock().wanted.clone()
    }

    /// Whether the control plane said it has no such Service.
    pub fn is_absent(&self, name: &str) -> bool {
        self.lock().absent.contains(name)
    }

    /// Subscribes to `name` and waits until `known` says the proxy has it, the control plane
    /// says it has not, or `timeout` passes. `known` is asked after every Service response.
    pub async fn resolve(
        &self,
        name: &str,
        timeout: Duration,
        known: impl Fn() -> bool,
    ) -> Resolution {
        if known() {
            return Resolution::Found;
        }
        let mut answered = self.answered.subscribe();
        self.want(name);
        let wait = async {
            loop {
                if known() {
                    return Resolution::Found;
                }
                if self.is_absent(name) {
                    return Resolution::Absent;
                }
                if answered.changed().await.is_err() {
                    return Resolution::TimedOut;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Resolution::TimedOut)
    }

    /// The session's side: changes of the subscribed names.
    pub(crate) fn asked(&self) -> watch::Receiver<u64> {
        self.asked.subscribe()
    }

    /// The session's side: a Service response named these as present and these as removed.
    pub(crate) fn record(&self, present: &[String], removed: &[String]) {
        let mut names = self.lock();
        for n in present {
            names.absent.remove(n);
        }
        for n in removed {
            if names.wanted.contains(n) {
                names.absent.insert(n.clone());
            }
        }
    }

    /// The session's side: a Service response was handled (applied or refused).
    pub(crate) fn answered(&self) {
        self.answered.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_waiter_learns_found_absent_or_timed_out() {
        let d = Discovery::new();
        let known = Arc::new(AtomicBool::new(false));
        let k = known.clone();
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move {
                d.resolve("shop/reviews", Duration::from_secs(5), move || {
                    k.load(Ordering::SeqCst)
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        assert!(d.wanted().contains("shop/reviews"));
        known.store(true, Ordering::SeqCst);
        d.answered();
        assert_eq!(waiter.await.unwrap(), Resolution::Found);

        let absent = {
            let d = d.clone();
            tokio::spawn(async move {
                d.resolve("shop/nope", Duration::from_secs(5), || false)
                    .await
            })
        };
        tokio::task::yield_now().await;
        d.record(&[], &["shop/nope".to_string()]);
        d.answered();
        assert_eq!(absent.await.unwrap(), Resolution::Absent);

        let silent = d
            .resolve("shop/later", Duration::from_secs(5), || false)
            .await;
        assert_eq!(silent, Resolution::TimedOut);
        // A name that appears later is no longer absent.
        d.record(&["shop/nope".to_string()], &[]);
        assert!(!d.is_absent("shop/nope"));
    }
}
