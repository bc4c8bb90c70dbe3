//! The config store: one [`Store`] trait, two implementations that pass one conformance suite
//! (`tests/conformance_*.rs`).
//!
//! * [`EmbeddedStore`] — the default: one crash-safe [redb](https://docs.rs/redb) file under
//!   `--data-dir`, for a single control-plane process.
//! * [`EtcdStore`] — `--store etcd://host:port,...`: several control-plane replicas share one etcd
//!   cluster and each follows every change through its watch.
//!
//! # The model, and why it is etcd's
//!
//! Both stores keep resources as JSON (the Kubernetes-shaped form `trellis_api` serializes to),
//! keyed by `Kind/namespace/name`, and number every write with a store-wide **revision** that
//! only grows. A resource's [`Stored::version`] is the revision of its last write (etcd's
//! `mod_revision`), which gives three things at once:
//!
//! * optimistic concurrency: [`Store::replace`] and [`Store::delete`] take the version the caller
//!   read and fail with [`StoreError::Conflict`] if anyone wrote in between;
//! * gap-free list-then-watch: [`Store::list`] returns the revision it read at, and
//!   [`Store::watch`] from that revision delivers exactly the later changes, in order;
//! * resumable watches: a client that lost its stream watches again from the last revision it
//!   saw. History is bounded, so a client that fell too far behind gets
//!   [`StoreError::Compacted`] and lists again — the same contract etcd (and Kubernetes) have.
//!
//! Leases ([`Store::grant_lease`], [`Store::keep_alive`], [`Store::put_with_lease`]) are etcd's
//! too: a proxy registers its `Workload` under a lease it keeps alive; when the proxy dies the
//! lease lapses, the store deletes the workload and every watcher sees the `Delete`. TTLs are whole
//! seconds (etcd's unit); etcd raises TTLs below its minimum (2 s with default settings).
//!
//! # Writes are all-or-nothing
//!
//! Every write is validated first ([`validate`], the same checks `trellis validate` runs) and then
//! applied as one transaction (one redb write transaction; one etcd `Txn`), so a rejected write —
//! invalid, conflicting, or failed because the backend is away — changes nothing. One caveat is
//! inherent to any remote store: when etcd stops answering *after* receiving a write, the client
//! cannot know whether it was applied; the error says so, and a retry should re-read first (a
//! versioned replace makes that safe).
//!
//! A multi-document apply is one [`Batch`] (one transaction on both stores, every put at one
//! revision); see `batch.rs`.
//!
//! # Errors
//!
//! [`StoreError`] names what is wrong and where (the `Kind/namespace/name` key, the file or the
//! etcd endpoints). Bytes read back from the store are never trusted: a value that does not decode
//! to a valid resource is [`StoreError::Corrupt`] naming its key, never a panic.
use async_trait::async_trait;
use futures_util::stream::BoxStream;
use std::time::Duration;
use trellis_api::Resource;

mod batch;
mod codec;
mod embedded;
mod error;
mod etcd;
mod spec;

pub use batch::{
    check_receipt_id, document_cost, Batch, BatchLimits, BatchPut, Committed, Expect, Receipt,
    MAX_RECEIPT_ID, RECEIPT_TTL,
};
pub use codec::validate;
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::StoreError;
pub use etcd::{EtcdOptions, EtcdStore};
pub use spec::{open, StoreSpec, DATA_FILE};

/// A store-wide write counter; also a resource's version.
pub type Revision = u64;

/// The lease TTL the registry uses unless configured otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where a resource lives: `Kind/namespace/name`, the same string as `Resource::key()`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn of(resource: &Resource) -> Self {
        let m = resource.metadata();
        Self::new(resource.kind(), &m.namespace, &m.name)
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A lease's id, shown in hex as `etcdctl` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A granted lease: keep it alive well within `ttl` (e.g. every `ttl / 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    /// The TTL the store granted, which may be longer than asked (whole seconds, etcd's minimum).
    pub ttl: Duration,
}

/// A registration whose lease lapsed, as [`Store::lapsed_registrations`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapsed {
    pub key: ResourceKey,
    /// The revision of the registration (changes when the workload registers again).
    pub registration: Revision,
    /// The TTL it was registered with: how long a live sidecar may take to renew.
    pub ttl: Duration,
}

/// A resource as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub resource: Resource,
    /// The revision of the resource's last write (etcd's `mod_revision`).
    pub version: Revision,
    /// The lease the resource lives under, if it was written with [`Store::put_with_lease`].
    pub lease: Option<LeaseId>,
}

impl Stored {
    pub fn key(&self) -> ResourceKey {
        ResourceKey::of(&self.resource)
    }
}

/// The result of [`Store::list`]: the items, sorted by key, and the revision they were read at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listing {
    pub items: Vec<Stored>,
    /// Watch from here to see every later change.
    pub revision: Revision,
}

/// One change, as [`Store::watch`] delivers it.
// Not boxed: events are short-lived and matched on by every consumer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// Created or replaced; `Stored::version` is the event's revision.
    Put(Stored),
    /// Deleted (explicitly, or because its lease lapsed or was revoked).
    Delete {
        key: ResourceKey,
        revision: Revision,
    },
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(s) => s.version,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> ResourceKey {
        match self {
            WatchEvent::Put(s) => s.key(),
            WatchEvent::Delete { key, .. } => key.clone(),
        }
    }
}

