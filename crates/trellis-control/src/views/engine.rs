//! Keeps every subscribed view up to date with the model at a cost that follows the change.
//!
//! A view is three parts:
//! - the mesh-wide types (MeshConfig, TrustBundle, ExternalService and the Gateway API kinds
//!   HTTPRoute, GRPCRoute, TLSRoute, Gateway), one copy for all views;
//! - the types that follow the services a proxy holds (Services, their addresses, Workloads,
//!   Routes, DestinationPolicies), computed once per distinct set of services — a *group* —
//!   and shared by every view with that set (in a mesh without AuthorizationPolicies, that is
//!   one group for all proxies);
//! - its own inbound policy (AuthorizationPolicies, RequestAuthentications and
//!   RateLimitPolicies of its service).
//!
//! On a change the engine learns from the model which keys moved, updates its index, and
//! patches only what they touch: a Workload is inserted into or removed from the groups holding
//! a service that selects it; a Route, AuthorizationPolicy or Service may change which services
//! a proxy reaches, so the proxies that could be affected have their reach recomputed (and move
//! to another group when it changed); a MeshConfig that changes the trust domain recomputes
//! every reach. Each resource is encoded and hashed once per stored version and the copy is
//! shared by every view that holds it. [`super::compute`] is the reference this must equal.
//!
//! What a proxy reaches follows from a [`ReachKey`]: the services it may not call and, when its
//! Service lists what it calls (`spec.egress`), that scope. The scope is kept as patterns and
//! expanded when reach is computed, so `NAMESPACE/*` follows the namespace's services: only
//! Service changes move them, and those recompute reach anyway. The scope itself is read again
//! only when the proxy's own Service changes, so an endpoint change still recomputes no reach.
//! Proxies with equal keys share one computed reach.
use super::index::{self, MeshIndex, SvcKey};
use crate::egress::Egress;
use crate::model::{Change, Model};
use crate::store::{ResourceKey, Revision, Stored};
use crate::view::{policy_may_allow, NodeInfo};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use tokio::sync::watch;
use trellis_api::Resource;
use trellis_xds::server::{TypeResources, VersionedResource, View};

/// The type slots of a view, in [`trellis_xds::TYPE_URLS`] order.
const MESH_CONFIG: usize = 0;
const TRUST_BUNDLE: usize = 1;
const SERVICE: usize = 2;
const SERVICE_ADDRESS: usize = 3;
const WORKLOAD: usize = 4;
const DESTINATION_POLICY: usize = 5;
const ROUTE: usize = 6;
const AUTHORIZATION_POLICY: usize = 7;
const REQUEST_AUTHENTICATION: usize = 8;
const RATE_LIMIT_POLICY: usize = 9;
const EXTERNAL_SERVICE: usize = 10;
const HTTP_ROUTE: usize = 11;
const GRPC_ROUTE: usize = 12;
const TLS_ROUTE: usize = 13;
const GATEWAY: usize = 14;
const SLOTS: usize = 15;

/// The mesh-wide kinds, one copy for all views, and their slots.
const GLOBAL_KINDS: [&str; GLOBALS] = [
    "MeshConfig",
    "TrustBundle",
    "ExternalService",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "Gateway",
];
const GLOBAL_SLOTS: [usize; GLOBALS] = [
    MESH_CONFIG,
    TRUST_BUNDLE,
    EXTERNAL_SERVICE,
    HTTP_ROUTE,
    GRPC_ROUTE,
    TLS_ROUTE,
    GATEWAY,
];
const GLOBALS: usize = 7;

/// The slots a group holds.
const GROUP_SLOTS: [usize; 5] = [
    SERVICE,
    SERVICE_ADDRESS,
    WORKLOAD,
    DESTINATION_POLICY,
    ROUTE,
];

static TYPE_URLS: LazyLock<[String; SLOTS]> =
    LazyLock::new(|| trellis_xds::TYPE_URLS.map(str::to_string));

