//! Compiles services into [`ServiceTarget`]s: endpoints (with the live state carried from the
//! previous snapshot), endpoint groups and their balancers, routing rules ([`super::rule`]), and
//! the DestinationPolicy's timeouts, limits, outlier detection, locality and TLS mode.
//!
//! A build compiles a list of services — every one for a full build, those an update touched for
//! an incremental one — in the same order with the same code, reading each service's inputs
//! through the [`Index`] (its workloads, Routes and policy), never by walking the mesh.
use super::index::{key_of, Index};
use super::rule;
use super::{BuildError, EndpointGroup, ServiceKey, ServiceTarget, Services};
use crate::balance::{Balancer, Endpoint, EndpointLoad};
use crate::resilience::{LimitState, Limits, Locality, OutlierPolicy, OutlierState};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use trellis_api::gateway_api::{compile_for_service, RouteRef};
use trellis_api::mesh::MtlsMode;
use trellis_api::policy::{DestinationPolicySpec, LoadBalancer};
use trellis_api::service::{Service, WorkloadHealth};
use trellis_api::{Resource, Workload};
use trellis_identity::SpiffeId;
use trellis_xds::resource::{DESTINATION_POLICY, GRPC_ROUTE, HTTP_ROUTE, ROUTE, SERVICE, WORKLOAD};
use trellis_xds::Resources;

/// Live state that outlives a snapshot: per-endpoint load and passive health (by address) and
/// per-service limit counters. Each snapshot takes over the previous one's, so balancing,
/// ejections, back-offs and requests in flight survive a reload. Persistent maps: a snapshot
/// that changed one service copies a path, not the mesh.
#[derive(Debug, Default, Clone)]
pub struct Carried {
    /// Every endpoint address some service of the snapshot has.
    pub endpoints: imbl::HashMap<SocketAddr, Live>,
    pub limit_states: imbl::HashMap<ServiceKey, Arc<LimitState>>,
}

/// One endpoint address's live state, and how many services have it.
#[derive(Debug, Clone)]
pub struct Live {
    pub load: Arc<EndpointLoad>,
    pub outlier: Arc<OutlierState>,
    services: u32,
}

/// Hands out each address's live state during one build: the previous snapshot's where it had
/// the address, else one fresh state per address, shared by every service that has it.
struct LiveStates<'a> {
    previous: Option<&'a Carried>,
    fresh: HashMap<SocketAddr, (Arc<EndpointLoad>, Arc<OutlierState>)>,
}

impl LiveStates<'_> {
    fn get(&mut self, addr: SocketAddr) -> (Arc<EndpointLoad>, Arc<OutlierState>) {
        if let Some(l) = self.previous.and_then(|p| p.endpoints.get(&addr)) {
            return (l.load.clone(), l.outlier.clone());
        }
        self.fresh
            .entry(addr)
            .or_insert_with(|| (Arc::new(EndpointLoad::new()), Arc::new(OutlierState::new())))
            .clone()
    }
}

/// What every service of one build reads.
pub(super) struct Inputs<'a> {
    pub resources: &'a Resources,
    pub index: &'a Index,
    pub zone: Option<&'a str>,
    pub mesh_mtls: MtlsMode,
}

