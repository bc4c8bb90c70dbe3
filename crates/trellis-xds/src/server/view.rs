//! What each node should hold: a [`View`] per node, computed by the control plane and handed to
//! the server through a [`ViewSource`].
//!
//! The control plane owns the policy (which services a proxy may call, which inbound policy is
//! its own); the server owns the protocol (what the proxy already has, what to send next). They
//! meet at a `tokio::sync::watch` channel per node: the control plane replaces the node's view,
//! the stream wakes, diffs against what it sent and pushes only the difference. A watch keeps
//! only the latest value, so a slow stream skips intermediate views instead of queueing them.
//!
//! Views are cheap to share: each type's resources sit behind an `Arc`, so nodes with the same
//! MeshConfig or the same Services share one copy, and a stream skips a type whose `Arc` did not
//! change without comparing a single resource.
use crate::node::NodeInfo;
use imbl::OrdMap;
use prost_types::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::Status;

/// One resource as served: an opaque version and the resource.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedResource {
    pub version: String,
    pub any: Any,
}

impl VersionedResource {
    /// A resource whose version is a digest of its bytes: the same resource gets the same version
    /// from every control-plane replica and after a restart, so a reconnecting proxy that already
    /// holds it is not sent it again.
    pub fn new(any: Any) -> Self {
        let mut h = Fnv::new();
        h.write(any.type_url.as_bytes());
        h.write(&[0]);
        h.write(&any.value);
        VersionedResource {
            version: h.hex(),
            any,
        }
    }
}

/// The resources of one type for one node, by resource name, and a digest of their
/// `(name, version)` pairs: the type's state-of-the-world version.
///
/// The map is persistent and the digest is a sum of per-entry digests, so a copy that differs
/// in one resource costs one insert or remove, not a rebuild: the control plane patches the
/// types of a view when one resource changes instead of recomputing all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeResources {
    resources: OrdMap<String, Arc<VersionedResource>>,
    sum: u64,
    version: String,
}

impl TypeResources {
    pub fn new(resources: BTreeMap<String, VersionedResource>) -> Self {
        resources
            .into_iter()
            .map(|(name, r)| (name, Arc::new(r)))
            .collect()
    }

    /// The version of the whole set (changes when any resource is added, changed or removed).
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn resources(&self) -> &OrdMap<String, Arc<VersionedResource>> {
        &self.resources
    }

    pub fn get(&self, name: &str) -> Option<&VersionedResource> {
        self.resources.get(name).map(|r| &**r)
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Adds or replaces one resource; returns whether anything changed.
    pub fn insert(&mut self, name: String, resource: Arc<VersionedResource>) -> bool {
        if let Some(old) = self.resources.get(&name) {
            if Arc::ptr_eq(old, &resource) || old.version == resource.version {
                return false;
            }
        }
        let added = entry_digest(&name, &resource.version);
        if let Some(old) = self.resources.insert(name.clone(), resource) {
            self.sum = self.sum.wrapping_sub(entry_digest(&name, &old.version));
        }
        self.sum = self.sum.wrapping_add(added);
        self.version = hex(self.sum);
        true
    }

    /// Removes one resource; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.resources.remove(name) {
            Some(old) => {
                self.sum = self.sum.wrapping_sub(entry_digest(name, &old.version));
                self.version = hex(self.sum);
                true
            }
            None => false,
        }
    }
}

impl Default for TypeResources {
    fn default() -> Self {
        TypeResources::new(BTreeMap::new())
    }
}

impl FromIterator<(String, VersionedResource)> for TypeResources {
    fn from_iter<I: IntoIterator<Item = (String, VersionedResource)>>(iter: I) -> Self {
        iter.into_iter().map(|(n, r)| (n, Arc::new(r))).collect()
    }
}

impl FromIterator<(String, Arc<VersionedResource>)> for TypeResources {
    fn from_iter<I: IntoIterator<Item = (String, Arc<VersionedResource>)>>(iter: I) -> Self {
        let resources: OrdMap<String, Arc<VersionedResource>> = iter.into_iter().collect();
        let sum = sum_of(resources.iter().map(|(n, r)| (n, &**r)));
        TypeResources {
            resources,
            sum,
            version: hex(sum),
        }
    }
}

