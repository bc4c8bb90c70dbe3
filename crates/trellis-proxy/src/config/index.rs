//! Who depends on whom in a config, kept across snapshots so a change finds the services it
//! touches without walking the mesh: which services select each workload (and the reverse), the
//! workloads by label (to find a new selector's members), the services by their selector (to
//! find a new workload's services), and the Routes and DestinationPolicies of each service.
//!
//! Every map is persistent (`imbl`): the next snapshot's index is this one with a few paths
//! copied. A full build is the same code applied to an empty index with every resource changed,
//! so incremental and full builds cannot disagree about membership.
use super::ServiceKey;
use std::collections::{BTreeMap, BTreeSet};
use trellis_api::{Resource, Service, Workload};
use trellis_xds::resource::{DESTINATION_POLICY, GRPC_ROUTE, HTTP_ROUTE, ROUTE, SERVICE, WORKLOAD};
use trellis_xds::Resources;

/// `(namespace, label, value)`.
type LabelKey = (String, String, String);
type Names = imbl::OrdSet<String>;

/// The names of the resources an update added, changed or removed, by type URL.
#[derive(Debug, Default)]
pub struct Changed(BTreeMap<String, BTreeSet<String>>);

impl Changed {
    pub fn of(&self, type_url: &str) -> impl Iterator<Item = &String> + '_ {
        self.0.get(type_url).into_iter().flatten()
    }

    pub fn touches(&self, type_url: &str) -> bool {
        self.0.get(type_url).is_some_and(|n| !n.is_empty())
    }

    pub fn contains(&self, type_url: &str, name: &str) -> bool {
        self.0.get(type_url).is_some_and(|n| n.contains(name))
    }

    pub fn add(&mut self, type_url: &str, name: String) {
        self.0.entry(type_url.to_string()).or_default().insert(name);
    }

    /// Every resource of `resources`, as if all were new.
    pub fn everything(resources: &Resources) -> Self {
        let mut c = Changed::default();
        for t in [
            SERVICE,
            WORKLOAD,
            ROUTE,
            DESTINATION_POLICY,
            HTTP_ROUTE,
            GRPC_ROUTE,
        ] {
            if let Some(m) = resources.type_map(t) {
                c.0.insert(t.to_string(), m.keys().cloned().collect());
            }
        }
        c
    }

    /// From the xDS client's per-type changes.
    pub fn from_changes(changes: &[trellis_xds::TypeChange]) -> Self {
        let mut c = Changed::default();
        for tc in changes {
            for n in tc.updated.iter().chain(&tc.removed) {
                c.add(&tc.type_url, n.clone());
            }
        }
        c
    }
}

/// The `(namespace, name)` of a service's xDS name `namespace/name`.
pub fn key_of(name: &str) -> ServiceKey {
    match name.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => (String::new(), name.to_string()),
    }
}

/// The xDS name of a service key.
pub fn name_of(key: &ServiceKey) -> String {
    format!("{}/{}", key.0, key.1)
}

/// Resources (Routes, DestinationPolicies) that each name one service.
#[derive(Debug, Clone, Default)]
pub struct Attachments {
    of: imbl::HashMap<String, ServiceKey>,
    by: imbl::HashMap<ServiceKey, Names>,
}

impl Attachments {
    /// Attaches `name` to `to` (or detaches it); returns the services touched, before and after.
    fn set(&mut self, name: &str, to: Option<ServiceKey>) -> Vec<ServiceKey> {
        let mut touched = Vec::new();
        if let Some(old) = self.of.remove(name) {
            if let Some(names) = self.by.get_mut(&old) {
                names.remove(name);
                if names.is_empty() {
                    self.by.remove(&old);
                }
            }
            touched.push(old);
        }
        if let Some(new) = to {
            self.of.insert(name.to_string(), new.clone());
            self.by
                .entry(new.clone())
                .or_default()
                .insert(name.to_string());
            touched.push(new);
        }
        touched
    }

    /// The names attached to `key`, in name order.
    pub fn of_service(&self, key: &ServiceKey) -> impl Iterator<Item = &String> + '_ {
        self.by.get(key).into_iter().flat_map(|n| n.iter())
    }
}

/// Gateway API routes (HTTPRoutes or GRPCRoutes), each attached to every mesh service it names
/// as a parent (a core `Service` in the route's own namespace).
#[derive(Debug, Clone, Default)]
pub struct MultiAttachments {
    of: imbl::HashMap<String, Vec<ServiceKey>>,
    by: imbl::HashMap<ServiceKey, Names>,
}

impl MultiAttachments {
    /// Attaches `name` to `to` (none: detaches it); returns the services touched, before and
    /// after.
    fn set(&mut self, name: &str, to: Vec<ServiceKey>) -> Vec<ServiceKey> {
        let mut touched = Vec::new();
        if let Some(old) = self.of.remove(name) {
            for k in old {
                remove_from(&mut self.by, &k, &name.to_string());
                touched.push(k);
            }
        }
        for k in &to {
            self.by
                .entry(k.clone())
                .or_default()
                .insert(name.to_string());
            touched.push(k.clone());
        }
        if !to.is_empty() {
            self.of.insert(name.to_string(), to);
        }
        touched
    }

