//! Which proxies are connected and what each holds: the answer to `trellis check` ("is every
//! proxy in sync, and if not, why") and `trellis proxy-config` ("what did this proxy get").
//!
//! Each stream owns one entry, behind its own lock, so ACKs from a thousand streams never queue
//! on one mutex; the map lock is taken only to connect, disconnect and list. The entry goes away
//! with the stream (the handle removes it on drop), so the registry never grows past the number
//! of open streams.
use crate::node::NodeInfo;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The flavour of ADS a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Incremental xDS: resource-level adds, updates and removals.
    Delta,
    /// State of the world: every resource of a type in each response.
    Sotw,
}

/// One connected stream.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Unique per stream within this server.
    pub stream: u64,
    pub node: NodeInfo,
    pub mode: Mode,
    pub principal: Option<String>,
    pub peer: Option<String>,
    pub connected_since_unix_ms: u64,
    /// By type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

impl NodeStatus {
    /// Whether every type's last sent version was acknowledged.
    pub fn in_sync(&self) -> bool {
        self.types.values().all(TypeStatus::in_sync)
    }
}

/// What one stream holds of one type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub sent_at_unix_ms: Option<u64>,
    /// Resources in the last response (delta: resources changed or removed by it).
    pub sent_resources: usize,
    pub acked_version: Option<String>,
    pub acked_at_unix_ms: Option<u64>,
    /// The last rejection, kept after later ACKs so its text can still be shown.
    pub last_nack: Option<Nack>,
}

impl TypeStatus {
    pub fn in_sync(&self) -> bool {
        self.sent_version.is_some() && self.sent_version == self.acked_version
    }
}

/// A version a proxy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
    pub at_unix_ms: u64,
}

/// The connected streams; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    streams: Mutex<HashMap<u64, Arc<Mutex<NodeStatus>>>>,
    next: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            streams: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            changed: watch::Sender::new(0),
        }
    }
}

/// Locks, recovering from poisoning: the data is plain status, valid after any panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Registry {
    /// Every connected stream, by node id.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let entries: Vec<_> = lock(&self.inner.streams).values().cloned().collect();
        let mut out: Vec<NodeStatus> = entries.iter().map(|e| lock(e).clone()).collect();
        out.sort_by(|a, b| a.node.id.cmp(&b.node.id).then(a.stream.cmp(&b.stream)));
        out
    }

    /// The streams of one node id (usually one; two while a reconnect overlaps).
    pub fn node(&self, id: &str) -> Vec<NodeStatus> {
        let mut out = self.nodes();
        out.retain(|n| n.node.id == id);
        out
    }

    pub fn len(&self) -> usize {
        lock(&self.inner.streams).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ticks on every connect, disconnect, send, ACK and NACK; for waiting on a condition.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Whether every connected stream acknowledged `version` of `type_url` (true when none is
    /// connected).
    pub fn all_acked(&self, type_url: &str, version: &str) -> bool {
        let entries: Vec<_> = lock(&self.inner.streams).values().cloned().collect();
        entries.iter().all(|e| {
            lock(e)
                .types
                .get(type_url)
                .and_then(|t| t.acked_version.as_deref())
                == Some(version)
        })
    }

    pub(crate) fn register(
        &self,
        node: NodeInfo,
        mode: Mode,
        principal: Option<String>,
        peer: Option<SocketAddr>,
    ) -> NodeHandle {
        let stream = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let status = Arc::new(Mutex::new(NodeStatus {
            stream,
            node,
            mode,
            principal,
            peer: peer.map(|p| p.to_string()),
            connected_since_unix_ms: now_ms(),
            types: BTreeMap::new(),
        }));
        lock(&self.inner.streams).insert(stream, status.clone());
        self.tick();
        NodeHandle {
            registry: self.clone(),
            stream,
            status,
        }
    }

    fn tick(&self) {
        self.inner.changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// A stream's entry; removed from the registry when dropped.
#[derive(Debug)]
pub(crate) struct NodeHandle {
    registry: Registry,
    stream: u64,
    status: Arc<Mutex<NodeStatus>>,
}

impl NodeHandle {
    pub(crate) fn node_id(&self) -> String {
        lock(&self.status).node.id.clone()
    }

    fn update(&self, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        f(lock(&self.status)
            .types
            .entry(type_url.to_string())
            .or_default());
        self.registry.tick();
    }

    pub(crate) fn sent(&self, type_url: &str, version: &str, nonce: &str, resources: usize) {
        self.update(type_url, |t| {
            t.sent_version = Some(version.to_string());
            t.sent_nonce = Some(nonce.to_string());
            t.sent_at_unix_ms = Some(now_ms());
            t.sent_resources = resources;
        });
    }

    pub(crate) fn acked(&self, type_url: &str, version: &str) {
        self.update(type_url, |t| {
            t.acked_version = Some(version.to_string());
            t.acked_at_unix_ms = Some(now_ms());
        });
    }

    /// The proxy already held `version` when it connected: sent and acknowledged before.
    pub(crate) fn held(&self, type_url: &str, version: &str) {
        self.update(type_url, |t| {
            t.sent_version = Some(version.to_string());
            t.sent_nonce = None;
            t.acked_version = Some(version.to_string());
            t.acked_at_unix_ms = Some(now_ms());
        });
    }

    pub(crate) fn nacked(&self, type_url: &str, version: &str, error: &str) {
        self.update(type_url, |t| {
            t.last_nack = Some(Nack {
                version: version.to_string(),
                error: error.to_string(),
                at_unix_ms: now_ms(),
            });
        });
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        lock(&self.registry.inner.streams).remove(&self.stream);
        self.registry.tick();
    }
}