/// Everything one node should hold, by type URL. A type that is absent is empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    types: HashMap<String, Arc<TypeResources>>,
}

impl View {
    pub fn new() -> Self {
        View::default()
    }

    /// Sets the resources of one type.
    pub fn set_type(&mut self, type_url: impl Into<String>, resources: Arc<TypeResources>) {
        self.types.insert(type_url.into(), resources);
    }

    pub fn get(&self, type_url: &str) -> Option<&Arc<TypeResources>> {
        self.types.get(type_url)
    }

    pub fn types(&self) -> impl Iterator<Item = (&String, &Arc<TypeResources>)> {
        self.types.iter()
    }

    /// Takes over `previous`'s copy of every type whose version did not change, so streams
    /// skip those types by pointer comparison. Call it before publishing a recomputed view.
    pub fn share_unchanged(&mut self, previous: &View) {
        for (type_url, resources) in self.types.iter_mut() {
            if let Some(old) = previous.types.get(type_url) {
                if old.version() == resources.version() {
                    *resources = old.clone();
                }
            }
        }
    }

    /// Whether both views hold the same types at the same versions (then publishing `self`
    /// over `other` would push nothing).
    pub fn same_as(&self, other: &View) -> bool {
        self.types.len() == other.types.len()
            && self.types.iter().all(|(t, r)| {
                other
                    .types
                    .get(t)
                    .is_some_and(|o| Arc::ptr_eq(o, r) || o.version() == r.version())
            })
    }

    /// A view holding these Trellis resources, each under its type URL and its
    /// `namespace/name`, with content-digest versions. Every Trellis type is present (empty
    /// if nothing of it was given), so a proxy learns that a kind has no resources.
    pub fn from_resources<'a>(
        resources: impl IntoIterator<Item = &'a trellis_api::Resource>,
    ) -> Self {
        let mut by_type: HashMap<String, BTreeMap<String, VersionedResource>> = crate::TYPE_URLS
            .iter()
            .map(|t| (t.to_string(), BTreeMap::new()))
            .collect();
        for r in resources {
            let any = crate::encode(r);
            by_type
                .entry(any.type_url.clone())
                .or_default()
                .insert(crate::resource_name(r), VersionedResource::new(any));
        }
        View {
            types: by_type
                .into_iter()
                .map(|(t, m)| (t, Arc::new(TypeResources::new(m))))
                .collect(),
        }
    }
}

/// Who the server's auth hook says a stream belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeAuth {
    /// The authenticated principal (a SPIFFE ID, a token's subject); `None` when anonymous.
    pub principal: Option<String>,
}

/// The control plane's side: a view per node.
///
/// `subscribe` is called once per stream, after the node identified itself. The server holds
/// the receiver for the stream's life and drops it when the stream ends, so the control plane
/// can forget nodes whose senders report `is_closed()`. Refusing a node (unknown service, a
/// principal that may not speak for it) is an `Err(Status)` that ends the stream.
pub trait ViewSource: Send + Sync + 'static {
    fn subscribe(
        &self,
        node: &NodeInfo,
        auth: &NodeAuth,
    ) -> Result<watch::Receiver<Arc<View>>, Status>;

    /// The view of a node that discovers services on demand: only the services named in
    /// `scope` (`namespace/name`, as the node subscribed to them) and what they depend on,
    /// plus what is the node's own. Called again whenever the node's subscription changes; the
    /// receiver it returns replaces the previous one.
    ///
    /// The default ignores the scope (the node gets its whole view and the server filters the
    /// Service type by name); a source that keeps per-service state should narrow the view.
    fn subscribe_scoped(
        &self,
        node: &NodeInfo,
        auth: &NodeAuth,
        scope: &Scope,
    ) -> Result<watch::Receiver<Arc<View>>, Status> {
        let _ = scope;
        self.subscribe(node, auth)
    }
}

