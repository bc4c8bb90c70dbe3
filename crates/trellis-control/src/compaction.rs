//! Keeps a shared store's history bounded: every [`INTERVAL`], compact to the revision read one
//! interval earlier, as the Kubernetes API server does for its etcd.
//!
//! Replicas write a heartbeat and proxy status each second (`mesh_status`), and every write
//! adds a revision etcd keeps until it is compacted; etcd does not compact by itself unless
//! started with `--auto-compaction-retention`, and a store that reaches its space quota stops
//! taking writes. Five minutes of history is far more than a replica's watch needs to resume
//! (one that falls further behind relists, see `model.rs`). Several replicas compacting is
//! harmless: compacting to a revision already compacted is a no-op.
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// History kept, and how often it is trimmed.
pub const INTERVAL: Duration = Duration::from_secs(300);

/// Runs until the task is dropped; does nothing for a store that is not shared.
pub fn spawn(store: Arc<dyn Store>) -> Option<tokio::task::JoinHandle<()>> {
    spawn_every(store, INTERVAL)
}

/// [`spawn`] with another interval.
pub fn spawn_every(
    store: Arc<dyn Store>,
    interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if !store.shares_status() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut previous = None;
        loop {
            tokio::time::sleep(interval).await;
            let now = match store.list(Some("MeshConfig"), None).await {
                Ok(listing) => listing.revision,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the store's revision; not compacting");
                    continue;
                }
            };
            if let Some(to) = previous.filter(|&to| to > 0) {
                match store.compact(to).await {
                    Ok(()) => tracing::debug!(revision = to, "store history compacted"),
                    Err(e) => {
                        tracing::warn!(error = %e, revision = to, "cannot compact the store's history")
                    }
                }
            }
            previous = Some(now);
        }
    }))
}
