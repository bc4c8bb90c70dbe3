//! The reaper: removes registered workloads whose sidecars stopped renewing — but never because
//! the control plane itself was away.
//!
//! On etcd a registration keeps its `Workload` without a lease and only its *presence* under the
//! sidecar's lease (`store/etcd/registry.rs`), so when every replica is down longer than the
//! lease TTL, etcd drops the presence keys and nothing else: callers keep their endpoints. When a
//! replica is back, the sidecars' next keep-alive finds their lease gone and they register
//! again, within a third of their TTL. The reaper only deletes a workload whose presence is
//! still missing after this replica has been up *and able to reach the store* for that
//! workload's whole TTL plus [`MARGIN`]: by then every live sidecar has renewed. Each delete is
//! a compare-and-delete in the store, so replicas reaping side by side, or a sidecar registering
//! at that instant, cannot lose a live workload.
//!
//! Stores whose workloads lapse with their lease (the embedded store, which gives every lease a
//! fresh TTL when the control plane starts) report nothing lapsed, and the reaper idles.
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often lapsed registrations are looked for.
pub const POLL: Duration = Duration::from_secs(1);
/// Beyond a registration's TTL, how long a replica waits after it starts (or after the store
/// comes back) before it deletes anything: a sidecar's keep-alive and re-registration round trip.
pub const MARGIN: Duration = Duration::from_secs(5);

/// Runs the reaper until the task is dropped.
pub fn spawn(store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reachable_since = Instant::now();
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::time::sleep(POLL).await;
            let lapsed = match store.lapsed_registrations().await {
                Ok(lapsed) => lapsed,
                Err(e) => {
                    // Sidecars could not renew through us either: start the grace again.
                    reachable_since = Instant::now();
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(error = %e, "cannot look for lapsed registrations; nothing is removed while the store is away");
                        last_warning = Some(Instant::now());
                    }
                    continue;
                }
            };
            let up = reachable_since.elapsed();
            for l in lapsed {
                if up < l.ttl + MARGIN {
                    continue;
                }
                match store.expire_registration(&l.key, l.registration).await {
                    Ok(true) => tracing::info!(workload = %l.key, "registration lapsed; removed"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(workload = %l.key, error = %e, "cannot remove a lapsed registration")
                    }
                }
            }
        }
    })
}