/// Recompiles the services named in `affected` (xDS names; a name without a Service is removed)
/// into `services`, and moves `carried` along. `previous` lends live state; for a full build
/// `services` and `carried` start empty, for an incremental one as the previous snapshot's.
pub(super) fn recompile(
    affected: &BTreeSet<String>,
    inputs: &Inputs<'_>,
    previous: Option<&Carried>,
    services: &mut Services,
    carried: &mut Carried,
) -> Result<(), BuildError> {
    let mut live = LiveStates {
        previous,
        fresh: HashMap::new(),
    };
    // (old target, new target) of each affected service, compiled before anything moves.
    let mut compiled = Vec::with_capacity(affected.len());
    for name in affected {
        let key = key_of(name);
        let old = services.get(&key).cloned();
        let new = match inputs.resources.get(SERVICE, name).map(|r| &**r) {
            Some(Resource::Service(svc)) => {
                let limit = previous.and_then(|p| p.limit_states.get(&key));
                let mut target = service(svc, inputs, &mut live, limit)?;
                keep_rate_limits(&mut target, old.as_deref());
                Some(Arc::new(target))
            }
            _ => None,
        };
        compiled.push((key, old, new));
    }
    for (key, old, new) in compiled {
        let before = addresses(old.as_deref());
        let after = addresses(new.as_deref());
        for addr in after.difference(&before) {
            match carried.endpoints.get_mut(addr) {
                Some(l) => l.services += 1,
                None => {
                    let (load, outlier) = live.get(*addr);
                    let l = Live {
                        load,
                        outlier,
                        services: 1,
                    };
                    carried.endpoints.insert(*addr, l);
                }
            }
        }
        for addr in before.difference(&after) {
            if let Some(l) = carried.endpoints.get_mut(addr) {
                l.services = l.services.saturating_sub(1);
                if l.services == 0 {
                    carried.endpoints.remove(addr);
                }
            }
        }
        match new {
            Some(t) => {
                carried
                    .limit_states
                    .insert(key.clone(), t.limit_state.clone());
                services.insert(key, t);
            }
            None => {
                carried.limit_states.remove(&key);
                services.remove(&key);
            }
        }
    }
    Ok(())
}

/// Rules whose rate limit is unchanged (same place, name and limit) keep the previous
/// compilation's bucket, so an endpoint or policy change does not refill it.
fn keep_rate_limits(target: &mut ServiceTarget, old: Option<&ServiceTarget>) {
    let Some(old) = old else {
        return;
    };
    for (new, old) in target.rules.iter_mut().zip(&old.rules) {
        if let (Some(n), Some(o)) = (&new.rate_limit, &old.rate_limit) {
            if new.name == old.name && n.config() == o.config() {
                new.rate_limit = Some(o.clone());
            }
        }
    }
}

/// The distinct endpoint addresses of a service.
fn addresses(target: Option<&ServiceTarget>) -> BTreeSet<SocketAddr> {
    target
        .and_then(|t| t.groups.get(&None))
        .map(|g| g.endpoints.iter().map(|e| e.addr).collect())
        .unwrap_or_default()
}

/// The DestinationPolicy of a service: the last by name when several name it.
fn policy_of<'a>(inputs: &Inputs<'a>, key: &ServiceKey) -> Option<&'a DestinationPolicySpec> {
    let name = inputs.index.policies.of_service(key).last()?;
    match inputs.resources.get(DESTINATION_POLICY, name).map(|r| &**r) {
        Some(Resource::DestinationPolicy(p)) => Some(&p.spec),
        _ => None,
    }
}

/// One service as callers see it.
fn service(
    svc: &Service,
    inputs: &Inputs<'_>,
    live: &mut LiveStates<'_>,
    previous_limit: Option<&Arc<LimitState>>,
) -> Result<ServiceTarget, BuildError> {
    let key = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
    let policy = policy_of(inputs, &key);
    let endpoints = endpoints_of(&key, inputs, live)?;
    let pool = policy.and_then(|p| p.connection_pool.as_ref());
    let limits = Limits::from_config(pool);
    let limit_state = match previous_limit {
        Some(s) => {
            s.resize(&limits);
            s.clone()
        }
        None => LimitState::new(&limits),
    };
    let zone = inputs.zone;
    Ok(ServiceTarget {
        name: Arc::from(svc.metadata.name.as_str()),
        namespace: svc.metadata.namespace.clone(),
        ports: svc.spec.ports.clone(),
        rules: rules_of(svc, &key, inputs)?,
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
            inputs.mesh_mtls,
            policy
                .and_then(|p| p.tls.as_ref())
                .map(|t| t.mode)
                .unwrap_or_default(),
        ),
    })
}

