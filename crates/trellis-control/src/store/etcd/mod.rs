//! The etcd store (`--store etcd://host:port,...`): several control-plane replicas share one etcd
//! cluster; each follows every change through an etcd watch, so none needs to talk to another.
//!
//! * **Layout.** Key `/trellis/v1/resources/{kind}/{namespace}/{name}`, value the resource's JSON
//!   (readable with `etcdctl get --prefix /trellis/`). A resource's version is etcd's
//!   `mod_revision`; the store revision is etcd's revision (which counts writes to other keys
//!   too, so versions are increasing but not consecutive).
//! * **Concurrency.** Each write is one `Txn`: create compares `create_revision == 0`; a
//!   versioned replace or delete compares `mod_revision == expected` (and that the key exists),
//!   with a read of the key in the failure branch so the error can say what the current version
//!   is. Nothing is ever written half.
//! * **Leases** are etcd's own: grant, one-shot keep-alive (one request on a `LeaseKeepAlive`
//!   stream), revoke, and puts carrying the lease id. etcd deletes a lapsed lease's keys and
//!   emits the deletes to every watcher, on every replica — several deletes of one lapsed lease
//!   share one revision, as they are one etcd transaction.
//! * **Failures.** Every request has a deadline ([`EtcdOptions::request_timeout`]); an etcd that
//!   is down, partitioned or leaderless gives [`StoreError::Unavailable`] within it, and works
//!   again once etcd is back (the gRPC channel reconnects by itself). With several endpoints a
//!   request fails over to the next member (see `client.rs`). A write that timed out
//!   after being sent may or may not have been applied; the error says so. Watch streams end
//!   with `Unavailable` when the connection drops (HTTP/2 keep-alives notice a silent peer);
//!   the caller watches again from the last revision it saw.
//! * **Client.** `etcdv3client` 0.4, chosen over the better-known `etcd-client` because it ships
//!   its generated protobuf code: `etcd-client` runs `protoc` in its build script, which a fresh
//!   machine does not have (and no crate can supply to another crate's build script).
use super::codec::{check_key, check_kind, check_part, decode, encode, parse_key};
use super::{Lease, LeaseId, Listing, ResourceKey, Result, Revision, Store, StoreError, Stored};
use async_trait::async_trait;
use etcdv3client::grpc::TonicClient;
use etcdv3client::pb;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use trellis_api::Resource;

mod batch;
mod client;
mod ops;
mod registry;
mod status;
mod watch;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the cluster's members (`http://host:port`).
    pub endpoints: Vec<String>,
    /// The longest any one request may take before it fails as unavailable (default 5 s).
    pub request_timeout: Duration,
    /// The longest a connection attempt to one member may take (default 2 s).
    pub connect_timeout: Duration,
    /// Where resources live (default `/trellis/v1/resources/`); must end with `/`.
    pub prefix: String,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            prefix: "/trellis/v1/resources/".into(),
        }
    }
}

pub struct EtcdStore {
    name: String,
    options: EtcdOptions,
    /// One client per endpoint; requests go to `current` and fail over to the next member.
    members: Vec<Member>,
    current: AtomicUsize,
    /// The lease apply receipts are written under, and until when to use it.
    receipt_lease: std::sync::Mutex<Option<(LeaseId, std::time::Instant)>>,
}

struct Member {
    url: String,
    client: Client,
}

type Client = etcdv3client::Client<TonicClient>;

impl EtcdStore {
    fn key(&self, key: &ResourceKey) -> Vec<u8> {
        format!("{}{key}", self.options.prefix).into_bytes()
    }

    /// The key range of a kind (and namespace), or of everything.
    fn range(&self, kind: Option<&str>, namespace: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let start = match (kind, namespace) {
            (Some(k), Some(ns)) => format!("{}{k}/{ns}/", self.options.prefix),
            (Some(k), None) => format!("{}{k}/", self.options.prefix),
            (None, _) => self.options.prefix.clone(),
        };
        // Every range starts with a prefix ending in '/'; '0' is the byte after '/'.
        let mut end = start.clone().into_bytes();
        end.pop();
        end.push(b'0');
        (start.into_bytes(), end)
    }

