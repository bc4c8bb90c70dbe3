//! The compiled config as the request path sees it: one [`Snapshot`] per config version, built
//! whole or not at all, then read without locks (each request loads one `Arc` and keeps it), and
//! the lookups requests make on it (a service by name, by `Host`).
//!
//! A snapshot is built in full (the first config, a file, a MeshConfig change) or from the
//! previous snapshot and an update: then only the services the update touched are recompiled and
//! every other `Arc<ServiceTarget>` is the previous snapshot's. Both ways run the same code in the
//! same order, so they give the same snapshot and the same [`BuildError`].
use super::build::{self, Carried, Inputs};
use super::directory::Directory;
use super::external::ExternalTable;
use super::inbound::InboundPolicy;
use super::index::{key_of, Changed, Index};
use super::{BuildError, ServiceKey, ServiceName, ServiceTarget, Services};
use crate::settings::LocalIdentity;
use std::sync::Arc;
use trellis_api::mesh::MeshConfigSpec;
use trellis_api::policy::HealthCheck;
use trellis_api::Resource;
use trellis_xds::resource::{
    AUTHORIZATION_POLICY, DESTINATION_POLICY, EXTERNAL_SERVICE, MESH_CONFIG, RATE_LIMIT_POLICY,
    REQUEST_AUTHENTICATION, SERVICE, SERVICE_ADDRESS, TRUST_BUNDLE, WORKLOAD,
};
use trellis_xds::{Resources, TypeChange};

/// Everything one proxy needs to route, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    /// Where the config came from (a file path, or the control plane).
    pub source: String,
    /// The config's resources, shared with the xDS client's cache (not a copy): shown on
    /// `/config`, read by the DNS directory and by the next incremental build.
    pub resources: Resources,
    /// The mesh-wide settings (the MeshConfig, or defaults).
    pub mesh: MeshConfigSpec,
    /// The trust bundle's roots as one PEM text, when there is a bundle.
    pub trust_roots: Option<String>,
    /// The active health check the own service's DestinationPolicy asks for.
    pub health_check: Option<HealthCheck>,
    pub services: Services,
    /// Live per-endpoint load and passive health and per-service limit counters, carried from
    /// one snapshot to the next so a reload forgets none of them.
    pub carried: Carried,
    /// What guards this proxy's own service.
    pub inbound: Arc<InboundPolicy>,
    /// Mesh names and addresses to services, for the DNS answerer and captured connections.
    pub directory: Arc<Directory>,
    /// ExternalServices by host name.
    pub external: Arc<ExternalTable>,
    index: Index,
}

/// The workloads `key` selects per `index`, as `resources` holds them.
fn members<'a>(
    index: &'a Index,
    resources: &'a Resources,
    key: &ServiceKey,
) -> impl Iterator<Item = &'a trellis_api::Workload> + 'a {
    index
        .members(key)
        .filter_map(|name| match resources.get(WORKLOAD, name).map(|r| &**r) {
            Some(Resource::Workload(w)) => Some(w),
            _ => None,
        })
}

