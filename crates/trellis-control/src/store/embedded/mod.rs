//! The embedded store: one redb file (`DATA_DIR/trellis.redb`) for a single control-plane
//! process. The default, because it needs nothing else running.
//!
//! * **Crash safety.** Every write is one redb write transaction, committed with fsync
//!   (redb's default durability); a crash leaves the file at the last committed transaction.
//! * **Revisions.** A counter in the file, bumped once per changed key inside the same
//!   transaction, so revisions survive restarts and never repeat.
//! * **Watch.** Each committed change goes to a `tokio::sync::broadcast` channel and to an event
//!   log table holding the last [`EmbeddedOptions::retained_events`] changes. A watch first
//!   replays the log after its start revision, then follows the channel; a watcher that falls
//!   behind the channel refills from the log; one that asks for history already dropped gets
//!   `Compacted` (as etcd answers), and relists.
//! * **One writer, one order.** Writes, their broadcast, and a watch's subscription all happen
//!   under one mutex, so a new watch sees each change exactly once: from the log or the channel.
//! * **Blocking I/O.** redb is synchronous and a commit waits for fsync (milliseconds), so every
//!   operation runs in `tokio::task::spawn_blocking` rather than stalling a runtime thread that
//!   also serves proxies. The write mutex is a `std` mutex held only inside those closures.
//! * **One process.** redb locks the file; a second control plane on the same `--data-dir` fails
//!   to open it with a message saying so. Use etcd for several replicas.
//! * **Leases**: see `lease.rs`. File layout: see `db.rs`.
use super::batch::{holds, refusal};
use super::codec::{check_key, check_kind, check_part, encode};
use super::{
    Batch, Committed, Expect, Lease, LeaseId, Listing, ResourceKey, Result, Revision, Store,
    StoreError, Stored, WatchStream, DATA_FILE,
};
use async_trait::async_trait;
use redb::Database;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use trellis_api::Resource;

mod db;
mod lease;
mod read;
mod watch;

/// Tunables of the embedded store; the defaults suit production.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How many recent changes a watch can resume from (default 10 000).
    pub retained_events: u64,
    /// How often lapsed leases are looked for (default 100 ms).
    pub lease_check_interval: Duration,
    /// Changes buffered per watcher before it must refill from the log (default 1024).
    pub watch_buffer: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            retained_events: 10_000,
            lease_check_interval: Duration::from_millis(100),
            watch_buffer: 1024,
        }
    }
}

pub struct EmbeddedStore {
    inner: Arc<Inner>,
    path: PathBuf,
    expiry: tokio::task::JoinHandle<()>,
}

pub(crate) struct Inner {
    db: Database,
    name: String,
    options: EmbeddedOptions,
    write_lock: Mutex<()>,
    /// The events of each committed transaction, as one message.
    events: broadcast::Sender<Arc<Vec<super::WatchEvent>>>,
    leases: Mutex<lease::Leases>,
}

impl Inner {
    fn leases(&self) -> MutexGuard<'_, lease::Leases> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) `data_dir/trellis.redb`. Must be called inside a tokio runtime.
    pub async fn open(data_dir: &Path, options: EmbeddedOptions) -> Result<Self> {
        let path = data_dir.join(DATA_FILE);
        let name = format!("redb file {}", path.display());
        let db = {
            let (dir, path, name) = (data_dir.to_path_buf(), path.clone(), name.clone());
            blocking_task(&name.clone(), move || open_file(&dir, &path, &name)).await?
        };
        let (events, _) = broadcast::channel(options.watch_buffer.max(16));
        let tick = options.lease_check_interval;
        let inner = Arc::new(Inner {
            db,
            name,
            options,
            write_lock: Mutex::new(()),
            events,
            leases: Mutex::new(lease::Leases::default()),
        });
        let leases = run(&inner, |i| i.init()).await?;
        {
            let mut live = inner.leases();
            for (id, ttl) in leases {
                live.grant(id, ttl);
            }
        }
        let expiry = tokio::spawn(lease::expire_loop(Arc::downgrade(&inner), tick));
        Ok(Self {
            inner,
            path,
            expiry,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

fn open_file(dir: &Path, path: &Path, name: &str) -> Result<Database> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Config {
        setting: dir.display().to_string(),
        detail: format!("cannot create the data directory: {e}"),
    })?;
    // A handle dropped a moment ago in this process may still be closing; give it a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match Database::create(path) {
            Ok(db) => {
                make_private(path);
                return Ok(db);
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Backend {
                    store: name.to_string(),
                    detail: "already open in another process (is another control plane using \
                             this --data-dir? run one, or use etcd for several replicas)"
                        .into(),
                })
            }
            Err(e) => {
                return Err(StoreError::Backend {
                    store: name.to_string(),
                    detail: format!("cannot open: {e}"),
                })
            }
        }
    }
}

/// The file holds the mesh CA's private keys and the join token: owner only (mode 0600).
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot make the store file readable by its owner only; it holds the mesh CA's keys"
        );
    }
}

async fn blocking_task<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend {
            store: name.to_string(),
            detail: format!("storage task failed: {e}"),
        })?
}

