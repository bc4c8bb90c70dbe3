//! Compiles a validated [`ResourceSet`] into a [`Snapshot`].
use super::inbound::InboundPolicy;
use super::{
    BackendRef, EndpointGroup, Fault, FaultAbort, HeaderModifier, MirrorTarget, Rewrite,
    RouteMatcher, Rule, ServiceTarget, ValueMatcher, WeightedBackend,
};
use crate::balance::{Balancer, Endpoint, EndpointLoad};
use crate::resilience::{LimitState, Limits, Locality, OutlierPolicy, OutlierState};
use crate::retry::{RetryBudget, RetryPolicy};
use crate::settings::LocalIdentity;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use trellis_api::policy::{DestinationPolicySpec, LoadBalancer};
use trellis_api::route::RouteRule;
use trellis_api::service::{Service, WorkloadHealth};
use trellis_api::{ResourceSet, Route};
use trellis_identity::SpiffeId;

/// Why a resource set could not become a snapshot.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct BuildError {
    pub resource: String,
    pub field: String,
    pub message: String,
}

/// Everything one proxy needs to route, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    /// Where the config came from (a file path, or the control plane).
    pub source: String,
    pub resources: ResourceSet,
    pub services: HashMap<(String, String), Arc<ServiceTarget>>,
    /// Live per-endpoint load, carried across snapshots so balancing state survives reloads.
    pub loads: HashMap<SocketAddr, Arc<EndpointLoad>>,
    /// Per-endpoint outlier state, carried likewise so an ejection survives a reload.
    pub outliers: HashMap<SocketAddr, Arc<OutlierState>>,
    /// Per-service limit counters, carried likewise.
    pub limit_states: HashMap<(String, String), Arc<LimitState>>,
    /// What guards this proxy's own service.
    pub inbound: InboundPolicy,
}

/// Endpoint state carried from the previous snapshot into the next.
#[derive(Default)]
struct Carried {
    loads: HashMap<SocketAddr, Arc<EndpointLoad>>,
    outliers: HashMap<SocketAddr, Arc<OutlierState>>,
}

