//! One truthful view of the mesh from any replica: which replicas are up, which proxies are
//! connected (to any replica), and whether each holds what the current config says it should.
//!
//! Each replica knows only the xDS streams connected to it. When the store is shared (etcd),
//! every replica publishes, once a second, a heartbeat record of itself and one record per
//! connected stream into the store's status area, under a lease of its own
//! ([`REPLICA_TTL`]): a replica that dies takes its records with it. The answer to
//! `GET /api/v1/proxies` merges the local streams with every other replica's records.
//!
//! "In sync" is judged by the replica answering, against its own model, not by what each
//! proxy's replica last sent: xDS versions are content digests, so every replica computes the
//! same version for the same view, and a proxy is in sync when, for every type, the version it
//! acknowledged is the version of its view *now*. A replica whose heartbeat is older than
//! [`STALE`] is reported down and its proxies' records are set aside (they are reconnecting);
//! a store that cannot be read is reported instead of being papered over.
use crate::model::Model;
use crate::store::{LeaseId, Store, StoreError};
use crate::views::{self, MeshViews};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use trellis_xds::server::{NodeStatus, Registry};

/// How often a replica publishes its records.
pub const PUBLISH: Duration = Duration::from_secs(1);
/// The lease of a replica's records: how long they outlive a replica killed without warning.
pub const REPLICA_TTL: Duration = Duration::from_secs(10);
/// A heartbeat older than this means the replica is down (or cut off from the store).
pub const STALE: Duration = Duration::from_secs(4);
/// The longest the status answer waits for the store.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a replica says of itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRecord {
    pub id: String,
    /// The address its API (and xDS) listens on.
    pub api: String,
    pub started_unix_ms: u64,
    pub heartbeat_unix_ms: u64,
    /// The store revision its model has reached.
    pub model_revision: u64,
}

pub struct MeshStatus {
    id: String,
    api: String,
    started_unix_ms: u64,
    store: Arc<dyn Store>,
    registry: Registry,
    model: watch::Receiver<Arc<Model>>,
    /// The views the xDS server serves, to judge proxies against.
    views: std::sync::OnceLock<Arc<MeshViews>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A path segment for a node id (which may hold `/`).
fn segment(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

impl MeshStatus {
    /// Judges proxies against the views the server serves (instead of computing them).
    pub fn set_views(&self, views: Arc<MeshViews>) {
        let _ = self.views.set(views);
    }

    pub fn new(
        api: String,
        store: Arc<dyn Store>,
        registry: Registry,
        model: watch::Receiver<Arc<Model>>,
    ) -> Arc<Self> {
        use ring::rand::SecureRandom;
        let mut id = [0u8; 6];
        // A replica id only needs to differ between replicas; fall back to the clock.
        if ring::rand::SystemRandom::new().fill(&mut id).is_err() {
            id.copy_from_slice(&now_ms().to_be_bytes()[2..]);
        }
        Arc::new(Self {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            api,
            started_unix_ms: now_ms(),
            store,
            registry,
            model,
            views: std::sync::OnceLock::new(),
        })
    }

    fn record(&self) -> ReplicaRecord {
        ReplicaRecord {
            id: self.id.clone(),
            api: self.api.clone(),
            started_unix_ms: self.started_unix_ms,
            heartbeat_unix_ms: now_ms(),
            model_revision: self.model.borrow().revision,
        }
    }

    fn proxy_json(&self, n: &NodeStatus) -> Value {
        let mut v = serde_json::to_value(n).unwrap_or_default();
        v["id"] = json!(n.node.id);
        v["service"] = json!(n.node.service);
        v["namespace"] = json!(n.node.namespace);
        v["replica"] = json!(self.id);
        v
    }

    /// Publishes this replica's records until the task is dropped (only for shared stores).
    pub fn spawn_publisher(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.store.shares_status() {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move { me.publish_loop().await }))
    }

    async fn publish_loop(&self) {
        let mut lease: Option<LeaseId> = None;
        let mut published: HashMap<String, Vec<u8>> = HashMap::new();
        let mut renewed = Instant::now();
        let mut warned: Option<Instant> = None;
        loop {
            tokio::time::sleep(PUBLISH).await;
            let result = self
                .publish_once(&mut lease, &mut published, &mut renewed)
                .await;
            if let Err(e) = result {
                if matches!(e, StoreError::LeaseNotFound { .. }) {
                    lease = None;
                    published.clear();
                }
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                    tracing::warn!(error = %e, "cannot publish this replica's status; other replicas will report it down");
                    warned = Some(Instant::now());
                }
            }
        }
    }

    async fn publish_once(
        &self,
        lease: &mut Option<LeaseId>,
        published: &mut HashMap<String, Vec<u8>>,
        renewed: &mut Instant,
    ) -> Result<(), StoreError> {
        let id = match *lease {
            Some(id) => {
                if renewed.elapsed() >= REPLICA_TTL / 4 {
                    self.store.keep_alive(id).await?;
                    *renewed = Instant::now();
                }
                id
            }
            None => {
                let granted = self.store.grant_lease(REPLICA_TTL).await?;
                published.clear();
                *renewed = Instant::now();
                *lease = Some(granted.id);
                granted.id
            }
        };
        let mut wanted: HashMap<String, Vec<u8>> = self
            .registry
            .nodes()
            .iter()
            .map(|n| {
                let path = format!("proxies/{}/{}/{}", self.id, segment(&n.node.id), n.stream);
                (
                    path,
                    serde_json::to_vec(&self.proxy_json(n)).unwrap_or_default(),
                )
            })
            .collect();
        let mut writes: Vec<(String, Option<Vec<u8>>)> = published
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .map(|k| (k.clone(), None))
            .collect();
        for (path, bytes) in &wanted {
            if published.get(path) != Some(bytes) {
                writes.push((path.clone(), Some(bytes.clone())));
            }
        }
        let heartbeat = serde_json::to_vec(&self.record()).unwrap_or_default();
        writes.push((format!("replicas/{}", self.id), Some(heartbeat)));
        self.store.put_status(id, writes).await?;
        wanted.retain(|k, _| !k.starts_with("replicas/"));
        *published = wanted;
        Ok(())
    }