fn slot_of(kind: &str) -> Option<usize> {
    Some(match kind {
        "MeshConfig" => MESH_CONFIG,
        "TrustBundle" => TRUST_BUNDLE,
        "Service" => SERVICE,
        "ServiceAddress" => SERVICE_ADDRESS,
        "Workload" => WORKLOAD,
        "DestinationPolicy" => DESTINATION_POLICY,
        "Route" => ROUTE,
        "AuthorizationPolicy" => AUTHORIZATION_POLICY,
        "RequestAuthentication" => REQUEST_AUTHENTICATION,
        "RateLimitPolicy" => RATE_LIMIT_POLICY,
        "ExternalService" => EXTERNAL_SERVICE,
        "HTTPRoute" => HTTP_ROUTE,
        "GRPCRoute" => GRPC_ROUTE,
        "TLSRoute" => TLS_ROUTE,
        "Gateway" => GATEWAY,
        _ => return None,
    })
}

fn name_of(key: &ResourceKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

type Types = [Arc<TypeResources>; SLOTS];

fn empty() -> Arc<TypeResources> {
    static EMPTY: LazyLock<Arc<TypeResources>> = LazyLock::new(Default::default);
    EMPTY.clone()
}

/// Sets `name` in `types` to `want` (absent when `None`), copying the type only when it changes.
fn patch(
    types: &mut Arc<TypeResources>,
    name: &str,
    want: Option<&Arc<VersionedResource>>,
) -> bool {
    match (types.get(name), want) {
        (None, None) => false,
        (Some(have), Some(want)) if have.version == want.version => false,
        (_, Some(want)) => Arc::make_mut(types).insert(name.to_string(), want.clone()),
        (Some(_), None) => Arc::make_mut(types).remove(name),
    }
}

/// Each resource's wire form by (key, stored version): encoded and hashed once.
#[derive(Default)]
struct Encoded(HashMap<ResourceKey, (Revision, Arc<VersionedResource>)>);

impl Encoded {
    fn get(&mut self, key: &ResourceKey, stored: &Stored) -> Arc<VersionedResource> {
        if let Some((version, r)) = self.0.get(key) {
            if *version == stored.version {
                return r.clone();
            }
        }
        let r = Arc::new(VersionedResource::new(trellis_xds::encode(
            &stored.resource,
        )));
        self.0.insert(key.clone(), (stored.version, r.clone()));
        r
    }

    fn forget(&mut self, key: &ResourceKey) {
        self.0.remove(key);
    }
}

/// The service-following types of every view that holds the same services.
struct Group {
    services: Arc<BTreeSet<SvcKey>>,
    types: [Arc<TypeResources>; 5],
    members: usize,
}

/// The groups, by id (what views hold, so that finding a view's group does not hash its set of
/// services) and by set of services (to find the group a proxy joins).
#[derive(Default)]
struct Groups {
    by_id: HashMap<u64, Group>,
    ids: HashMap<Arc<BTreeSet<SvcKey>>, u64>,
    next: u64,
}

impl Groups {
    /// `services`, as the `Arc` of the group holding that set when there is one.
    fn key(&self, services: Arc<BTreeSet<SvcKey>>) -> Arc<BTreeSet<SvcKey>> {
        match self.ids.get_key_value(&services) {
            Some((k, _)) => k.clone(),
            None => services,
        }
    }

    /// Joins the group of `services`, building it when there is none; returns its id and
    /// whether it was built.
    fn join(
        &mut self,
        services: &Arc<BTreeSet<SvcKey>>,
        build: impl FnOnce() -> [Arc<TypeResources>; 5],
    ) -> (u64, bool) {
        let (id, built) = match self.ids.get(services) {
            Some(id) => (*id, false),
            None => {
                self.next += 1;
                let id = self.next;
                self.ids.insert(services.clone(), id);
                self.by_id.insert(
                    id,
                    Group {
                        services: services.clone(),
                        types: build(),
                        members: 0,
                    },
                );
                (id, true)
            }
        };
        if let Some(g) = self.by_id.get_mut(&id) {
            g.members += 1;
        }
        (id, built)
    }

    fn leave(&mut self, id: u64) {
        if let Some(g) = self.by_id.get_mut(&id) {
            g.members -= 1;
        }
    }

    /// Drops the groups no view is in.
    fn sweep(&mut self) {
        let ids = &mut self.ids;
        self.by_id.retain(|_, g| {
            if g.members == 0 {
                ids.remove(&g.services);
            }
            g.members > 0
        });
    }
}

/// What a proxy's reach follows from; proxies with equal keys reach the same services.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ReachKey {
    /// Existing services whose AuthorizationPolicies can never allow this proxy; it may call
    /// every other existing service (of its scope). Usually small, and the same for many
    /// proxies.
    denied: BTreeSet<SvcKey>,
    /// The egress scope its Service declares, if any (see [`crate::egress`]).
    egress: Option<Arc<Egress>>,
}