    fn decode_kv(&self, kv: &pb::KeyValue) -> Result<Stored> {
        decode_kv(&self.name, &self.options.prefix, kv)
    }
}

/// A stored key-value back to a resource; anything odd is `Corrupt`, naming the key.
fn decode_kv(store: &str, prefix: &str, kv: &pb::KeyValue) -> Result<Stored> {
    Ok(Stored {
        resource: decode(store, &decode_key(store, prefix, &kv.key)?, &kv.value)?,
        version: revision(kv.mod_revision),
        lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
    })
}

fn decode_key(store: &str, prefix: &str, raw: &[u8]) -> Result<ResourceKey> {
    let text = String::from_utf8_lossy(raw);
    match text.strip_prefix(prefix) {
        Some(rest) => parse_key(store, rest).map_err(|e| match e {
            StoreError::Corrupt { store, detail, .. } => StoreError::Corrupt {
                store,
                key: text.to_string(),
                detail,
            },
            other => other,
        }),
        None => Err(StoreError::Corrupt {
            store: store.to_string(),
            key: text.into_owned(),
            detail: "key outside the store's prefix".into(),
        }),
    }
}

fn revision(r: i64) -> Revision {
    u64::try_from(r).unwrap_or(0)
}

fn header_revision(header: Option<&pb::ResponseHeader>) -> Revision {
    header.map_or(0, |h| revision(h.revision))
}

fn rev_i64(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Stored>> {
        let key = check_key(kind, namespace, name)?;
        self.get_key(&key).await
    }

    async fn list(&self, kind: Option<&str>, namespace: Option<&str>) -> Result<Listing> {
        if let Some(k) = kind {
            check_kind(k)?;
        }
        if let Some(ns) = namespace {
            check_part("namespace", ns)?;
        }
        self.list_range(kind, namespace).await
    }

    async fn create(&self, resource: Resource) -> Result<Stored> {
        let (key, resource, json) = encode(resource)?;
        self.create_key(key, resource, json).await
    }

    async fn replace(&self, resource: Resource, expected: Option<Revision>) -> Result<Stored> {
        let (key, resource, json) = encode(resource)?;
        self.replace_key(key, resource, json, expected).await
    }

    async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<Revision> {
        let key = check_key(kind, namespace, name)?;
        self.delete_key(key, expected).await
    }

    async fn watch(&self, from_revision: Revision) -> Result<super::WatchStream> {
        watch::watch(self, from_revision).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.compact_to(revision).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.grant(ttl_secs(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.renew(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.revoke(lease).await
    }

    async fn put_with_lease(&self, resource: Resource, lease: LeaseId) -> Result<Stored> {
        let (key, resource, json) = encode(resource)?;
        self.put_key(key, resource, json, lease).await
    }

    async fn get_many(&self, keys: &[ResourceKey]) -> Result<(Vec<Option<Stored>>, Revision)> {
        self.get_many_keys(keys, 0).await
    }

    async fn commit(&self, batch: super::Batch) -> Result<super::Committed> {
        self.commit_batch(batch).await
    }

    async fn receipt(&self, id: &str) -> Result<Option<(Revision, Vec<u8>)>> {
        self.receipt_of(id).await
    }

    fn batch_limits(&self) -> super::BatchLimits {
        batch::LIMITS
    }

    async fn register(&self, workload: Resource, lease: Lease) -> Result<Stored> {
        self.register_workload(workload, lease).await
    }

    async fn deregister(&self, lease: LeaseId) -> Result<()> {
        self.deregister_lease(lease).await
    }

    async fn lapsed_registrations(&self) -> Result<Vec<super::Lapsed>> {
        self.lapsed().await
    }

    async fn expire_registration(&self, key: &ResourceKey, registration: Revision) -> Result<bool> {
        self.expire(key, registration).await
    }

    fn shares_status(&self) -> bool {
        true
    }

    async fn put_status(
        &self,
        lease: LeaseId,
        entries: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<()> {
        self.write_status(lease, entries).await
    }

    async fn list_status(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.read_status().await
    }
}
