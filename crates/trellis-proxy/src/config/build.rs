//! Compiles a validated [`ResourceSet`]'s services into [`ServiceTarget`]s: endpoints (with the
//! live state carried from the previous snapshot), endpoint groups and their balancers, routing
//! rules ([`super::rule`]), and the DestinationPolicy's timeouts, limits, outlier detection,
//! locality and TLS mode.
use super::rule;
use super::{BuildError, EndpointGroup, ServiceTarget, Services};
use crate::balance::{Balancer, Endpoint, EndpointLoad};
use crate::resilience::{LimitState, Limits, Locality, OutlierPolicy, OutlierState};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use trellis_api::mesh::MtlsMode;
use trellis_api::policy::{DestinationPolicySpec, LoadBalancer};
use trellis_api::service::{Service, WorkloadHealth};
use trellis_api::{ResourceSet, Route};
use trellis_identity::SpiffeId;

/// Live state that outlives a snapshot: per-endpoint load and passive health (by address) and
/// per-service limit counters. Each snapshot takes over the previous one's, so balancing,
/// ejections, back-offs and requests in flight survive a reload.
#[derive(Debug, Default)]
pub struct Carried {
    pub loads: HashMap<SocketAddr, Arc<EndpointLoad>>,
    pub outliers: HashMap<SocketAddr, Arc<OutlierState>>,
    pub limit_states: HashMap<(String, String), Arc<LimitState>>,
}

/// Every service of `resources`, by namespace and name, and the live state they use, taken over
/// from `previous` where it has it.
pub(super) fn services(
    resources: &ResourceSet,
    previous: Option<&Carried>,
    zone: Option<&str>,
    mesh_mtls: MtlsMode,
) -> Result<(Services, Carried), BuildError> {
    let policies: HashMap<(String, String), &DestinationPolicySpec> = resources
        .destination_policies()
        .map(|p| {
            (
                (p.metadata.namespace.clone(), p.spec.service.clone()),
                &p.spec,
            )
        })
        .collect();
    let mut carried = Carried::default();
    let mut services = HashMap::new();
    for svc in resources.services() {
        let key = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
        let policy = policies.get(&key).copied();
        let target = service(
            svc,
            resources,
            policy,
            previous,
            &mut carried,
            zone,
            mesh_mtls,
        )?;
        services.insert(key, Arc::new(target));
    }
    Ok((services, carried))
}

/// One service as callers see it.
fn service(
    svc: &Service,
    resources: &ResourceSet,
    policy: Option<&DestinationPolicySpec>,
    previous: Option<&Carried>,
    carried: &mut Carried,
    zone: Option<&str>,
    mesh_mtls: MtlsMode,
) -> Result<ServiceTarget, BuildError> {
    let endpoints = endpoints_of(svc, resources, previous, carried)?;
    let pool = policy.and_then(|p| p.connection_pool.as_ref());
    let limits = Limits::from_config(pool);
    let key = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
    let limit_state = match previous.and_then(|p| p.limit_states.get(&key)) {
        Some(s) => {
            s.resize(&limits);
            s.clone()
        }
        None => LimitState::new(&limits),
    };
    carried.limit_states.insert(key, limit_state.clone());
    Ok(ServiceTarget {
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        ports: svc.spec.ports.clone(),
        rules: rules_of(svc, resources)?,
        groups: groups_of(&endpoints, policy),
        connect_timeout: pool.and_then(|c| c.connect_timeout).map(|d| d.as_std()),
        outlier: policy
            .and_then(|p| p.outlier_detection.as_ref())
            .map(OutlierPolicy::from_config),
        limits,
        limit_state,
        locality: zone
            .map(|z| Locality::new(z.to_string(), policy.and_then(|p| p.locality.as_ref()))),
        mtls: trellis_identity::tls::outbound_uses_tls(
            mesh_mtls,
            policy
                .and_then(|p| p.tls.as_ref())
                .map(|t| t.mode)
                .unwrap_or_default(),
        ),
    })
}

/// The rules of every Route for `svc`, Routes in name order, or the default rule when none.
fn rules_of(svc: &Service, resources: &ResourceSet) -> Result<Vec<super::Rule>, BuildError> {
    let mut routes: Vec<&Route> = resources
        .routes()
        .filter(|r| {
            r.metadata.namespace == svc.metadata.namespace && r.spec.service == svc.metadata.name
        })
        .collect();
    routes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules = Vec::new();
    for route in routes {
        for (i, r) in route.spec.rules.iter().enumerate() {
            rules.push(rule::compile(route, i, r)?);
        }
    }
    if rules.is_empty() {
        rules.push(rule::default_for(svc));
    }
    Ok(rules)
}

fn endpoints_of(
    svc: &Service,
    resources: &ResourceSet,
    previous: Option<&Carried>,
    carried: &mut Carried,
) -> Result<Vec<Endpoint>, BuildError> {
    let mut out = Vec::new();
    for w in resources.workloads() {
        if !svc.selects(w) || w.spec.health == WorkloadHealth::Unhealthy {
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