struct ViewState {
    node: NodeInfo,
    reach: ReachKey,
    /// The services it may call closed over route backends and mirrors, plus its own: the key
    /// of its group (the same `Arc` as the group's).
    services: Arc<BTreeSet<SvcKey>>,
    group: u64,
    own: [Arc<TypeResources>; 3],
    tx: watch::Sender<Arc<View>>,
}

/// The view of an on-demand proxy: only the services it named (that it may call), closed over
/// route backends and mirrors, plus its own. Small by design, so it is simply recomputed from
/// the index on each update, in proportion to its size rather than the mesh's.
struct ScopedView {
    node: NodeInfo,
    scope: BTreeSet<SvcKey>,
    tx: watch::Sender<Arc<View>>,
}

/// The views of every subscribed (namespace, service), kept incrementally.
pub struct ViewEngine {
    /// On-demand proxies' views, one per stream.
    scoped: Vec<ScopedView>,
    model: Arc<Model>,
    index: MeshIndex,
    encoded: Encoded,
    trust_domain: String,
    global: [Arc<TypeResources>; GLOBALS],
    groups: Groups,
    views: HashMap<SvcKey, ViewState>,
    /// What proxies with the same [`ReachKey`] reach, valid until a change touches reach.
    reach: HashMap<ReachKey, Arc<BTreeSet<SvcKey>>>,
}

/// What the model in force says; shared by the steps of an update.
struct Ctx<'a> {
    model: &'a Model,
    index: &'a MeshIndex,
}

