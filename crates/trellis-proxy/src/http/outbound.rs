//! The outbound side: a request from the local app, matched to a service (by `Host`, or fixed by
//! a per-upstream port), routed by the service's rules, subjected to faults, rewritten, and
//! forwarded.
use super::forward::{forward, name_workload, Chosen, Target};
use super::headers::{
    admit_upgrade, authority, is_upgrade, rewrite_path, set_path_and_query, strip_hop_by_hop,
};
use super::upgrade::forward_upgrade;
use super::{record, Caller, Outcome};
use crate::access_log::counting;
use crate::body::{self, Body};
use crate::config::{
    host_service, split_host_port, ExternalTarget, Fault, FaultAbort, Rule, ServiceTarget, Snapshot,
};
use crate::error::{ProxyError, Reason, Shape};
use crate::metrics::no_label;
use crate::ondemand;
use crate::resilience;
use crate::retry::Failure;
use crate::state::ProxyState;
use crate::upstream::{feedback, pick, Ended, Wire};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use trellis_api::external::ExternalProtocol;
use trellis_api::mesh::OutboundMode;

/// A listener bound to one upstream service (Consul-style local port) instead of `Host` routing.
#[derive(Debug, Clone)]
pub struct FixedTarget {
    pub namespace: String,
    pub service: String,
    pub port: Option<u16>,
}

pub async fn handle(
    state: Arc<ProxyState>,
    fixed: Option<Arc<FixedTarget>>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let shape = Shape::of(req.headers());
    let began = {
        let snap = state.snapshot.load();
        let telemetry = snap.as_ref().map(|s| &s.mesh.telemetry);
        super::begin(&state, telemetry, "outbound", peer, None, &mut req)
    };
    let outcome = route(&state, fixed.as_deref(), peer, req, shape).await;
    if let Some(reason) = outcome.reason {
        tracing::debug!(service = %outcome.service, route = %outcome.route, reason = reason.as_str(), "proxy answered");
    }
    let caller = Caller {
        identity: state.local_source(),
        workload: state.workload_label(),
    };
    Ok(record(
        &state.metrics,
        "outbound",
        caller,
        outcome,
        start,
        began,
    ))
}

async fn route(
    state: &Arc<ProxyState>,
    fixed: Option<&FixedTarget>,
    peer: SocketAddr,
    req: Request<Incoming>,
    shape: Shape,
) -> Outcome {
    let Some(mut snapshot) = state.snapshot.load_full() else {
        return Outcome::error(
            ProxyError::new(Reason::NotReady, "the proxy has no config yet"),
            shape,
            no_label(),
            no_label(),
        );
    };
    let (svc, port) = match resolve(state, &snapshot, fixed, &req) {
        Ok(found) => found,
        // Not a mesh service: an ExternalService host, or (on a proxy that discovers on
        // demand) perhaps a service not discovered yet.
        Err(e) => {
            if fixed.is_none() {
                if let Some(host) = destination(&req) {
                    if let Some((target, port, protocol)) = snapshot.external.find(&host) {
                        let target = target.clone();
                        return external(&target, &host, port, protocol, req, shape).await;
                    }
                }
            }
            match discover(state, fixed, &req).await {
                Ok(Some(discovered)) => {
                    snapshot = discovered;
                    match resolve(state, &snapshot, fixed, &req) {
                        Ok(found) => found,
                        Err(e) => {
                            let e = refuse_unknown(state, &snapshot, fixed, &req, e);
                            return Outcome::error(e, shape, no_label(), no_label());
                        }
                    }
                }
                Ok(None) => {
                    let e = refuse_unknown(state, &snapshot, fixed, &req, e);
                    return Outcome::error(e, shape, no_label(), no_label());
                }
                Err(timeout) => return Outcome::error(timeout, shape, no_label(), no_label()),
            }
        }
    };
    let service = svc.name.clone();
    let first_port = svc.ports.first().map(|p| p.port);
    let Some((rule, matched)) = svc
        .rules
        .iter()
        .filter(|r| r.serves_port(port, first_port))
        .find_map(|r| r.matching(&req).map(|m| (r, m)))
    else {
        let e = ProxyError::new(
            Reason::NoRoute,
            format!(
                "no rule of service {} matches {} {}",
                svc.name,
                req.method(),
                req.uri().path()
            ),
        );
        return Outcome::error(e, shape, service, no_label());
    };
    serve_rule(
        state, &snapshot, &svc, port, rule, matched, peer, req, shape,
    )
    .await
}