    /// The answer of `GET /api/v1/proxies`: this replica, every replica the store knows, every
    /// proxy connected to a live replica with `inSync` judged against this replica's model, and
    /// `store`: null, or why the other replicas' records could not be read.
    pub async fn report(&self) -> Value {
        let model = self.model.borrow().clone();
        let mut proxies: Vec<Value> = self
            .registry
            .nodes()
            .iter()
            .map(|n| self.proxy_json(n))
            .collect();
        let mut replicas = vec![replica_json(&self.record(), true, true)];
        let mut store_error = None;
        if self.store.shares_status() {
            match tokio::time::timeout(STORE_TIMEOUT, self.store.list_status()).await {
                Ok(Ok(entries)) => {
                    self.merge(entries, &mut replicas, &mut proxies);
                }
                Ok(Err(e)) => store_error = Some(e.to_string()),
                Err(_) => {
                    store_error = Some(format!(
                        "{}: no answer within {STORE_TIMEOUT:?}",
                        self.store.describe()
                    ))
                }
            }
        }
        judge(&model, self.views.get().map(|v| &**v), &mut proxies);
        json!({
            "revision": model.revision,
            "replica": self.id,
            "replicas": replicas,
            "store": store_error,
            "proxies": proxies,
        })
    }

    /// The other replicas whose heartbeat is fresh: (id, API address). Empty when the store is
    /// not shared or cannot be read (then only this replica's proxies are reachable).
    pub async fn live_peers(&self) -> Vec<(String, String)> {
        if !self.store.shares_status() {
            return Vec::new();
        }
        let Ok(Ok(entries)) = tokio::time::timeout(STORE_TIMEOUT, self.store.list_status()).await
        else {
            return Vec::new();
        };
        let now = now_ms();
        entries
            .iter()
            .filter(|(path, _)| path.starts_with("replicas/"))
            .filter_map(|(_, bytes)| serde_json::from_slice::<ReplicaRecord>(bytes).ok())
            .filter(|r| r.id != self.id)
            .filter(|r| now.saturating_sub(r.heartbeat_unix_ms) <= STALE.as_millis() as u64)
            .map(|r| (r.id, r.api))
            .collect()
    }

    /// Adds the other replicas and the proxies of those that are up.
    fn merge(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        replicas: &mut Vec<Value>,
        proxies: &mut Vec<Value>,
    ) {
        let now = now_ms();
        let mut up: HashMap<String, bool> = HashMap::new();
        for (path, bytes) in &entries {
            let Some(id) = path.strip_prefix("replicas/") else {
                continue;
            };
            if id == self.id {
                continue;
            }
            if let Ok(r) = serde_json::from_slice::<ReplicaRecord>(bytes) {
                let fresh = now.saturating_sub(r.heartbeat_unix_ms) <= STALE.as_millis() as u64;
                up.insert(r.id.clone(), fresh);
                replicas.push(replica_json(&r, false, fresh));
            }
        }
        for (path, bytes) in entries {
            let Some(rest) = path.strip_prefix("proxies/") else {
                continue;
            };
            let replica = rest.split('/').next().unwrap_or_default();
            if replica == self.id || !up.get(replica).copied().unwrap_or(false) {
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                proxies.push(v);
            }
        }
        proxies.sort_by(|a, b| {
            a["id"]
                .as_str()
                .cmp(&b["id"].as_str())
                .then(a["replica"].as_str().cmp(&b["replica"].as_str()))
        });
    }
}

fn replica_json(r: &ReplicaRecord, this: bool, up: bool) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["up"] = json!(up);
    v["answering"] = json!(this);
    v["heartbeatAgeMs"] = json!(now_ms().saturating_sub(r.heartbeat_unix_ms));
    v
}

/// Sets each proxy's `inSync`: every type it subscribed to acknowledged at the version its view
/// has in `model` now (from the view engine when there is one). A proxy that discovers on
/// demand holds a view only it has: it is in sync when it acknowledged all that was sent.
fn judge(model: &Model, views: Option<&MeshViews>, proxies: &mut [Value]) {
    let mut expected: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for p in proxies.iter_mut() {
        if p["node"]["metadata"][trellis_xds::node::DISCOVERY_KEY]
            == trellis_xds::node::DISCOVERY_ON_DEMAND
        {
            let in_sync = p["types"].as_object().is_some_and(|types| {
                !types.is_empty()
                    && types.values().all(|t| {
                        t["sent_version"].is_string() && t["sent_version"] == t["acked_version"]
                    })
            });
            p["inSync"] = json!(in_sync);
            continue;
        }
        let key = (
            p["namespace"].as_str().unwrap_or_default().to_string(),
            p["service"].as_str().unwrap_or_default().to_string(),
        );
        let versions = expected.entry(key.clone()).or_insert_with(|| match views {
            Some(v) => v.expected_versions(&key.0, &key.1),
            None => views::expected_versions(model, &key.0, &key.1),
        });
        let types = p["types"].as_object();
        let in_sync = types.is_some_and(|types| {
            !types.is_empty()
                && types.iter().all(|(url, t)| {
                    versions
                        .get(url)
                        .is_none_or(|v| t["acked_version"].as_str() == Some(v.as_str()))
                })
        });
        p["inSync"] = json!(in_sync);
    }
}