impl Ctx<'_> {
    fn principal(&self, node: &NodeInfo, trust_domain: &str) -> String {
        node.principal(trust_domain)
    }

    /// The existing services `node` may not call (see [`crate::view`]).
    fn denied(&self, node: &NodeInfo, principal: &str) -> BTreeSet<SvcKey> {
        self.index
            .policied()
            .iter()
            .filter(|svc| self.is_denied(svc, node, principal))
            .cloned()
            .collect()
    }

    fn is_denied(&self, svc: &SvcKey, node: &NodeInfo, principal: &str) -> bool {
        index::service(self.model, svc).is_some() && !self.may_call(svc, node, principal)
    }

    fn may_call(&self, svc: &SvcKey, node: &NodeInfo, principal: &str) -> bool {
        let policies = &self.index.attached(svc).authorization_policies;
        if policies.is_empty() {
            return true;
        }
        policies
            .iter()
            .any(|k| match self.model.items.get(k).map(|s| &s.resource) {
                Some(Resource::AuthorizationPolicy(p)) => policy_may_allow(p, node, principal),
                _ => false,
            })
    }

    /// Every existing service of the key's egress scope (of the mesh, without one) but the
    /// denied, closed over route backends and mirrors.
    fn reach(&self, key: &ReachKey) -> BTreeSet<SvcKey> {
        let allowed = |s: &SvcKey| !key.denied.contains(s);
        match &key.egress {
            Some(egress) => self.reach_from(egress.services(self.model).filter(allowed)),
            None => self.reach_from(services_of(self.model).filter(allowed)),
        }
    }

    /// Brings `reach`, the key of `node`'s view (of `own`), up to date with changes to the
    /// Services and AuthorizationPolicies of `callees`: each one's denial, and the egress scope
    /// when `own` is among them.
    fn follow(
        &self,
        reach: &mut ReachKey,
        own: &SvcKey,
        node: &NodeInfo,
        principal: &str,
        callees: &BTreeSet<SvcKey>,
    ) {
        for svc in callees {
            if self.is_denied(svc, node, principal) {
                reach.denied.insert(svc.clone());
            } else {
                reach.denied.remove(svc);
            }
        }
        if callees.contains(own) {
            reach.egress = Egress::of(self.model, own).map(Arc::new);
        }
    }

    /// The reach key of `node`, from scratch.
    fn reach_key(&self, node: &NodeInfo, own: &SvcKey, principal: &str) -> ReachKey {
        ReachKey {
            denied: self.denied(node, principal),
            egress: Egress::of(self.model, own).map(Arc::new),
        }
    }

    /// `seeds`, closed over route backends and mirrors.
    fn reach_from(&self, seeds: impl Iterator<Item = SvcKey>) -> BTreeSet<SvcKey> {
        let mut out = BTreeSet::new();
        let mut queue: VecDeque<SvcKey> = seeds.collect();
        while let Some(key) = queue.pop_front() {
            if out.contains(&key) {
                continue;
            }
            for k in &self.index.attached(&key).routes {
                if let Some(Resource::Route(route)) = self.model.items.get(k).map(|s| &s.resource) {
                    for rule in &route.spec.rules {
                        let targets = rule
                            .backends
                            .iter()
                            .map(|b| &b.service)
                            .chain(rule.mirror.iter().map(|m| &m.service));
                        for t in targets {
                            queue.push_back((key.0.clone(), t.clone()));
                        }
                    }
                }
            }
            for k in &self.index.attached(&key).gateway_routes {
                if let Some(stored) = self.model.items.get(k) {
                    queue.extend(index::gateway_backends(&stored.resource));
                }
            }
            out.insert(key);
        }
        out
    }

    /// Whether the resource at `key` belongs to the group of `services`.
    fn in_group(&self, services: &BTreeSet<SvcKey>, key: &ResourceKey, stored: &Stored) -> bool {
        match &stored.resource {
            Resource::Workload(_) => self
                .index
                .selected_by(key)
                .is_some_and(|by| by.iter().any(|s| services.contains(s))),
            r => index::attached_to(r).is_some_and(|s| services.contains(&s)),
        }
    }

    fn group(&self, services: &BTreeSet<SvcKey>, encoded: &mut Encoded) -> [Arc<TypeResources>; 5] {
        let mut maps: [Vec<(String, Arc<VersionedResource>)>; 5] = Default::default();
        let mut put = |slot: usize, key: &ResourceKey, encoded: &mut Encoded| {
            if let Some(stored) = self.model.items.get(key) {
                let i = GROUP_SLOTS.iter().position(|s| *s == slot).unwrap_or(0);
                maps[i].push((name_of(key), encoded.get(key, stored)));
            }
        };
        for svc in services {
            put(SERVICE, &index::service_key(&svc.0, &svc.1), encoded);
            let a = self.index.attached(svc);
            for k in &a.addresses {
                put(SERVICE_ADDRESS, k, encoded);
            }
            for k in &a.workloads {
                put(WORKLOAD, k, encoded);
            }
            for k in &a.destination_policies {
                put(DESTINATION_POLICY, k, encoded);
            }
            for k in &a.routes {
                put(ROUTE, k, encoded);
            }
        }
        maps.map(|m| Arc::new(m.into_iter().collect()))
    }

    fn own(&self, svc: &SvcKey, encoded: &mut Encoded) -> [Arc<TypeResources>; 3] {
        let a = self.index.attached(svc);
        [
            &a.authorization_policies,
            &a.request_authentications,
            &a.rate_limit_policies,
        ]
        .map(|keys| {
            if keys.is_empty() {
                // Shared, so views without an inbound policy are assembled once.
                return empty();
            }
            Arc::new(
                keys.iter()
                    .filter_map(|k| Some((name_of(k), encoded.get(k, self.model.items.get(k)?))))
                    .collect(),
            )
        })
    }
}

