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
//! Names of existing services stay subscribed for the proxy's life and are named again on every
//! reconnect; a name the control plane says it does not have is dropped from the subscription
//! again (remembered as absent), so an app calling random host names cannot grow it, and the
//! subscription never holds more than [`MAX_WANTED`] names (the server refuses a stream naming
//! more than 10 000).
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Most names one client subscribes to at once.
pub const MAX_WANTED: usize = 8192;
/// Most names remembered as absent (forgotten all at once when full).
const MAX_ABSENT: usize = 4096;

/// What became of a name the proxy asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The Service is in the proxy's config.
    Found,
    /// The control plane says there is no such Service for this proxy.
    Absent,
    /// No answer in time (the control plane is away or slow).
    TimedOut,
    /// The subscription already names [`MAX_WANTED`] services.
    Full,
}

#[derive(Debug, Default)]
struct Names {
    /// Every name subscribed (`namespace/name`).
    wanted: BTreeSet<String>,
    /// Names the control plane said it does not have (until they appear).
    absent: BTreeSet<String>,
    /// Names that stay subscribed even when absent (the node's own service: a Service
    /// subscription naming nothing would be a wildcard on the next connect).
    pinned: BTreeSet<String>,
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

    /// Subscribes to a Service (`namespace/name`), forgetting that it was absent (it may exist
    /// by now); `false` when the subscription is full.
    pub fn want(&self, name: &str) -> bool {
        let mut names = self.lock();
        if names.wanted.contains(name) {
            return true;
        }
        if names.wanted.len() >= MAX_WANTED {
            return false;
        }
        names.absent.remove(name);
        names.wanted.insert(name.to_string());
        drop(names);
        self.asked.send_modify(|n| *n += 1);
        true
    }

    /// Subscribes to a name for good, present or not.
    pub fn pin(&self, name: &str) {
        self.lock().pinned.insert(name.to_string());
        self.want(name);
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
        if !self.want(name) {
            return Resolution::Full;
        }
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
    /// A removed name leaves the subscription (the session unsubscribes it).
    pub(crate) fn record(&self, present: &[String], removed: &[String]) {
        let mut names = self.lock();
        for n in present {
            names.absent.remove(n);
        }
        let mut dropped = false;
        for n in removed {
            if !names.pinned.contains(n) && names.wanted.remove(n) {
                dropped = true;
                if names.absent.len() >= MAX_ABSENT {
                    names.absent.clear();
                }
                names.absent.insert(n.clone());
            }
        }
        drop(names);
        if dropped {
            self.asked.send_modify(|n| *n += 1);
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
        // An absent name leaves the subscription; asking again forgets it was absent.
        assert!(!d.wanted().contains("shop/nope"));
        assert!(d.want("shop/nope"));
        assert!(!d.is_absent("shop/nope"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_subscription_is_bounded() {
        let d = Discovery::new();
        for i in 0..MAX_WANTED {
            assert!(d.want(&format!("ns/s{i}")));
        }
        assert!(!d.want("ns/one-more"));
        let r = d
            .resolve("ns/one-more", Duration::from_secs(1), || false)
            .await;
        assert_eq!(r, Resolution::Full);
        // Names found absent make room again.
        d.record(&[], &["ns/s0".to_string()]);
        assert!(d.want("ns/one-more"));
    }
}