/// Serves a request `rule` matched (at match `matched`): rate limit, fault, rewrite, headers,
/// and forwarding with retries to the rule's backends. `svc` is the destination: its port
/// `port` decides the protocol of the next hop, and its name labels the request. The sidecar's
/// outbound side and the gateway ([`crate::gateway`]) both end here.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_rule(
    state: &Arc<ProxyState>,
    snapshot: &Arc<Snapshot>,
    svc: &ServiceTarget,
    port: Option<u16>,
    rule: &Rule,
    matched: usize,
    peer: SocketAddr,
    req: Request<Incoming>,
    shape: Shape,
) -> Outcome {
    let service = svc.name.clone();
    if let Some(limit) = &rule.rate_limit {
        if let Err(e) = limit.check(&state.metrics, &service, &rule.name) {
            return Outcome::error(e, shape, service, rule.name.clone());
        }
    }
    let chosen = Chosen::default();
    let result = routed(
        state, snapshot, svc, port, rule, matched, peer, req, shape, &chosen,
    )
    .await;
    let (response, reason) = match result {
        Ok(mut rsp) => {
            if let Some(m) = &rule.response_headers {
                m.apply(rsp.headers_mut());
            }
            let reason = rsp.extensions().get::<Reason>().copied();
            (rsp, reason)
        }
        Err(e) => {
            let reason = e.reason;
            (e.into_response(shape), Some(reason))
        }
    };
    let subset = rule
        .backends
        .get(chosen.backend())
        .map_or_else(no_label, |b| b.subset_label.clone());
    let (destination_workload, mtls) = chosen.endpoint().unwrap_or_else(|| (no_label(), false));
    Outcome {
        response,
        service,
        route: rule.name.clone(),
        subset,
        destination_workload,
        mtls,
        reason,
    }
}