/// Every stored Service, by (namespace, name).
fn services_of(model: &Model) -> impl Iterator<Item = SvcKey> + '_ {
    model
        .items
        .range(index::service_key("", "")..)
        .take_while(|(k, _)| k.kind == "Service")
        .map(|(k, _)| (k.namespace.clone(), k.name.clone()))
}

/// The mesh's trust domain: the first MeshConfig's, as [`crate::view`] reads it.
fn trust_domain(model: &Model) -> String {
    model
        .items
        .range(ResourceKey::new("MeshConfig", "", "")..)
        .take_while(|(k, _)| k.kind == "MeshConfig")
        .find_map(|(_, s)| match &s.resource {
            Resource::MeshConfig(m) => Some(m.spec.trust_domain.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "cluster.local".into())
}

fn global_types(model: &Model, encoded: &mut Encoded) -> [Arc<TypeResources>; GLOBALS] {
    GLOBAL_KINDS.map(|kind| {
        Arc::new(
            model
                .items
                .range(ResourceKey::new(kind, "", "")..)
                .take_while(|(k, _)| k.kind == kind)
                .map(|(k, s)| (name_of(k), encoded.get(k, s)))
                .collect(),
        )
    })
}

impl ViewEngine {
    pub fn new(model: Arc<Model>) -> Self {
        let mut encoded = Encoded::default();
        let global = global_types(&model, &mut encoded);
        ViewEngine {
            index: MeshIndex::build(&model),
            trust_domain: trust_domain(&model),
            model,
            encoded,
            global,
            groups: Groups::default(),
            views: HashMap::new(),
            reach: HashMap::new(),
            scoped: Vec::new(),
        }
    }

    /// A receiver of the view of an on-demand proxy of `namespace/service` that named the
    /// services in `scope`, kept up to date by [`ViewEngine::update`] while a receiver lives.
    pub fn subscribe_scoped(
        &mut self,
        namespace: &str,
        service: &str,
        scope: BTreeSet<SvcKey>,
    ) -> watch::Receiver<Arc<View>> {
        let node = NodeInfo {
            namespace: namespace.to_string(),
            service: service.to_string(),
        };
        let view = self.scoped_view(&node, &scope);
        let (tx, rx) = watch::channel(Arc::new(view));
        self.scoped.push(ScopedView { node, scope, tx });
        rx
    }

    /// What an on-demand proxy holds: the named services it may call (see [`crate::view`]) and
    /// that are in its egress scope, if its Service declares one, closed over routes, and its
    /// own.
    fn scoped_view(&mut self, node: &NodeInfo, scope: &BTreeSet<SvcKey>) -> View {
        let ctx = Ctx {
            model: &self.model,
            index: &self.index,
        };
        let own = (node.namespace.clone(), node.service.clone());
        let principal = ctx.principal(node, &self.trust_domain);
        let egress = Egress::of(ctx.model, &own);
        let seeds = scope
            .iter()
            .filter(|s| egress.as_ref().is_none_or(|e| e.contains(s)))
            .filter(|s| !ctx.is_denied(s, node, &principal))
            .filter(|s| index::service(ctx.model, s).is_some())
            .cloned()
            .chain(std::iter::once(own.clone()));
        let services = ctx.reach_from(seeds);
        let group = ctx.group(&services, &mut self.encoded);
        let own = ctx.own(&own, &mut self.encoded);
        assemble(&self.global, Some(&group), &own)
    }

    /// Brings every on-demand view to the model in force.
    fn update_scoped(&mut self) {
        self.scoped.retain(|v| v.tx.receiver_count() > 0);
        let scoped = std::mem::take(&mut self.scoped);
        for v in &scoped {
            publish(&v.tx, self.scoped_view(&v.node, &v.scope));
        }
        self.scoped = scoped;
    }

    /// The model the views are at.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// A receiver of the view of proxies of `namespace/service`, kept up to date by
    /// [`ViewEngine::update`] for as long as a receiver lives.
    pub fn subscribe(&mut self, namespace: &str, service: &str) -> watch::Receiver<Arc<View>> {
        let key = (namespace.to_string(), service.to_string());
        if let Some(v) = self.views.get(&key) {
            return v.tx.subscribe();
        }
        let node = NodeInfo {
            namespace: key.0.clone(),
            service: key.1.clone(),
        };
        let ctx = Ctx {
            model: &self.model,
            index: &self.index,
        };
        let principal = ctx.principal(&node, &self.trust_domain);
        let reach = ctx.reach_key(&node, &key, &principal);
        let reachable = self
            .reach
            .entry(reach.clone())
            .or_insert_with(|| Arc::new(ctx.reach(&reach)))
            .clone();
        let services = with_own(reachable, &key, &self.groups);
        let own = ctx.own(&key, &mut self.encoded);
        let (group, _) = self
            .groups
            .join(&services, || ctx.group(&services, &mut self.encoded));
        let types = self.groups.by_id.get(&group).map(|g| &g.types);
        let view = assemble(&self.global, types, &own);
        let (tx, rx) = watch::channel(Arc::new(view));
        self.views.insert(
            key,
            ViewState {
                node,
                reach,
                services,
                group,
                own,
                tx,
            },
        );
        rx
    }

    /// The current view of `namespace/service`, if it is subscribed.
    pub fn current(&self, namespace: &str, service: &str) -> Option<Arc<View>> {
        let key = (namespace.to_string(), service.to_string());
        self.views.get(&key).map(|v| v.tx.borrow().clone())
    }

    /// Brings every view to `model`, touching only what changed since the last model.
    pub fn update(&mut self, model: Arc<Model>) {
        let changed = !Arc::ptr_eq(&self.model, &model);
        self.update_views(model);
        if changed {
            self.update_scoped();
        }
    }

    fn update_views(&mut self, model: Arc<Model>) {
        self.forget_unsubscribed();
        let previous = std::mem::replace(&mut self.model, model);
        let model = self.model.clone();
        let changes = model.changes_since(&previous);
        if changes.is_empty() {
            return;
        }
        let moved = self.index.apply(&model, &changes);
        let ctx = Ctx {
            model: &model,
            index: &self.index,
        };

        // What the changes touch.
        let mut global_changed = false;
        let mut callees: BTreeSet<SvcKey> = BTreeSet::new();
        let mut routed: BTreeSet<SvcKey> = BTreeSet::new();
        let mut owners: BTreeSet<SvcKey> = BTreeSet::new();
        let mut grouped: Vec<&Change<'_>> = Vec::new();
        let mut workloads: BTreeSet<ResourceKey> = moved;
        for c in &changes {
            // Encoded again when a view needs it (kinds no view holds are never encoded).
            self.encoded.forget(c.key);
            let resources = c.before.iter().chain(c.after.iter()).map(|s| &s.resource);
            for r in resources {
                let attached = index::attached_to(r);
                match r {
                    Resource::MeshConfig(_)
                    | Resource::TrustBundle(_)
                    | Resource::ExternalService(_)
                    | Resource::HTTPRoute(_)
                    | Resource::GRPCRoute(_)
                    | Resource::TLSRoute(_)
                    | Resource::Gateway(_) => global_changed = true,
                    Resource::Service(_) => callees.extend(attached),
                    Resource::AuthorizationPolicy(_) => {
                        callees.extend(attached.clone());
                        owners.extend(attached);
                    }
                    Resource::RequestAuthentication(_) | Resource::RateLimitPolicy(_) => {
                        owners.extend(attached)
                    }
                    Resource::Route(_) => routed.extend(attached),
                    _ => {}
                }
                // An HTTPRoute/GRPCRoute's backends are in its parents' callers' reach.
                routed.extend(index::gateway_parents(r));
            }
            match slot_of(&c.key.kind) {
                Some(WORKLOAD) => {
                    workloads.insert(c.key.clone());
                }
                Some(slot) if GROUP_SLOTS.contains(&slot) => grouped.push(c),
                _ => {}
            }
        }
        let mut reach_all = false;
        if global_changed {
            self.global = global_types(&model, &mut self.encoded);
            let domain = trust_domain(&model);
            if domain != self.trust_domain {
                self.trust_domain = domain;
                reach_all = true;
            }
        }

        // Reach: which proxies now call a different set of services.
        let mut republish: BTreeSet<SvcKey> = BTreeSet::new();
        let mut fresh: BTreeSet<u64> = BTreeSet::new();
        let reach_changed = reach_all || !callees.is_empty() || !routed.is_empty();
        if reach_changed {
            self.reach.clear();
        }
        // (old set, new reach) → new set, for proxies holding their own service in both.
        let mut moves: HashMap<(usize, usize), Arc<BTreeSet<SvcKey>>> = HashMap::new();
        for (key, v) in self.views.iter_mut() {
            if !reach_changed {
                break;
            }
            if !reach_all && callees.is_empty() && !routed.iter().any(|s| v.services.contains(s)) {
                continue;
            }
            let principal = ctx.principal(&v.node, &self.trust_domain);
            if reach_all {
                v.reach = ctx.reach_key(&v.node, key, &principal);
            } else {
                ctx.follow(&mut v.reach, key, &v.node, &principal, &callees);
            }
            let reachable = self
                .reach
                .entry(v.reach.clone())
                .or_insert_with(|| Arc::new(ctx.reach(&v.reach)))
                .clone();
            let memo = (
                Arc::as_ptr(&v.services) as usize,
                Arc::as_ptr(&reachable) as usize,
            );
            let own_in_both = reachable.contains(key) && v.services.contains(key);
            let services = match moves.get(&memo).filter(|_| own_in_both) {
                Some(s) => s.clone(),
                None => {
                    let s = if *reachable == *v.services {
                        v.services.clone()
                    } else {
                        with_own(reachable, key, &self.groups)
                    };
                    if own_in_both {
                        moves.insert(memo, s.clone());
                    }
                    s
                }
            };
            if Arc::ptr_eq(&services, &v.services) {
                continue;
            }
            self.groups.leave(v.group);
            let (group, built) = self
                .groups
                .join(&services, || ctx.group(&services, &mut self.encoded));
            if built {
                fresh.insert(group);
            }
            v.group = group;
            v.services = services;
            republish.insert(key.clone());
        }
        self.groups.sweep();

        // Groups: patch the ones that were there before with what changed.
        let mut changed_groups: BTreeSet<u64> = BTreeSet::new();
        for (id, group) in self.groups.by_id.iter_mut() {
            let services = &group.services;
            if fresh.contains(id) {
                continue;
            }
            let mut changed = false;
            for c in &grouped {
                let Some(slot) = slot_of(&c.key.kind) else {
                    continue;
                };
                let i = GROUP_SLOTS.iter().position(|s| *s == slot).unwrap_or(0);
                let want = c
                    .after
                    .filter(|s| ctx.in_group(services, c.key, s))
                    .map(|s| self.encoded.get(c.key, s));
                changed |= patch(&mut group.types[i], &name_of(c.key), want.as_ref());
            }
            let i = GROUP_SLOTS.iter().position(|s| *s == WORKLOAD).unwrap_or(0);
            for w in &workloads {
                let want = model
                    .items
                    .get(w)
                    .filter(|s| ctx.in_group(services, w, s))
                    .map(|s| self.encoded.get(w, s));
                changed |= patch(&mut group.types[i], &name_of(w), want.as_ref());
            }
            if changed {
                changed_groups.insert(*id);
            }
        }

        // Own inbound policy.
        for svc in &owners {
            if let Some(v) = self.views.get_mut(svc) {
                v.own = ctx.own(svc, &mut self.encoded);
                republish.insert(svc.clone());
            }
        }

        // Views of the same group with no inbound policy of their own are equal: assemble
        // them once.
        let mut assembled: HashMap<[usize; 4], Arc<View>> = HashMap::new();
        for (key, v) in &self.views {
            let moved = republish.contains(key);
            if !(global_changed || moved || changed_groups.contains(&v.group)) {
                continue;
            }
            let Some(group) = self.groups.by_id.get(&v.group) else {
                continue;
            };
            if moved {
                publish(&v.tx, assemble(&self.global, Some(&group.types), &v.own));
                continue;
            }
            let shape = [
                v.group as usize,
                Arc::as_ptr(&v.own[0]) as usize,
                Arc::as_ptr(&v.own[1]) as usize,
                Arc::as_ptr(&v.own[2]) as usize,
            ];
            let next = assembled
                .entry(shape)
                .or_insert_with(|| Arc::new(assemble(&self.global, Some(&group.types), &v.own)));
            v.tx.send_if_modified(|current| {
                if next.same_as(current) {
                    false
                } else {
                    *current = next.clone();
                    true
                }
            });
        }
    }

    /// Drops views no proxy holds any more, and groups no view uses.
    fn forget_unsubscribed(&mut self) {
        let groups = &mut self.groups;
        self.views.retain(|_, v| {
            let keep = v.tx.receiver_count() > 0;
            if !keep {
                groups.leave(v.group);
            }
            keep
        });
        groups.sweep();
    }

    /// How many distinct groups the views share (for measurements).
    pub fn groups(&self) -> usize {
        self.groups.by_id.len()
    }
}

/// Publishes a recomputed view unless it holds what the current one does, sharing the types
/// that did not change so streams skip them by pointer.
fn publish(tx: &watch::Sender<Arc<View>>, mut next: View) {
    tx.send_if_modified(|current| {
        next.share_unchanged(current);
        if next.same_as(current) {
            false
        } else {
            *current = Arc::new(std::mem::take(&mut next));
            true
        }
    });
}

/// `reachable` plus `own`, as the key of a group: the group's own `Arc` when there is one.
fn with_own(
    reachable: Arc<BTreeSet<SvcKey>>,
    own: &SvcKey,
    groups: &Groups,
) -> Arc<BTreeSet<SvcKey>> {
    let services = if reachable.contains(own) {
        reachable
    } else {
        let mut s = (*reachable).clone();
        s.insert(own.clone());
        Arc::new(s)
    };
    groups.key(services)
}

fn assemble(
    global: &[Arc<TypeResources>; GLOBALS],
    group: Option<&[Arc<TypeResources>; 5]>,
    own: &[Arc<TypeResources>; 3],
) -> View {
    let mut types: Types = std::array::from_fn(|_| empty());
    for (slot, t) in GLOBAL_SLOTS.iter().zip(global) {
        types[*slot] = t.clone();
    }
    if let Some(group) = group {
        for (i, slot) in GROUP_SLOTS.iter().enumerate() {
            types[*slot] = group[i].clone();
        }
    }
    types[AUTHORIZATION_POLICY] = own[0].clone();
    types[REQUEST_AUTHENTICATION] = own[1].clone();
    types[RATE_LIMIT_POLICY] = own[2].clone();
    let mut view = View::new();
    for (url, t) in TYPE_URLS.iter().zip(types) {
        view.set_type(url.clone(), t);
    }
    view
}
