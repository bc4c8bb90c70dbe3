//! Lookups the views need, kept in step with the model change by change: what is attached to
//! each (namespace, service) — its routes, destination policies, authorization policies,
//! request authentications, rate limit policies, address and the workloads it selects — so a view is assembled from
//! the services it holds instead of scanning the mesh, and a change touches only its entries.
//!
//! Which workloads a service selects follows [`Service::selects`], the one rule; the label
//! indexes only narrow down the candidates it is asked about.
use crate::model::{Change, Model};
use crate::store::ResourceKey;
use std::collections::{BTreeSet, HashMap};
use trellis_api::{Resource, Service, Workload};

/// A service by (namespace, name).
pub type SvcKey = (String, String);

/// What belongs to one (namespace, service), by key.
#[derive(Debug, Default, Clone)]
pub struct Attached {
    pub routes: BTreeSet<ResourceKey>,
    pub destination_policies: BTreeSet<ResourceKey>,
    pub authorization_policies: BTreeSet<ResourceKey>,
    pub request_authentications: BTreeSet<ResourceKey>,
    pub rate_limit_policies: BTreeSet<ResourceKey>,
    pub addresses: BTreeSet<ResourceKey>,
    /// Workloads the service selects; empty while the Service does not exist.
    pub workloads: BTreeSet<ResourceKey>,
    /// HTTPRoutes and GRPCRoutes naming the service as a parent (their backends are in reach
    /// of its callers, as a Route's are).
    pub gateway_routes: BTreeSet<ResourceKey>,
}

impl Attached {
    fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.destination_policies.is_empty()
            && self.authorization_policies.is_empty()
            && self.request_authentications.is_empty()
            && self.rate_limit_policies.is_empty()
            && self.addresses.is_empty()
            && self.workloads.is_empty()
            && self.gateway_routes.is_empty()
    }
}

/// (namespace, label, value).
type Label = (String, String, String);

#[derive(Debug, Default)]
pub struct MeshIndex {
    by_service: HashMap<SvcKey, Attached>,
    /// Services with a selector, under the first pair of it (a service selecting a workload
    /// has that pair among the workload's labels).
    selectors: HashMap<Label, BTreeSet<String>>,
    /// Workloads under each of their labels.
    workloads_by_label: HashMap<Label, BTreeSet<ResourceKey>>,
    /// Workloads under the service their `spec.service` names.
    workloads_by_name: HashMap<SvcKey, BTreeSet<ResourceKey>>,
    /// The services selecting each workload (the reverse of `Attached::workloads`).
    selected_by: HashMap<ResourceKey, BTreeSet<SvcKey>>,
    /// Services with at least one AuthorizationPolicy: the only ones a proxy may be denied.
    policied: BTreeSet<SvcKey>,
}

static NOTHING: std::sync::LazyLock<Attached> = std::sync::LazyLock::new(Attached::default);

/// The key of a Service.
pub fn service_key(ns: &str, name: &str) -> ResourceKey {
    ResourceKey::new("Service", ns, name)
}

/// The Service stored under (namespace, name), if there is one.
pub fn service<'m>(model: &'m Model, key: &SvcKey) -> Option<&'m Service> {
    model.service(&key.0, &key.1)
}

/// The mesh services an HTTPRoute or GRPCRoute names as parents (see
/// [`trellis_api::gateway_api::service_parents`]).
pub fn gateway_parents(r: &Resource) -> Vec<SvcKey> {
    trellis_api::gateway_api::service_parents(r)
}

/// The services an HTTPRoute or GRPCRoute sends or mirrors to.
pub fn gateway_backends(r: &Resource) -> Vec<SvcKey> {
    trellis_api::gateway_api::service_backends(r)
}

/// The (namespace, service) a resource attaches to, for the kinds that attach to one.
pub fn attached_to(r: &Resource) -> Option<SvcKey> {
    let ns = &r.metadata().namespace;
    let svc = match r {
        Resource::Service(s) => &s.metadata.name,
        Resource::ServiceAddress(a) => &a.metadata.name,
        Resource::Route(x) => &x.spec.service,
        Resource::DestinationPolicy(p) => &p.spec.service,
        Resource::AuthorizationPolicy(p) => &p.spec.service,
        Resource::RequestAuthentication(p) => &p.spec.service,
        Resource::RateLimitPolicy(p) => &p.spec.service,
        _ => return None,
    };
    Some((ns.clone(), svc.clone()))
}

