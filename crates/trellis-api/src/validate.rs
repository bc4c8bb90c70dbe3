//! Semantic checks that types alone cannot express: ranges, references inside a resource,
//! regexes that compile, exactly-one-of fields, and, across a set, duplicate names and
//! references between resources.
//!
//! Checks return `(field path, message)` pairs with paths in the YAML's own spelling
//! (`spec.rules[0].backends[1].weight`); the parser adds file and document. Messages say what is
//! wrong and what is allowed.
use crate::duration::Duration;
use crate::parse::Resource;

mod checks;
mod external;
mod gateway;
mod mesh;
mod meta;
mod policy;
mod ratelimit;
mod route;
mod security;
mod service;
mod set;

pub(crate) use checks::dns_label_problem;
pub use checks::{is_dns_label, is_header_name, is_http_method, is_http_token};

/// Most tries a retry policy may ask for, the first included.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Conditions `retryOn` accepts.
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Largest request body a retry policy may buffer for replay (64 MiB).
pub const MAX_RETRY_BUFFER_BYTES: u64 = 64 * 1024 * 1024;

/// Most replicas one `Deployment` may start on a machine.
pub const MAX_REPLICAS: u32 = 64;

/// Shortest workload certificate lifetime a MeshConfig may ask for (1m).
pub const MIN_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(60);

/// Longest workload certificate lifetime a MeshConfig may ask for (90 days).
pub const MAX_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(2160 * 3600);

/// Problems in one resource.
pub fn resource(r: &Resource) -> Vec<(String, String)> {
    let mut p = checks::Problems::default();
    meta::check(&mut p, r.metadata());
    match r {
        Resource::Service(s) => service::service(&mut p, &s.spec),
        Resource::Workload(w) => service::workload(&mut p, &w.metadata, &w.spec),
        Resource::Route(rt) => route::check(&mut p, &rt.spec),
        Resource::DestinationPolicy(dp) => policy::check(&mut p, &dp.spec),
        Resource::AuthorizationPolicy(ap) => security::authorization(&mut p, &ap.spec),
        Resource::RequestAuthentication(ra) => security::authentication(&mut p, &ra.spec),
        Resource::RateLimitPolicy(rl) => ratelimit::policy(&mut p, &rl.spec),
        Resource::ExternalService(e) => external::check(&mut p, &e.spec),
        Resource::MeshConfig(m) => mesh::mesh_config(&mut p, &m.spec),
        Resource::Deployment(d) => mesh::deployment(&mut p, &d.metadata, &d.spec),
        Resource::TrustBundle(b) => mesh::trust_bundle(&mut p, &b.spec),
        Resource::CertificateAuthority(c) => mesh::certificate_authority(&mut p, &c.spec),
        Resource::ServiceAddress(a) => mesh::service_address(&mut p, &a.spec),
        Resource::HTTPRoute(r) => gateway::http_route(&mut p, &r.spec),
        Resource::GRPCRoute(r) => gateway::grpc_route(&mut p, &r.spec),
        Resource::TLSRoute(r) => gateway::tls_route(&mut p, &r.spec),
        Resource::Gateway(g) => gateway::gateway(&mut p, &g.spec),
    }
    p.into_vec()
}

/// Problems across a set: `(index into resources, field path, message)`. The path is empty for
/// problems with a resource as a whole.
pub fn set(resources: &[Resource]) -> Vec<(usize, String, String)> {
    set::check(resources)
}
