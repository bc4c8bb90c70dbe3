//! The compiled config as the request path sees it: one [`Snapshot`] per config version, built
//! whole or not at all, then read without locks (each request loads one `Arc` and keeps it), and
//! the lookups requests make on it (a service by name, by `Host`).
use super::build::{self, Carried};
use super::inbound::InboundPolicy;
use super::{BuildError, ServiceTarget, Services};
use crate::settings::LocalIdentity;
use std::sync::Arc;
use trellis_api::ResourceSet;

/// Everything one proxy needs to route, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    /// Where the config came from (a file path, or the control plane).
    pub source: String,
    pub resources: ResourceSet,
    pub services: Services,
    /// Live per-endpoint load and passive health and per-service limit counters, carried from
    /// one snapshot to the next so a reload forgets none of them.
    pub carried: Carried,
    /// What guards this proxy's own service.
    pub inbound: InboundPolicy,
}

impl Snapshot {
    /// Compiles `resources`; `previous` lends its live state; `local` is who this proxy stands
    /// beside (its zone for locality preference, its service for inbound policy).
    pub fn build(
        version: u64,
        source: String,
        resources: ResourceSet,
        previous: Option<&Snapshot>,
        local: &LocalIdentity,
    ) -> Result<Self, BuildError> {
        let mesh_mtls = resources.mesh_config().mtls.mode;
        let inbound =
            InboundPolicy::build(&resources, local, mesh_mtls, previous.map(|p| &p.inbound))?;
        let (services, carried) = build::services(
            &resources,
            previous.map(|p| &p.carried),
            local.zone.as_deref(),
            mesh_mtls,
        )?;
        Ok(Self {
            version,
            source,
            resources,
            services,
            carried,
            inbound,
        })
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceTarget>> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Resolves a `Host`/`:authority` to a service: `name`, `name.ns`, `name.ns.svc[.domain]`,
    /// with an optional `:port`. Unqualified names resolve in `default_ns`.
    pub fn resolve_host(
        &self,
        host: &str,
        default_ns: &str,
    ) -> Option<(&Arc<ServiceTarget>, Option<u16>)> {
        let (name, port) = split_host_port(host);
        let mut labels = name.split('.');
        let svc = labels.next()?;
        let ns = labels.next().unwrap_or(default_ns);
        self.service(ns, svc).map(|s| (s, port))
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