/// The services an on-demand node subscribed to, by xDS resource name (`namespace/name`).
pub type Scope = std::collections::BTreeSet<String>;

/// Every node gets the same view: for tests, benchmarks and single-service setups.
#[derive(Debug)]
pub struct SharedViews {
    tx: watch::Sender<Arc<View>>,
}

impl SharedViews {
    pub fn new(view: View) -> Self {
        SharedViews {
            tx: watch::Sender::new(Arc::new(view)),
        }
    }

    /// Replaces the view every node sees (sharing the types that did not change).
    pub fn set(&self, mut view: View) {
        view.share_unchanged(&self.current());
        self.tx.send_replace(Arc::new(view));
    }

    pub fn current(&self) -> Arc<View> {
        self.tx.borrow().clone()
    }
}

impl ViewSource for SharedViews {
    fn subscribe(&self, _: &NodeInfo, _: &NodeAuth) -> Result<watch::Receiver<Arc<View>>, Status> {
        Ok(self.tx.subscribe())
    }
}

impl<T: ViewSource> ViewSource for Arc<T> {
    fn subscribe(
        &self,
        node: &NodeInfo,
        auth: &NodeAuth,
    ) -> Result<watch::Receiver<Arc<View>>, Status> {
        (**self).subscribe(node, auth)
    }

    fn subscribe_scoped(
        &self,
        node: &NodeInfo,
        auth: &NodeAuth,
        scope: &Scope,
    ) -> Result<watch::Receiver<Arc<View>>, Status> {
        (**self).subscribe_scoped(node, auth, scope)
    }
}

/// The digest of a set of `(name, version)` pairs: 16 hex digits. It is the sum of each pair's
/// digest, so it does not depend on order and follows one insert or removal in O(1).
pub(crate) fn digest<'a>(
    entries: impl Iterator<Item = (&'a String, &'a VersionedResource)>,
) -> String {
    hex(sum_of(entries))
}

fn sum_of<'a>(entries: impl Iterator<Item = (&'a String, &'a VersionedResource)>) -> u64 {
    entries.fold(0u64, |sum, (name, r)| {
        sum.wrapping_add(entry_digest(name, &r.version))
    })
}

fn entry_digest(name: &str, version: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(name.as_bytes());
    h.write(&[0]);
    h.write(version.as_bytes());
    h.0
}

fn hex(sum: u64) -> String {
    format!("{sum:016x}")
}

/// FNV-1a, 64 bit: stable across Rust releases and replicas (std's hasher promises neither).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(value: &[u8]) -> Any {
        Any {
            type_url: "t".into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn versions_follow_content() {
        let a = VersionedResource::new(any(b"a"));
        assert_eq!(a.version, VersionedResource::new(any(b"a")).version);
        assert_ne!(a.version, VersionedResource::new(any(b"b")).version);
        let one: TypeResources = [("x".to_string(), a.clone())].into_iter().collect();
        let same: TypeResources = [("x".to_string(), a.clone())].into_iter().collect();
        let renamed: TypeResources = [("y".to_string(), a)].into_iter().collect();
        assert_eq!(one.version(), same.version());
        assert_ne!(one.version(), renamed.version());
        assert_ne!(one.version(), TypeResources::default().version());

        let mut previous = View::new();
        previous.set_type("a", Arc::new(one.clone()));
        previous.set_type("b", Arc::new(one.clone()));
        let mut next = View::new();
        next.set_type("a", Arc::new(same));
        next.set_type("b", Arc::new(renamed));
        next.share_unchanged(&previous);
        let (a, b) = (next.get("a").expect("a"), next.get("b").expect("b"));
        assert!(Arc::ptr_eq(a, previous.get("a").expect("a")));
        assert!(!Arc::ptr_eq(b, previous.get("b").expect("b")));
        assert!(!next.same_as(&previous));
        assert!(previous.same_as(&previous.clone()));
    }
}