#[allow(clippy::too_many_arguments)]
async fn routed(
    state: &Arc<ProxyState>,
    snapshot: &Arc<Snapshot>,
    svc: &ServiceTarget,
    port: Option<u16>,
    rule: &Rule,
    matched: usize,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    shape: Shape,
    chosen: &Chosen,
) -> Result<Response<Body>, ProxyError> {
    // Rules that answer themselves (Gateway API's RequestRedirect, and a rule without a valid
    // backend), before anything else of the rule applies.
    if let Some(r) = &rule.redirect {
        return redirect(r, rule, matched, &req);
    }
    let direct = (rule.direct_response.as_ref()).filter(|d| d.applies(rule.total_weight));
    if let Some(d) = direct {
        let mut rsp = Response::new(body::full(d.body.clone()));
        *rsp.status_mut() = d.status;
        if !d.body.is_empty() {
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        return Ok(rsp);
    }
    if let Some(fault) = &rule.fault {
        if let Some(abort) = inject_fault(fault, &req, shape).await {
            return Ok(abort);
        }
    }
    let declared = svc.port(port);
    let upgrade = req.version() == Version::HTTP_11
        && is_upgrade(req.headers())
        && admit_upgrade(
            req.headers_mut(),
            declared.and_then(|p| p.upgrades.as_deref()),
        )?;
    strip_hop_by_hop(req.headers_mut(), upgrade);
    if let Some(m) = &rule.request_headers {
        m.apply(req.headers_mut());
    }
    apply_rewrite(rule, matched, &mut req)?;
    // The next hop (the peer's sidecar, or an endpoint outside the mesh) hears the version the
    // destination port declares; the peer's inbound side does the same towards its app.
    let protocol = declared.map(|p| p.protocol).unwrap_or_default();
    let wire = Wire::for_port(protocol, req.version());
    let traced = crate::trace::decide(
        &snapshot.mesh.telemetry,
        &state.identity.service,
        &state.tracer,
        req.headers(),
    );
    let target = Target {
        upstream: &state.upstreams,
        ctx: state.upstream_context(),
        snapshot,
        rule,
        service: &svc.name,
        wire,
        peer,
        trace: traced.as_ref(),
        chosen,
    };
    if upgrade {
        let backend = rule
            .backend(0)
            .ok_or_else(|| ProxyError::new(Reason::NoHealthyEndpoints, "route has no backend"))?;
        // The same pick as any request: ejection, zone preference and hashing apply; and the
        // same report, so a dead endpoint costs WebSocket callers what it costs any other.
        let picked = pick(snapshot, backend, Some(req.headers()), peer.ip(), None)?;
        let dial = picked.dial(&target.ctx);
        chosen.tried(&picked, &dial);
        name_workload(req.headers_mut(), &dial, target.ctx.workload);
        let mut in_flight = picked.start();
        let result = forward_upgrade(&state.upstreams, dial, req).await;
        let ended = match &result {
            Ok(rsp) => Ended::Answered(resilience::Outcome::of_response(
                rsp.status(),
                rsp.headers(),
            )),
            Err(e) if e.reason == Reason::ConnectFailed => Ended::Failed(Failure::ConnectFailed),
            Err(_) => Ended::Failed(Failure::Reset),
        };
        feedback::record(target.ctx.metrics, &picked, &mut in_flight, ended);
        return result;
    }
    forward(&target, counting(req.map(body::boxed))).await
}

/// A request to an ExternalService host: forwarded by [`super::external`], counted under the
/// ExternalService's name.
async fn external(
    target: &ExternalTarget,
    host: &str,
    port: u16,
    protocol: ExternalProtocol,
    req: Request<Incoming>,
    shape: Shape,
) -> Outcome {
    let (name, _) = split_host_port(host);
    let service = target.name.clone();
    match super::external::forward(target, name, port, protocol, req).await {
        Ok(response) => Outcome {
            response,
            service,
            route: no_label(),
            subset: no_label(),
            destination_workload: no_label(),
            mtls: false,
            reason: None,
        },
        Err(e) => Outcome::error(e, shape, service, no_label()),
    }
}

/// A `Host` that names no mesh service and no ExternalService: under a `RegistryOnly` outbound
/// policy, refused as egress (`502 egress-denied`, counted by host); otherwise `e` (`404
/// no-route`: the explicit port has no destination to pass it through to).
fn refuse_unknown(
    state: &ProxyState,
    snapshot: &Snapshot,
    fixed: Option<&FixedTarget>,
    req: &Request<Incoming>,
    e: ProxyError,
) -> ProxyError {
    if fixed.is_some()
        || e.reason != Reason::NoRoute
        || snapshot.mesh.outbound_traffic_policy.mode != OutboundMode::RegistryOnly
    {
        return e;
    }
    let host = destination(req).unwrap_or_default();
    let name = split_host_port(&host).0.to_ascii_lowercase();
    state.metrics.egress_denied_request(&name);
    if let Some(suppressed) = state.peer_log.allow() {
        tracing::warn!(host = %name, suppressed, "egress denied: the host is neither a mesh service nor an ExternalService and the outbound traffic policy is RegistryOnly");
    }
    ProxyError::new(
        Reason::EgressDenied,
        format!(
            "host {name:?} is neither a mesh service nor an ExternalService, and the MeshConfig's outboundTrafficPolicy is RegistryOnly"
        ),
    )
}

/// On a proxy that discovers on demand, the config after discovering the service the request
/// names; `Ok(None)` when there is nothing to discover (or no such service).
async fn discover(
    state: &ProxyState,
    fixed: Option<&FixedTarget>,
    req: &Request<Incoming>,
) -> Result<Option<Arc<Snapshot>>, ProxyError> {
    let Some(on_demand) = state.on_demand() else {
        return Ok(None);
    };
    let host;
    let (ns, name) = match fixed {
        Some(f) => (f.namespace.as_str(), f.service.as_str()),
        None => {
            host = destination(req).unwrap_or_default();
            match host_service(&host, &state.identity.namespace) {
                Some((ns, name, _)) => (ns, name),
                None => return Ok(None),
            }
        }
    };
    ondemand::discover(on_demand, &state.snapshot, ns, name).await
}

/// The request's `:authority`, or its `Host` header.
fn destination(req: &Request<Incoming>) -> Option<String> {
    authority(req).map(str::to_string)
}

/// Finds the destination service: fixed by the listener, or from `:authority` / `Host`.
fn resolve(
    state: &ProxyState,
    snapshot: &Snapshot,
    fixed: Option<&FixedTarget>,
    req: &Request<Incoming>,
) -> Result<(Arc<ServiceTarget>, Option<u16>), ProxyError> {
    if let Some(f) = fixed {
        return snapshot
            .service(&f.namespace, &f.service)
            .map(|s| (s.clone(), f.port))
            .ok_or_else(|| {
                ProxyError::new(
                    Reason::NoRoute,
                    format!("upstream service {} is not in the mesh config", f.service),
                )
            });
    }
    let host = destination(req).ok_or_else(|| {
        ProxyError::new(
            Reason::BadRequest,
            "the request names no destination (no Host header or :authority)",
        )
    })?;
    snapshot
        .resolve_host(&host, &state.identity.namespace)
        .map(|(s, p)| (s.clone(), p))
        .ok_or_else(|| {
            ProxyError::new(
                Reason::NoRoute,
                format!("no service in the mesh matches host {host:?}"),
            )
        })
}

fn apply_rewrite(
    rule: &Rule,
    matched: usize,
    req: &mut Request<Incoming>,
) -> Result<(), ProxyError> {
    let Some(rw) = &rule.rewrite else {
        return Ok(());
    };
    // At most one of the two (validation): `fullPath` replaces the whole path, `path` the
    // matched prefix (or the whole path after other matches).
    let new_path = match (&rw.full_path, &rw.path) {
        (Some(full), _) => Some(rewrite_path(req.uri(), None, full)),
        (None, Some(path)) => Some(rewrite_path(req.uri(), rule.matched_prefix(matched), path)),
        (None, None) => None,
    };
    if let Some(new) = new_path {
        let pq = new.parse().map_err(|_| {
            ProxyError::new(
                Reason::BadRequest,
                format!("rewritten path {new:?} is invalid"),
            )
        })?;
        set_path_and_query(req.uri_mut(), pq)
            .map_err(|e| ProxyError::new(Reason::BadRequest, format!("rewrite: {e}")))?;
    }
    if let Some(host) = &rw.host {
        req.headers_mut().insert(http::header::HOST, host.clone());
        if req.uri().authority().is_some() {
            let mut parts = req.uri().clone().into_parts();
            parts.authority = host.to_str().ok().and_then(|h| h.parse().ok());
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    Ok(())
}

/// The redirect a rule answers with: the request's scheme, host, port, path and query, with the
/// parts the rule sets replaced (Gateway API's `RequestRedirect` semantics: a `scheme` without
/// a `port` means that scheme's well-known port; 80 for http and 443 for https are left out).
fn redirect(
    r: &trellis_api::route::Redirect,
    rule: &Rule,
    matched: usize,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let (host, port) = split_host_port(authority(req).unwrap_or_default());
    let scheme = r
        .scheme
        .clone()
        .or_else(|| req.uri().scheme_str().map(str::to_string))
        .unwrap_or_else(|| "http".into());
    let host = r.hostname.as_deref().unwrap_or(host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => port,
    };
    let port = port.filter(|p| !matches!((scheme.as_str(), p), ("http", 80) | ("https", 443)));
    let path_and_query = match (&r.full_path, &r.prefix_path) {
        (Some(full), _) => rewrite_path(req.uri(), None, full),
        (None, Some(prefix)) => rewrite_path(req.uri(), rule.matched_prefix(matched), prefix),
        (None, None) => req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
    };
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{path_and_query}"),
        None => format!("{scheme}://{host}{path_and_query}"),
    };
    let location = http::HeaderValue::from_str(&location).map_err(|_| {
        ProxyError::new(
            Reason::BadRequest,
            format!("redirect location {location:?} is not a valid header value"),
        )
    })?;
    let status = http::StatusCode::from_u16(r.status_code).unwrap_or(http::StatusCode::FOUND);
    let mut rsp = Response::new(body::empty());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(http::header::LOCATION, location);
    Ok(rsp)
}

fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::random_range(0.0..100.0) < percent)
}

/// Delays and/or aborts as the rule's fault says; `Some` is the abort answer, shaped for the
/// caller (an HTTP abort reaches a gRPC caller as the gRPC status its HTTP status maps to; a gRPC
/// abort is always gRPC).
async fn inject_fault(
    fault: &Fault,
    req: &Request<Incoming>,
    shape: Shape,
) -> Option<Response<Body>> {
    if !fault
        .headers
        .iter()
        .all(|h| h.matches_headers(req.headers()))
    {
        return None;
    }
    if let Some((delay, percent)) = fault.delay {
        if roll(percent) {
            tokio::time::sleep(delay).await;
        }
    }
    let abort = |detail| ProxyError::new(Reason::FaultInjected, detail);
    match fault.abort {
        Some(FaultAbort::Http { status, percent }) if roll(percent) => Some(
            abort("abort injected by route fault policy")
                .with_status(status)
                .into_response(shape),
        ),
        Some(FaultAbort::Grpc { code, percent }) if roll(percent) => Some(
            abort("fault injected")
                .with_grpc_code(crate::grpc::Code::from_u32(code))
                .into_response(Shape::Grpc),
        ),
        _ => None,
    }
}