impl Snapshot {
    /// Compiles `resources` whole; `previous` lends its live state; `local` is who this proxy
    /// stands beside (its zone for locality preference, its service for inbound policy).
    pub fn build(
        version: u64,
        source: String,
        resources: impl Into<Resources>,
        previous: Option<&Snapshot>,
        local: &LocalIdentity,
    ) -> Result<Self, BuildError> {
        let resources = resources.into();
        let mesh = resources.mesh_config();
        let inbound = InboundPolicy::build(
            &resources,
            local,
            mesh.mtls.mode,
            previous.map(|p| &*p.inbound),
        )?;
        let mut index = Index::default();
        let affected = index.apply(
            &Resources::default(),
            &resources,
            &Changed::everything(&resources),
        );
        let mut services = Services::new();
        let mut carried = Carried::default();
        let inputs = Inputs {
            resources: &resources,
            index: &index,
            zone: local.zone.as_deref(),
            mesh_mtls: mesh.mtls.mode,
        };
        build::recompile(
            &affected,
            &inputs,
            previous.map(|p| &p.carried),
            &mut services,
            &mut carried,
        )?;
        let mut directory = Directory::default();
        directory.rename(&resources, &mesh.dns_domain, &local.namespace);
        for name in resources
            .type_map(SERVICE)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            let key = key_of(name);
            directory.add_service(&key, members(&index, &resources, &key));
        }
        Ok(Self {
            external: Arc::new(ExternalTable::build(&resources)?),
            directory: Arc::new(directory),
            version,
            source,
            trust_roots: trust_roots(&resources),
            health_check: health_check(&resources, &index, local),
            resources,
            mesh,
            services,
            carried,
            inbound: Arc::new(inbound),
            index,
        })
    }

    /// The snapshot after `changes` brought the config to `resources`, built from this one:
    /// only the services the changes touch are compiled again. A MeshConfig change (rare)
    /// rebuilds everything.
    pub fn update(
        &self,
        version: u64,
        source: String,
        resources: Resources,
        changes: &[TypeChange],
        local: &LocalIdentity,
    ) -> Result<Self, BuildError> {
        let changed = Changed::from_changes(changes);
        if changed.touches(MESH_CONFIG) {
            return Snapshot::build(version, source, resources, Some(self), local);
        }
        let own = format!("{}/{}", local.namespace, local.service);
        let inbound = if changed.touches(AUTHORIZATION_POLICY)
            || changed.touches(REQUEST_AUTHENTICATION)
            || changed.touches(RATE_LIMIT_POLICY)
            || changed.contains(SERVICE, &own)
        {
            Arc::new(InboundPolicy::build(
                &resources,
                local,
                self.mesh.mtls.mode,
                Some(&self.inbound),
            )?)
        } else {
            self.inbound.clone()
        };
        let mut index = self.index.clone();
        let affected = index.apply(&self.resources, &resources, &changed);
        let mut services = self.services.clone();
        let mut carried = self.carried.clone();
        let inputs = Inputs {
            resources: &resources,
            index: &index,
            zone: local.zone.as_deref(),
            mesh_mtls: self.mesh.mtls.mode,
        };
        build::recompile(
            &affected,
            &inputs,
            Some(&self.carried),
            &mut services,
            &mut carried,
        )?;
        let directory = if affected.is_empty() && !changed.touches(SERVICE_ADDRESS) {
            self.directory.clone()
        } else {
            let mut d = (*self.directory).clone();
            if changed.touches(SERVICE) || changed.touches(SERVICE_ADDRESS) {
                d.rename(&resources, &self.mesh.dns_domain, &local.namespace);
            }
            for name in &affected {
                let key = key_of(name);
                d.remove_service(&key, members(&self.index, &self.resources, &key));
                if resources.get(SERVICE, name).is_some() {
                    d.add_service(&key, members(&index, &resources, &key));
                }
            }
            Arc::new(d)
        };
        let external = if changed.touches(EXTERNAL_SERVICE) {
            Arc::new(ExternalTable::build(&resources)?)
        } else {
            self.external.clone()
        };
        Ok(Self {
            external,
            directory,
            version,
            source,
            trust_roots: if changed.touches(TRUST_BUNDLE) {
                trust_roots(&resources)
            } else {
                self.trust_roots.clone()
            },
            health_check: if changed.touches(DESTINATION_POLICY) {
                health_check(&resources, &index, local)
            } else {
                self.health_check.clone()
            },
            resources,
            mesh: self.mesh.clone(),
            services,
            carried,
            inbound,
            index,
        })
    }

    /// The workloads a service selects (healthy or not), in name order.
    pub fn members(&self, key: &ServiceKey) -> impl Iterator<Item = &trellis_api::Workload> + '_ {
        members(&self.index, &self.resources, key)
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceTarget>> {
        self.services.get(&(namespace, name) as &dyn ServiceName)
    }

    /// Resolves a `Host`/`:authority` to a service: `name`, `name.ns`, `name.ns.svc[.domain]`,
    /// with an optional `:port`. Unqualified names resolve in `default_ns`.
    pub fn resolve_host(
        &self,
        host: &str,
        default_ns: &str,
    ) -> Option<(&Arc<ServiceTarget>, Option<u16>)> {
        let (ns, svc, port) = host_service(host, default_ns)?;
        self.service(ns, svc).map(|s| (s, port))
    }
}

/// The service a `Host`/`:authority` would name, `(namespace, name, port)`, whether or not the
/// config has it (see [`Snapshot::resolve_host`]).
pub fn host_service<'a>(
    host: &'a str,
    default_ns: &'a str,
) -> Option<(&'a str, &'a str, Option<u16>)> {
    let (name, port) = split_host_port(host);
    let mut labels = name.split('.');
    let svc = labels.next().filter(|s| !s.is_empty())?;
    let ns = labels.next().unwrap_or(default_ns);
    Some((ns, svc, port))
}

fn trust_roots(resources: &Resources) -> Option<String> {
    resources.trust_bundles().next().map(|b| b.spec.roots_pem())
}

/// The own service's health check: from the first DestinationPolicy (by name) naming it.
fn health_check(
    resources: &Resources,
    index: &Index,
    local: &LocalIdentity,
) -> Option<HealthCheck> {
    let key = (local.namespace.clone(), local.service.clone());
    let name = index.policies.of_service(&key).next()?;
    match resources.get(DESTINATION_POLICY, name).map(|r| &**r) {
        Some(Resource::DestinationPolicy(p)) => p.spec.health_check.clone(),
        _ => None,
    }
}

/// Splits `host[:port]`, tolerating IPv6 literals in brackets.
pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (host, port);
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("reviews"), ("reviews", None));
        assert_eq!(split_host_port("reviews:9080"), ("reviews", Some(9080)));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("reviews:x"), ("reviews:x", None));
    }
}