/// Changes in revision order. After an `Err` item the stream ends: watch again from the last
/// revision seen (or list again on [`StoreError::Compacted`]).
pub type WatchStream = BoxStream<'static, Result<WatchEvent>>;

/// The config store. Object-safe (`Arc<dyn Store>`), so the API layer does not care which
/// backend it runs on; `#[async_trait]` boxes each call's future, a cost that is nothing next to
/// an fsync or a network round trip.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend and where (`redb file /var/lib/trellis/trellis.redb`,
    /// `etcd http://10.0.0.1:2379,...`), for logs.
    fn describe(&self) -> String;

    /// The resource at `kind/namespace/name`, or `None`.
    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Stored>>;

    /// Every resource of `kind` (all kinds if `None`) in `namespace` (all if `None`), sorted by
    /// key, with the revision the list was read at.
    async fn list(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Listing>;

    /// Stores a new resource; [`StoreError::AlreadyExists`] if its key is taken.
    async fn create(&self, resource: Resource) -> Result<Stored>;

    /// Replaces a resource. With `Some(version)` only if its current version is that
    /// ([`StoreError::Conflict`] otherwise, [`StoreError::NotFound`] if it is gone); with `None`,
    /// unconditionally, creating it if missing. Detaches the resource from any lease.
    async fn replace(
        &self,
        resource: Resource,
        expected_version: Option<Revision>,
    ) -> Result<Stored>;

    /// Deletes a resource, optionally only at `expected_version`; returns the delete's revision.
    async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected_version: Option<Revision>,
    ) -> Result<Revision>;

    /// Every change after `from_revision`, in order, then live changes as they happen.
    /// [`StoreError::Compacted`] (from this call or as the stream's first item) when that history
    /// is gone. Revisions never go down; on etcd, the deletes of one lapsed lease share one.
    async fn watch(&self, from_revision: Revision) -> Result<WatchStream>;

    /// Discards watch history up to `revision`: later `watch(from)` calls with `from < revision`
    /// fail with [`StoreError::Compacted`]. The embedded store also compacts by itself (it keeps
    /// a bounded history); for etcd this is the usual maintenance call.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Grants a lease of `ttl` (rounded up to whole seconds).
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease>;

    /// Renews a lease for another full TTL; [`StoreError::LeaseNotFound`] once it has lapsed.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends a lease now, deleting every resource under it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Creates or replaces a resource under a live lease: it is deleted when the lease ends.
    async fn put_with_lease(&self, resource: Resource, lease: LeaseId) -> Result<Stored>;

    /// The resources at `keys` (in order; `None` where absent), all read at one revision, which
    /// is returned: what a [`Batch`] is decided on.
    async fn get_many(&self, keys: &[ResourceKey]) -> Result<(Vec<Option<Stored>>, Revision)>;

    /// Commits a [`Batch`]: every put and check, or nothing. See `batch.rs`.
    async fn commit(&self, batch: Batch) -> Result<Committed>;

    /// What one [`Batch`] may hold at most (the embedded store: no cap of its own).
    fn batch_limits(&self) -> BatchLimits {
        BatchLimits::default()
    }

    /// The receipt of an earlier commit with this id, if it is still kept: its revision and body.
    async fn receipt(&self, id: &str) -> Result<Option<(Revision, Vec<u8>)>>;

    /// Registers a sidecar's workload under its lease (see `crate::registry`). By default the
    /// workload itself lives under the lease, which suits a store that lives and dies with the
    /// control plane (the embedded store gives every lease a fresh TTL when it opens). A store
    /// that outlives the control plane (etcd) keeps the workload and puts only its *presence*
    /// under the lease, so an outage of every replica deletes nothing.
    async fn register(&self, workload: Resource, lease: Lease) -> Result<Stored> {
        self.put_with_lease(workload, lease.id).await
    }

    /// Ends a registration at once (a sidecar stopping): its lease and its workload.
    async fn deregister(&self, lease: LeaseId) -> Result<()> {
        self.revoke_lease(lease).await
    }

    /// Registered workloads whose presence lapsed; empty for stores whose workloads lapse with
    /// their lease.
    async fn lapsed_registrations(&self) -> Result<Vec<Lapsed>> {
        Ok(Vec::new())
    }

    /// Deletes a lapsed registration's workload, unless it registered again meanwhile (its
    /// presence is back, or the registration is newer than `registration`). True if deleted.
    async fn expire_registration(&self, key: &ResourceKey, registration: Revision) -> Result<bool> {
        let _ = (key, registration);
        Ok(false)
    }

    /// Whether several control planes share this store, and so must share what each knows of
    /// its connected proxies (`crate::mesh_status`). False for the embedded store: one process.
    fn shares_status(&self) -> bool {
        false
    }

    /// Writes (`Some`) or deletes (`None`) status entries under `lease`, by path below the
    /// store's status area. Not transactional as a whole; each entry is written whole.
    async fn put_status(
        &self,
        lease: LeaseId,
        entries: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<()> {
        let _ = (lease, entries);
        Ok(())
    }

    /// Every status entry, by path.
    async fn list_status(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }
}