/// Runs `f` on a blocking thread with the store.
async fn run<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
) -> Result<T> {
    let strong = inner.clone();
    blocking_task(&inner.name, move || f(&strong)).await
}

fn ttl_secs(ttl: Duration) -> Duration {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[async_trait]
impl Store for EmbeddedStore {
    fn describe(&self) -> String {
        self.inner.name.clone()
    }

    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Stored>> {
        let key = check_key(kind, namespace, name)?;
        run(&self.inner, move |i| i.get(&key)).await
    }

    async fn list(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Listing> {
        if let Some(k) = kind {
            check_kind(k)?;
        }
        if let Some(ns) = namespace {
            check_part("namespace", ns)?;
        }
        let (kind, namespace) = (kind.map(str::to_string), namespace.map(str::to_string));
        run(&self.inner, move |i| {
            i.list(kind.as_deref(), namespace.as_deref())
        })
        .await
    }

    async fn create(&self, resource: Resource) -> Result<Stored> {
        let (key, resource, json) = encode(resource)?;
        run(&self.inner, move |i| {
            i.write(|tx| match tx.head(&key)? {
                Some((version, _)) => Err(StoreError::AlreadyExists { key, version }),
                None => tx.put(&key, &resource, &json, None),
            })
        })
        .await
    }

    async fn replace(&self, resource: Resource, expected: Option<Revision>) -> Result<Stored> {
        let (key, resource, json) = encode(resource)?;
        run(&self.inner, move |i| {
            i.write(|tx| {
                if let Some(expected) = expected {
                    match tx.head(&key)? {
                        None => return Err(StoreError::NotFound { key }),
                        Some((current, _)) if current != expected => {
                            return Err(StoreError::Conflict {
                                key,
                                expected,
                                current,
                            })
                        }
                        Some(_) => {}
                    }
                }
                tx.put(&key, &resource, &json, None)
            })
        })
        .await
    }

    async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<Revision> {
        let key = check_key(kind, namespace, name)?;
        run(&self.inner, move |i| {
            i.write(|tx| {
                match (tx.head(&key)?, expected) {
                    (None, _) => return Err(StoreError::NotFound { key }),
                    (Some((current, _)), Some(expected)) if current != expected => {
                        return Err(StoreError::Conflict {
                            key,
                            expected,
                            current,
                        })
                    }
                    _ => {}
                }
                tx.delete(&key)?.ok_or(StoreError::NotFound { key })
            })
        })
        .await
    }

    async fn watch(&self, from_revision: Revision) -> Result<WatchStream> {
        watch::watch(&self.inner, from_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        run(&self.inner, move |i| i.compact(revision)).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        let ttl = ttl_secs(ttl);
        let id = run(&self.inner, move |i| i.write(|tx| tx.grant(ttl))).await?;
        Ok(Lease { id, ttl })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        if self.inner.leases().renew(lease, Instant::now()) {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound { lease })
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        run(&self.inner, move |i| {
            i.write(|tx| {
                if tx.inner.leases().is_live(lease, Instant::now()) && tx.end_lease(lease)? {
                    Ok(())
                } else {
                    Err(StoreError::LeaseNotFound { lease })
                }
            })
        })
        .await
    }

    async fn put_with_lease(&self, resource: Resource, lease: LeaseId) -> Result<Stored> {
        let (key, resource, json) = encode(resource)?;
        run(&self.inner, move |i| {
            i.write(|tx| {
                if !tx.inner.leases().is_live(lease, Instant::now()) {
                    return Err(StoreError::LeaseNotFound { lease });
                }
                tx.put(&key, &resource, &json, Some(lease))
            })
        })
        .await
    }

    async fn get_many(&self, keys: &[ResourceKey]) -> Result<(Vec<Option<Stored>>, Revision)> {
        let keys = keys.to_vec();
        run(&self.inner, move |i| i.get_many(&keys)).await
    }

    async fn commit(&self, batch: Batch) -> Result<Committed> {
        let expectations: Vec<(ResourceKey, Expect)> = batch.expectations().collect();
        let items = batch
            .puts
            .into_iter()
            .map(|p| encode(p.resource))
            .collect::<Result<Vec<_>>>()?;
        let receipt = batch.receipt;
        run(&self.inner, move |i| {
            i.write(|tx| {
                if let Some(r) = &receipt {
                    if let Some((revision, body)) = tx.receipt(&r.id)? {
                        return Ok(Committed::Replayed { revision, body });
                    }
                }
                for (key, expect) in expectations {
                    let current = tx.head(&key)?.map(|(v, _)| v);
                    if !holds(expect, current) {
                        return Err(refusal(key, expect, current));
                    }
                }
                let revision = tx.put_batch(&items)?;
                if let Some(r) = &receipt {
                    tx.put_receipt(&r.id, &r.body)?;
                }
                Ok(Committed::Done { revision })
            })
        })
        .await
    }

    async fn receipt(&self, id: &str) -> Result<Option<(Revision, Vec<u8>)>> {
        let id = id.to_string();
        run(&self.inner, move |i| i.write(|tx| tx.receipt(&id))).await
    }
}

#[cfg(test)]
mod tests;