    /// The names attached to `key`, in name order.
    pub fn of_service(&self, key: &ServiceKey) -> impl Iterator<Item = &String> + '_ {
        self.by.get(key).into_iter().flat_map(|n| n.iter())
    }

    /// Every service some route is attached to.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> + '_ {
        self.by.keys()
    }
}

/// The mesh services a Gateway API route names as parents.
fn route_parents(r: Option<&Resource>) -> Vec<ServiceKey> {
    r.map(trellis_api::gateway_api::service_parents)
        .unwrap_or_default()
}

#[derive(Debug, Clone, Default)]
pub struct Index {
    /// Workload → the services that select it, in key order.
    workload_services: imbl::HashMap<String, Vec<ServiceKey>>,
    /// Service → the workloads it selects, in name order.
    service_workloads: imbl::HashMap<ServiceKey, Names>,
    workloads_by_label: imbl::HashMap<LabelKey, Names>,
    /// Workloads by `(namespace, spec.service)`, for services without a selector.
    workloads_by_service_field: imbl::HashMap<ServiceKey, Names>,
    /// Services with a selector, by the first `(label, value)` of their selector.
    selectors: imbl::HashMap<LabelKey, imbl::OrdSet<ServiceKey>>,
    pub routes: Attachments,
    pub policies: Attachments,
    pub http_routes: MultiAttachments,
    pub grpc_routes: MultiAttachments,
}

fn service<'a>(r: &'a Resources, name: &str) -> Option<&'a Service> {
    match r.get(SERVICE, name).map(|r| &**r) {
        Some(Resource::Service(s)) => Some(s),
        _ => None,
    }
}

fn workload<'a>(r: &'a Resources, name: &str) -> Option<&'a Workload> {
    match r.get(WORKLOAD, name).map(|r| &**r) {
        Some(Resource::Workload(w)) => Some(w),
        _ => None,
    }
}

fn selector_key(s: &Service) -> Option<LabelKey> {
    s.spec
        .selector
        .iter()
        .next()
        .map(|(k, v)| (s.metadata.namespace.clone(), k.clone(), v.clone()))
}