impl Snapshot {
    /// Compiles `resources`; `previous` lends its per-endpoint state; `local` is who this proxy
    /// stands beside (its zone for locality preference, its service for inbound policy).
    pub fn build(
        version: u64,
        source: String,
        resources: ResourceSet,
        previous: Option<&Snapshot>,
        local: &LocalIdentity,
    ) -> Result<Self, BuildError> {
        let zone = local.zone.as_deref();
        let mesh_mtls = resources.mesh_config().mtls.mode;
        let inbound =
            InboundPolicy::build(&resources, local, mesh_mtls, previous.map(|p| &p.inbound))?;
        let mut carried = Carried::default();
        let mut limit_states = HashMap::new();
        let policies: HashMap<(String, String), &DestinationPolicySpec> = resources
            .destination_policies()
            .map(|p| {
                (
                    (p.metadata.namespace.clone(), p.spec.service.clone()),
                    &p.spec,
                )
            })
            .collect();
        let mut services = HashMap::new();
        for svc in resources.services() {
            let key = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
            let policy = policies.get(&key).copied();
            let endpoints = endpoints_of(svc, &resources, previous, &mut carried)?;
            let groups = groups_of(&endpoints, policy);
            let mut routes: Vec<&Route> = resources
                .routes()
                .filter(|r| {
                    r.metadata.namespace == svc.metadata.namespace
                        && r.spec.service == svc.metadata.name
                })
                .collect();
            routes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let mut rules = Vec::new();
            for route in routes {
                for (i, rule) in route.spec.rules.iter().enumerate() {
                    rules.push(compile_rule(route, i, rule)?);
                }
            }
            if rules.is_empty() {
                rules.push(default_rule(svc));
            }
            let connect_timeout = policy
                .and_then(|p| p.connection_pool.as_ref())
                .and_then(|c| c.connect_timeout)
                .map(|d| d.as_std());
            let limits = Limits::from_config(policy.and_then(|p| p.connection_pool.as_ref()));
            let limit_state = match previous.and_then(|p| p.limit_states.get(&key)) {
                Some(s) => {
                    s.resize(&limits);
                    s.clone()
                }
                None => LimitState::new(&limits),
            };
            limit_states.insert(key.clone(), limit_state.clone());
            services.insert(
                key,
                Arc::new(ServiceTarget {
                    name: svc.metadata.name.clone(),
                    namespace: svc.metadata.namespace.clone(),
                    ports: svc.spec.ports.clone(),
                    rules,
                    groups,
                    connect_timeout,
                    outlier: policy
                        .and_then(|p| p.outlier_detection.as_ref())
                        .map(OutlierPolicy::from_config),
                    limits,
                    limit_state,
                    locality: zone.map(|z| {
                        Locality::new(z.to_string(), policy.and_then(|p| p.locality.as_ref()))
                    }),
                    mtls: trellis_identity::tls::outbound_uses_tls(
                        mesh_mtls,
                        policy
                            .and_then(|p| p.tls.as_ref())
                            .map(|t| t.mode)
                            .unwrap_or_default(),
                    ),
                }),
            );
        }
        Ok(Self {
            version,
            source,
            resources,
            services,
            loads: carried.loads,
            outliers: carried.outliers,
            limit_states,
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

fn endpoints_of(
    svc: &Service,
    resources: &ResourceSet,
    previous: Option<&Snapshot>,
    carried: &mut Carried,
) -> Result<Vec<Endpoint>, BuildError> {
    let mut out = Vec::new();
    for w in resources.workloads() {
        if w.metadata.namespace != svc.metadata.namespace {
            continue;
        }
        let selected = if svc.spec.selector.is_empty() {
            w.spec.service.as_deref() == Some(svc.metadata.name.as_str())
        } else {
            svc.spec
                .selector
                .iter()
                .all(|(k, v)| w.metadata.labels.get(k) == Some(v))
        };
        if !selected || w.spec.health == WorkloadHealth::Unhealthy {
            continue;
        }
        let ip: IpAddr = w.spec.address.parse().map_err(|_| BuildError {
            resource: format!("Workload {}", w.metadata.name),
            field: "spec.address".into(),
            message: format!("{:?} is not an IP address", w.spec.address),
        })?;
        let addr = SocketAddr::new(ip, w.spec.port);
        let outlier = carried
            .outliers
            .entry(addr)
            .or_insert_with(|| {
                previous
                    .and_then(|p| p.outliers.get(&addr).cloned())
                    .unwrap_or_else(|| Arc::new(OutlierState::new()))
            })
            .clone();
        let load = carried
            .loads
            .entry(addr)
            .or_insert_with(|| {
                previous
                    .and_then(|p| p.loads.get(&addr).cloned())
                    .unwrap_or_else(|| Arc::new(EndpointLoad::new()))
            })
            .clone();
        let mut labels: BTreeMap<String, String> = w.metadata.labels.clone();
        if let Some(zone) = &w.spec.zone {
            labels.entry("zone".into()).or_insert_with(|| zone.clone());
        }
        let identity = match &w.spec.identity {
            None => None,
            Some(id) => Some(Arc::new(SpiffeId::parse(id).map_err(|e| BuildError {
                resource: format!("Workload {}", w.metadata.name),
                field: "spec.identity".into(),
                message: format!("{id:?} is not an identity mTLS can check: {e}"),
            })?)),
        };
        out.push(Endpoint {
            addr,
            weight: w.spec.weight.unwrap_or(1).max(1),
            zone: w.spec.zone.clone(),
            labels,
            load,
            outlier,
            identity,
        });
    }
    out.sort_by_key(|e| e.addr);
    Ok(out)
}

fn group(endpoints: Vec<Endpoint>, lb: &LoadBalancer) -> Arc<EndpointGroup> {
    let balancer = Balancer::new(lb, &endpoints);
    Arc::new(EndpointGroup {
        endpoints,
        balancer,
        hash_on: lb.hash_on.clone(),
    })
}

fn groups_of(
    endpoints: &[Endpoint],
    policy: Option<&DestinationPolicySpec>,
) -> HashMap<Option<String>, Arc<EndpointGroup>> {
    let default_lb = LoadBalancer::default();
    let lb = policy
        .and_then(|p| p.load_balancer.as_ref())
        .unwrap_or(&default_lb);
    let mut groups = HashMap::new();
    groups.insert(None, group(endpoints.to_vec(), lb));
    for subset in policy.map(|p| p.subsets.as_slice()).unwrap_or_default() {
        let members = endpoints
            .iter()
            .filter(|e| {
                subset
                    .labels
                    .iter()
                    .all(|(k, v)| e.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        let lb = subset.load_balancer.as_ref().unwrap_or(lb);
        groups.insert(Some(subset.name.clone()), group(members, lb));
    }
    groups
}

fn default_rule(svc: &Service) -> Rule {
    Rule {
        name: "default".into(),
        matches: Vec::new(),
        backends: vec![WeightedBackend {
            backend: BackendRef {
                namespace: svc.metadata.namespace.clone(),
                service: svc.metadata.name.clone(),
                subset: None,
            },
            weight: 1,
        }],
        total_weight: 1,
        timeout: None,
        retry: None,
        budget: Arc::new(RetryBudget::unlimited()),
        fault: None,
        mirror: None,
        request_headers: None,
        response_headers: None,
        rewrite: None,
    }
}

fn compile_rule(route: &Route, index: usize, rule: &RouteRule) -> Result<Rule, BuildError> {
    let ns = &route.metadata.namespace;
    let err = |field: String, message: String| BuildError {
        resource: format!("Route {}", route.metadata.name),
        field: format!("spec.rules[{index}].{field}"),
        message,
    };
    let matches = rule
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| RouteMatcher::compile(m).map_err(|e| err(format!("matches[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let backends: Vec<WeightedBackend> = if rule.backends.is_empty() {
        vec![WeightedBackend {
            backend: BackendRef {
                namespace: ns.clone(),
                service: route.spec.service.clone(),
                subset: None,
            },
            weight: 1,
        }]
    } else {
        rule.backends
            .iter()
            .map(|b| WeightedBackend {
                backend: BackendRef {
                    namespace: ns.clone(),
                    service: b.service.clone(),
                    subset: b.subset.clone(),
                },
                weight: b.weight,
            })
            .collect()
    };
    let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
    let modifier = |m: &Option<trellis_api::route::HeaderModifier>, field: &str| {
        m.as_ref()
            .map(|m| HeaderModifier::compile(m).map_err(|e| err(field.into(), e)))
            .transpose()
    };
    let fault = match &rule.fault {
        None => None,
        Some(f) => Some(Fault {
            delay: f
                .delay
                .as_ref()
                .map(|d| (d.fixed_delay.as_std(), d.percent)),
            abort: f
                .abort
                .as_ref()
                .map(|a| match (a.grpc_status, a.http_status) {
                    (Some(code), _) => FaultAbort::Grpc {
                        code,
                        percent: a.percent,
                    },
                    (None, status) => FaultAbort::Http {
                        status: status
                            .and_then(|s| http::StatusCode::from_u16(s).ok())
                            .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                        percent: a.percent,
                    },
                }),
            headers: f
                .headers
                .iter()
                .map(|h| {
                    ValueMatcher::compile(h).map_err(|e| err("fault.headers".into(), e.to_string()))
                })
                .collect::<Result<_, _>>()?,
        }),
    };
    let rewrite = match &rule.rewrite {
        None => None,
        Some(r) => Some(Rewrite {
            path: r.path.clone(),
            host: r
                .host
                .as_deref()
                .map(|h| {
                    http::HeaderValue::from_str(h)
                        .map_err(|_| err("rewrite.host".into(), format!("invalid host {h:?}")))
                })
                .transpose()?,
        }),
    };
    let name = match &rule.name {
        Some(n) => format!("{}/{n}", route.metadata.name),
        None => route.metadata.name.clone(),
    };
    let budget = rule
        .retries
        .as_ref()
        .and_then(|r| r.budget.as_ref())
        .map(RetryBudget::from_config)
        .unwrap_or_else(RetryBudget::unlimited);
    Ok(Rule {
        name,
        matches,
        backends,
        total_weight,
        timeout: rule.timeout.map(|t| t.as_std()),
        retry: rule
            .retries
            .as_ref()
            .map(|r| Arc::new(RetryPolicy::from_config(r))),
        budget: Arc::new(budget),
        fault,
        mirror: rule.mirror.as_ref().map(|m| MirrorTarget {
            backend: BackendRef {
                namespace: ns.clone(),
                service: m.service.clone(),
                subset: m.subset.clone(),
            },
            percent: m.percent,
        }),
        request_headers: modifier(&rule.request_headers, "requestHeaders")?,
        response_headers: modifier(&rule.response_headers, "responseHeaders")?,
        rewrite,
    })
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
