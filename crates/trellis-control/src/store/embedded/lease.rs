//! Lease deadlines (in memory) and the task that ends lapsed leases.
//!
//! A lease's id and TTL are in the file; its deadline is not, on purpose: deadlines are
//! `Instant`s of this process. When the store opens, every lease from the previous run gets one
//! fresh TTL — what etcd does when a new leader takes over — so a quick control-plane restart does
//! not drop every registered workload, and a workload whose proxy died meanwhile still leaves one
//! TTL after the restart.
use super::Inner;
use crate::store::LeaseId;
use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(super) struct Leases {
    live: HashMap<LeaseId, Live>,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    ttl: Duration,
    deadline: Instant,
}

impl Leases {
    pub(super) fn grant(&mut self, id: LeaseId, ttl: Duration) {
        let deadline = Instant::now() + ttl;
        self.live.insert(id, Live { ttl, deadline });
    }

    pub(super) fn remove(&mut self, id: LeaseId) {
        self.live.remove(&id);
    }

    /// True if the lease exists and has not lapsed.
    pub(super) fn is_live(&self, id: LeaseId, now: Instant) -> bool {
        self.live.get(&id).is_some_and(|l| l.deadline > now)
    }

    /// Extends a live lease by its TTL; false if it lapsed or never existed.
    pub(super) fn renew(&mut self, id: LeaseId, now: Instant) -> bool {
        match self.live.get_mut(&id) {
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                true
            }
            _ => false,
        }
    }

    /// Leases whose deadline has passed.
    pub(super) fn due(&self, now: Instant) -> Vec<LeaseId> {
        self.live
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Ends lapsed leases every `tick` until the store is dropped. Holds only a weak reference, so
/// the task never keeps the database open.
pub(super) async fn expire_loop(inner: Weak<Inner>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.leases().due(Instant::now()).is_empty() {
            continue;
        }
        let result = tokio::task::spawn_blocking(move || strong.expire()).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not end lapsed leases; will retry"),
            Err(e) => tracing::warn!(error = %e, "lease expiry task failed; will retry"),
        }
    }
}

impl Inner {
    /// Ends every lease that is due, in one transaction, deleting what lived under them.
    fn expire(&self) -> crate::store::Result<()> {
        self.write(|tx| {
            // Checked again under the write lock: a keep-alive may have come in meanwhile.
            let due = tx.inner.leases().due(Instant::now());
            for id in due {
                tx.end_lease(id)?;
                tracing::info!(lease = %id, "lease lapsed; its resources were deleted");
            }
            Ok(())
        })
    }
}