fn remove_from<K: std::hash::Hash + Eq + Clone, V: Ord + Clone>(
    map: &mut imbl::HashMap<K, imbl::OrdSet<V>>,
    key: &K,
    value: &V,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Index {
    /// The workloads `key` selects, in name order.
    pub fn members(&self, key: &ServiceKey) -> impl Iterator<Item = &String> + '_ {
        self.service_workloads
            .get(key)
            .into_iter()
            .flat_map(|n| n.iter())
    }

    /// Brings the index from `old` to `new`, whose differences are `changed`; returns the
    /// services (by xDS name) whose inputs changed.
    pub fn apply(
        &mut self,
        old: &Resources,
        new: &Resources,
        changed: &Changed,
    ) -> BTreeSet<String> {
        let mut affected = BTreeSet::new();
        for name in changed.of(WORKLOAD) {
            if let Some(w) = workload(old, name) {
                self.unindex_workload(name, w);
            }
            if let Some(w) = workload(new, name) {
                self.index_workload(name, w);
            }
        }
        for name in changed.of(SERVICE) {
            if let Some(s) = service(old, name) {
                if let Some(k) = selector_key(s) {
                    remove_from(&mut self.selectors, &k, &key_of(name));
                }
            }
            if let Some(s) = service(new, name) {
                if let Some(k) = selector_key(s) {
                    self.selectors.entry(k).or_default().insert(key_of(name));
                }
            }
        }
        // Members of changed services, with the workloads as they are now.
        for name in changed.of(SERVICE) {
            let key = key_of(name);
            let members = match service(new, name) {
                Some(s) => self.members_of(s, new),
                None => Names::new(),
            };
            let before = self
                .service_workloads
                .get(&key)
                .cloned()
                .unwrap_or_default();
            for w in before.iter().filter(|w| !members.contains(*w)) {
                self.unlink(w, &key);
            }
            for w in members.iter().filter(|w| !before.contains(*w)) {
                self.link(w, &key);
            }
            if members.is_empty() {
                self.service_workloads.remove(&key);
            } else {
                self.service_workloads.insert(key, members);
            }
            affected.insert(name.clone());
        }
        // Services of changed workloads, with the services as they are now.
        for name in changed.of(WORKLOAD) {
            let before = self
                .workload_services
                .get(name)
                .cloned()
                .unwrap_or_default();
            let after = match workload(new, name) {
                Some(w) => self.services_of(w, new),
                None => Vec::new(),
            };
            for key in before.iter().filter(|k| !after.contains(k)) {
                remove_from(&mut self.service_workloads, key, name);
            }
            for key in after.iter().filter(|k| !before.contains(k)) {
                self.service_workloads
                    .entry(key.clone())
                    .or_default()
                    .insert(name.clone());
            }
            affected.extend(before.iter().chain(&after).map(name_of));
            if after.is_empty() {
                self.workload_services.remove(name);
            } else {
                self.workload_services.insert(name.clone(), after);
            }
        }
        for name in changed.of(ROUTE) {
            let to = match new.get(ROUTE, name).map(|r| &**r) {
                Some(Resource::Route(r)) => {
                    Some((r.metadata.namespace.clone(), r.spec.service.clone()))
                }
                _ => None,
            };
            affected.extend(self.routes.set(name, to).iter().map(name_of));
        }
        for name in changed.of(DESTINATION_POLICY) {
            let to = match new.get(DESTINATION_POLICY, name).map(|r| &**r) {
                Some(Resource::DestinationPolicy(p)) => {
                    Some((p.metadata.namespace.clone(), p.spec.service.clone()))
                }
                _ => None,
            };
            affected.extend(self.policies.set(name, to).iter().map(name_of));
        }
        for name in changed.of(HTTP_ROUTE) {
            let to = route_parents(new.get(HTTP_ROUTE, name).map(|r| &**r));
            affected.extend(self.http_routes.set(name, to).iter().map(name_of));
        }
        for name in changed.of(GRPC_ROUTE) {
            let to = route_parents(new.get(GRPC_ROUTE, name).map(|r| &**r));
            affected.extend(self.grpc_routes.set(name, to).iter().map(name_of));
        }
        // A Gateway API route's backends are checked for existence when it is compiled (a
        // missing one answers 500), so a Service change recompiles every service such routes
        // steer. Services change rarely; workloads, which change often, do not do this.
        if changed.touches(SERVICE) {
            let steered = self
                .http_routes
                .services()
                .chain(self.grpc_routes.services());
            affected.extend(steered.map(name_of));
        }
        affected
    }

    fn index_workload(&mut self, name: &str, w: &Workload) {
        let ns = &w.metadata.namespace;
        for (k, v) in &w.metadata.labels {
            self.workloads_by_label
                .entry((ns.clone(), k.clone(), v.clone()))
                .or_default()
                .insert(name.to_string());
        }
        if let Some(s) = &w.spec.service {
            self.workloads_by_service_field
                .entry((ns.clone(), s.clone()))
                .or_default()
                .insert(name.to_string());
        }
    }

    fn unindex_workload(&mut self, name: &str, w: &Workload) {
        let ns = &w.metadata.namespace;
        let name = name.to_string();
        for (k, v) in &w.metadata.labels {
            remove_from(
                &mut self.workloads_by_label,
                &(ns.clone(), k.clone(), v.clone()),
                &name,
            );
        }
        if let Some(s) = &w.spec.service {
            remove_from(
                &mut self.workloads_by_service_field,
                &(ns.clone(), s.clone()),
                &name,
            );
        }
    }

    /// The workloads of `new` that `s` selects.
    fn members_of(&self, s: &Service, new: &Resources) -> Names {
        let candidates = match selector_key(s) {
            Some(k) => self.workloads_by_label.get(&k),
            None => self
                .workloads_by_service_field
                .get(&(s.metadata.namespace.clone(), s.metadata.name.clone())),
        };
        candidates
            .into_iter()
            .flat_map(|n| n.iter())
            .filter(|n| workload(new, n).is_some_and(|w| s.selects(w)))
            .cloned()
            .collect()
    }

    /// The services of `new` that select `w`, in key order.
    fn services_of(&self, w: &Workload, new: &Resources) -> Vec<ServiceKey> {
        let ns = &w.metadata.namespace;
        let mut keys: BTreeSet<ServiceKey> = BTreeSet::new();
        for (k, v) in &w.metadata.labels {
            if let Some(set) = self.selectors.get(&(ns.clone(), k.clone(), v.clone())) {
                keys.extend(set.iter().cloned());
            }
        }
        if let Some(s) = &w.spec.service {
            keys.insert((ns.clone(), s.clone()));
        }
        keys.into_iter()
            .filter(|k| service(new, &name_of(k)).is_some_and(|s| s.selects(w)))
            .collect()
    }

    fn link(&mut self, workload: &str, key: &ServiceKey) {
        let services = self
            .workload_services
            .entry(workload.to_string())
            .or_default();
        if let Err(at) = services.binary_search(key) {
            services.insert(at, key.clone());
        }
    }

    fn unlink(&mut self, workload: &str, key: &ServiceKey) {
        if let Some(services) = self.workload_services.get_mut(workload) {
            services.retain(|k| k != key);
            if services.is_empty() {
                self.workload_services.remove(workload);
            }
        }
    }
}