/// The rules of every Route for `svc`, Routes in name order, or the default rule when none.
fn rules_of(
    svc: &Service,
    key: &ServiceKey,
    inputs: &Inputs<'_>,
) -> Result<Vec<super::Rule>, BuildError> {
    // In one namespace, so xDS name order is name order.
    let routes = inputs.index.routes.of_service(key).filter_map(|name| {
        match inputs.resources.get(ROUTE, name).map(|r| &**r) {
            Some(Resource::Route(r)) => Some(r),
            _ => None,
        }
    });
    let mut rules = Vec::new();
    for route in routes {
        rules.extend(super::compile_route(route)?);
    }
    // A Trellis Route wins over Gateway API routes for its service (docs/configuration.md).
    if rules.is_empty() {
        if let Some(route) = gateway_api_route(svc, key, inputs) {
            rules = super::compile_route(&route)?;
            // Routes scoped to some ports leave the others to the service's default rule (on a
            // port a route serves, a request no rule matches is answered 404, as the spec asks).
            if rules.iter().all(|r| !r.ports.is_empty()) {
                let served: BTreeSet<u16> = rules.iter().flat_map(|r| r.ports.clone()).collect();
                let rest: Vec<u16> = (svc.spec.ports.iter())
                    .map(|p| p.port)
                    .filter(|p| !served.contains(p))
                    .collect();
                if !rest.is_empty() {
                    let mut default = rule::default_for(svc);
                    default.ports = rest;
                    rules.push(default);
                }
            }
        }
    }
    if rules.is_empty() {
        rules.push(rule::default_for(svc));
    }
    Ok(rules)
}

/// The HTTPRoutes or GRPCRoutes attached to `svc`, compiled into one Trellis Route (named
/// after the kind applied, `httproute` or `grpcroute`), when any attach.
fn gateway_api_route(
    svc: &Service,
    key: &ServiceKey,
    inputs: &Inputs<'_>,
) -> Option<trellis_api::Route> {
    let routes = [
        (HTTP_ROUTE, &inputs.index.http_routes),
        (GRPC_ROUTE, &inputs.index.grpc_routes),
    ]
    .into_iter()
    .flat_map(|(url, att)| {
        att.of_service(key)
            .filter_map(move |name| inputs.resources.get(url, name))
    })
    .collect::<Vec<_>>();
    if routes.is_empty() {
        return None;
    }
    let compiled = compile_for_service(
        routes.iter().filter_map(|r| RouteRef::of(r)),
        &key.0,
        &key.1,
        |ns, name| {
            inputs
                .resources
                .get(SERVICE, &format!("{ns}/{name}"))
                .is_some()
        },
    );
    let kind = compiled.kind?;
    let mut metadata = trellis_api::ObjectMeta::new(kind.to_ascii_lowercase());
    metadata.namespace = svc.metadata.namespace.clone();
    Some(trellis_api::Route {
        metadata,
        spec: trellis_api::route::RouteSpec {
            service: svc.metadata.name.clone(),
            rules: compiled.rules,
        },
    })
}

/// The service's healthy workloads as endpoints, by address (workloads in name order first).
fn endpoints_of(
    key: &ServiceKey,
    inputs: &Inputs<'_>,
    live: &mut LiveStates<'_>,
) -> Result<Vec<Endpoint>, BuildError> {
    let mut out = Vec::new();
    let workloads = inputs.index.members(key).filter_map(|name| {
        match inputs.resources.get(WORKLOAD, name).map(|r| &**r) {
            Some(Resource::Workload(w)) => Some(w),
            _ => None,
        }
    });
    for w in workloads {
        let w: &Workload = w;
        if w.spec.health == WorkloadHealth::Unhealthy {
            continue;
        }
        let ip: IpAddr = w.spec.address.parse().map_err(|_| BuildError {
            resource: format!("Workload {}", w.metadata.name),
            field: "spec.address".into(),
            message: format!("{:?} is not an IP address", w.spec.address),
        })?;
        let addr = SocketAddr::new(ip, w.spec.port);
        let (load, outlier) = live.get(addr);
        // The workload's own `zone` label, if any, wins over its zone.
        let labels = (w.metadata.labels.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(w.spec.zone.as_deref().map(|z| ("zone", z)))
            .collect();
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
            workload: Arc::from(w.metadata.name.as_str()),
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
                    .all(|(k, v)| e.labels.get(k) == Some(v.as_str()))
            })
            .cloned()
            .collect();
        let lb = subset.load_balancer.as_ref().unwrap_or(lb);
        groups.insert(Some(subset.name.clone()), group(members, lb));
    }
    groups
}