impl MeshIndex {
    pub fn build(model: &Model) -> Self {
        let mut index = MeshIndex::default();
        let changes: Vec<Change<'_>> = model
            .items
            .iter()
            .map(|(key, s)| Change {
                key,
                before: None,
                after: Some(s),
            })
            .collect();
        index.apply(model, &changes);
        index
    }

    /// What is attached to (namespace, service).
    pub fn attached(&self, key: &SvcKey) -> &Attached {
        self.by_service.get(key).unwrap_or(&NOTHING)
    }

    /// Services with at least one AuthorizationPolicy.
    pub fn policied(&self) -> &BTreeSet<SvcKey> {
        &self.policied
    }

    /// The services selecting a workload.
    pub fn selected_by(&self, workload: &ResourceKey) -> Option<&BTreeSet<SvcKey>> {
        self.selected_by.get(workload)
    }

    /// Takes in `changes` (the difference to `model` from the model the index was at). Returns
    /// the workloads whose selecting services changed.
    pub fn apply(&mut self, model: &Model, changes: &[Change<'_>]) -> BTreeSet<ResourceKey> {
        let mut recheck: BTreeSet<ResourceKey> = BTreeSet::new();
        let mut services: Vec<SvcKey> = Vec::new();
        for c in changes {
            if let Some(before) = c.before {
                self.unlink(&before.resource, c.key);
            }
            if let Some(after) = c.after {
                self.link(&after.resource, c.key);
            }
            match (c.before.map(|s| &s.resource), c.after.map(|s| &s.resource)) {
                (Some(Resource::Workload(_)), _) | (_, Some(Resource::Workload(_))) => {
                    recheck.insert(c.key.clone());
                }
                (Some(Resource::Service(_)), _) | (_, Some(Resource::Service(_))) => {
                    services.push((c.key.namespace.clone(), c.key.name.clone()));
                }
                _ => {}
            }
        }
        for svc in &services {
            recheck.extend(self.attached(svc).workloads.iter().cloned());
            recheck.extend(self.candidates_of(model, svc));
        }
        let mut moved = BTreeSet::new();
        for w in recheck {
            let now: BTreeSet<SvcKey> = match model.items.get(&w).map(|s| &s.resource) {
                Some(Resource::Workload(wl)) => self.selecting(model, wl),
                _ => BTreeSet::new(),
            };
            let was = self.selected_by.get(&w).cloned().unwrap_or_default();
            if was == now {
                continue;
            }
            for s in was.difference(&now) {
                if let Some(a) = self.by_service.get_mut(s) {
                    a.workloads.remove(&w);
                    if a.is_empty() {
                        self.by_service.remove(s);
                    }
                }
            }
            for s in now.difference(&was) {
                self.by_service
                    .entry(s.clone())
                    .or_default()
                    .workloads
                    .insert(w.clone());
            }
            if now.is_empty() {
                self.selected_by.remove(&w);
            } else {
                self.selected_by.insert(w.clone(), now);
            }
            moved.insert(w);
        }
        moved
    }

    /// Workloads the Service `svc` (as stored in `model`) may select, a superset of those it
    /// does.
    fn candidates_of(&self, model: &Model, svc: &SvcKey) -> Vec<ResourceKey> {
        let Some(service) = service(model, svc) else {
            return Vec::new();
        };
        let bucket = if service.spec.selector.is_empty() {
            self.workloads_by_name.get(svc)
        } else {
            service
                .spec
                .selector
                .iter()
                .map(|(k, v)| {
                    self.workloads_by_label
                        .get(&(svc.0.clone(), k.clone(), v.clone()))
                })
                .min_by_key(|b| b.map_or(0, |b| b.len()))
                .flatten()
        };
        bucket
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The stored services selecting `w`.
    fn selecting(&self, model: &Model, w: &Workload) -> BTreeSet<SvcKey> {
        let ns = &w.metadata.namespace;
        let mut names: BTreeSet<&String> = BTreeSet::new();
        if let Some(name) = &w.spec.service {
            names.insert(name);
        }
        for (k, v) in &w.metadata.labels {
            if let Some(found) = self.selectors.get(&(ns.clone(), k.clone(), v.clone())) {
                names.extend(found);
            }
        }
        names
            .into_iter()
            .map(|n| (ns.clone(), n.clone()))
            .filter(|key| service(model, key).is_some_and(|s| s.selects(w)))
            .collect()
    }

    fn link(&mut self, r: &Resource, key: &ResourceKey) {
        match r {
            Resource::Workload(w) => {
                let ns = &w.metadata.namespace;
                for (k, v) in &w.metadata.labels {
                    self.workloads_by_label
                        .entry((ns.clone(), k.clone(), v.clone()))
                        .or_default()
                        .insert(key.clone());
                }
                if let Some(svc) = &w.spec.service {
                    self.workloads_by_name
                        .entry((ns.clone(), svc.clone()))
                        .or_default()
                        .insert(key.clone());
                }
            }
            Resource::Service(s) => {
                if let Some((k, v)) = s.spec.selector.iter().next() {
                    self.selectors
                        .entry((s.metadata.namespace.clone(), k.clone(), v.clone()))
                        .or_default()
                        .insert(s.metadata.name.clone());
                }
            }
            _ => {
                for svc in gateway_parents(r) {
                    self.by_service
                        .entry(svc)
                        .or_default()
                        .gateway_routes
                        .insert(key.clone());
                }
                if let Some(svc) = attached_to(r) {
                    if matches!(r, Resource::AuthorizationPolicy(_)) {
                        self.policied.insert(svc.clone());
                    }
                    if let Some(set) = self.attached_set(r, svc) {
                        set.insert(key.clone());
                    }
                }
            }
        }
    }

    fn unlink(&mut self, r: &Resource, key: &ResourceKey) {
        match r {
            Resource::Workload(w) => {
                let ns = &w.metadata.namespace;
                for (k, v) in &w.metadata.labels {
                    remove_from(
                        &mut self.workloads_by_label,
                        &(ns.clone(), k.clone(), v.clone()),
                        key,
                    );
                }
                if let Some(svc) = &w.spec.service {
                    remove_from(&mut self.workloads_by_name, &(ns.clone(), svc.clone()), key);
                }
            }
            Resource::Service(s) => {
                if let Some((k, v)) = s.spec.selector.iter().next() {
                    remove_from(
                        &mut self.selectors,
                        &(s.metadata.namespace.clone(), k.clone(), v.clone()),
                        &s.metadata.name,
                    );
                }
            }
            _ => {
                for svc in gateway_parents(r) {
                    if let Some(a) = self.by_service.get_mut(&svc) {
                        a.gateway_routes.remove(key);
                        if a.is_empty() {
                            self.by_service.remove(&svc);
                        }
                    }
                }
                if let Some(svc) = attached_to(r) {
                    if let Some(set) = self.attached_set(r, svc.clone()) {
                        set.remove(key);
                    }
                    if self.attached(&svc).authorization_policies.is_empty() {
                        self.policied.remove(&svc);
                    }
                    if self.by_service.get(&svc).is_some_and(Attached::is_empty) {
                        self.by_service.remove(&svc);
                    }
                }
            }
        }
    }

    fn attached_set(&mut self, r: &Resource, svc: SvcKey) -> Option<&mut BTreeSet<ResourceKey>> {
        let a = self.by_service.entry(svc).or_default();
        match r {
            Resource::ServiceAddress(_) => Some(&mut a.addresses),
            Resource::Route(_) => Some(&mut a.routes),
            Resource::DestinationPolicy(_) => Some(&mut a.destination_policies),
            Resource::AuthorizationPolicy(_) => Some(&mut a.authorization_policies),
            Resource::RequestAuthentication(_) => Some(&mut a.request_authentications),
            Resource::RateLimitPolicy(_) => Some(&mut a.rate_limit_policies),
            _ => None,
        }
    }
}

fn remove_from<K, V>(map: &mut HashMap<K, BTreeSet<V>>, key: &K, value: &V)
where
    K: std::hash::Hash + Eq,
    V: Ord,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}
