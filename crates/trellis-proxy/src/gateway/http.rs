//! HTTP on a gateway port: the connection served by hyper (HTTP/1.1 with upgrades, or HTTP/2 by
//! ALPN or prior knowledge), and each request routed by its `Host` / `:authority` to the route
//! table of the matching hostname, then by the rules of the attached routes, then forwarded to a
//! mesh service exactly as the sidecar's outbound side does ([`crate::http::outbound::serve_rule`]:
//! fault, rewrite, retries, balancing, mTLS with the gateway's own identity).
//!
//! No hostname or no rule matching answers `404` with `trellis-error: no-route` (in gRPC terms
//! for a gRPC caller). Requests are counted and logged as the sidecar's outbound requests are,
//! with the gateway's identity as their source.
use super::hosts::normalize;
use super::plan::PortPlan;
use crate::body::Body;
use crate::drain::Drain;
use crate::error::{ProxyError, Reason, Shape};
use crate::http::headers::authority;
use crate::http::outbound::serve_rule;
use crate::http::{record, Caller, Outcome};
use crate::listener::serve_http_connection;
use crate::metrics::no_label;
use crate::state::ProxyState;
use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

/// The metrics direction of gateway requests: the gateway calls the mesh, as a caller's
/// sidecar does.
pub const DIRECTION: &str = "outbound";

/// One downstream connection, for routing and the `x-forwarded-*` headers.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// `https` when TLS was terminated here.
    pub scheme: &'static str,
}

/// Serves one connection until it ends, the proxy drains, or it idles past `--idle-timeout`.
pub async fn serve<I>(
    io: I,
    h2: bool,
    down: Downstream,
    port: Arc<ArcSwap<PortPlan>>,
    state: Arc<ProxyState>,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let down = Arc::new(down);
    let peer = down.peer;
    let st = state.clone();
    let answer = move |req| {
        // The port's plan in force when the request came: a reload never changes a request's.
        let (state, port, down) = (st.clone(), port.load_full(), down.clone());
        handle(state, port, down, req)
    };
    serve_http_connection(io, h2, peer, &state, &drain, answer).await;
}

async fn handle(
    state: Arc<ProxyState>,
    port: Arc<PortPlan>,
    down: Arc<Downstream>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let shape = Shape::of(req.headers());
    let began = {
        let snap = state.snapshot.load();
        let telemetry = snap.as_ref().map(|s| &s.mesh.telemetry);
        crate::http::begin(&state, telemetry, DIRECTION, down.peer, None, &mut req)
    };
    let outcome = route(&state, &port, &down, req, shape).await;
    if let Some(reason) = outcome.reason {
        tracing::debug!(service = %outcome.service, route = %outcome.route, reason = reason.as_str(), "gateway answered");
    }
    let caller = Caller {
        identity: state.local_source(),
        workload: state.workload_label(),
    };
    Ok(record(
        &state.metrics,
        DIRECTION,
        caller,
        outcome,
        start,
        began,
    ))
}

fn no_route(detail: String, shape: Shape, service: Arc<str>) -> Outcome {
    Outcome::error(
        ProxyError::new(Reason::NoRoute, detail),
        shape,
        service,
        no_label(),
    )
}

async fn route(
    state: &Arc<ProxyState>,
    port: &PortPlan,
    down: &Downstream,
    mut req: Request<Incoming>,
    shape: Shape,
) -> Outcome {
    let Some(snapshot) = state.snapshot.load_full() else {
        let e = ProxyError::new(Reason::NotReady, "the gateway has no config yet");
        return Outcome::error(e, shape, no_label(), no_label());
    };
    let host = normalize(authority(&req).unwrap_or(""));
    let Some(table) = port.http.lookup(&host) else {
        let detail = format!("no route attached to this gateway listener serves host {host:?}");
        return no_route(detail, shape, no_label());
    };
    let Some((rule, matched)) = (table.rules.iter()).find_map(|r| r.matching(&req).map(|m| (r, m)))
    else {
        let detail = format!(
            "no rule of the routes for host {host:?} on listener {} matches {} {}",
            table.listener,
            req.method(),
            req.uri().path()
        );
        return no_route(detail, shape, no_label());
    };
    // The destination's port decides the next hop's protocol; its name labels the request. A
    // rule that answers itself (a redirect, or a direct response where no backend is valid)
    // has none: it is labelled with the gateway.
    // (A direct response with a weight is only a share beside valid backends: those decide.)
    let answers_itself = rule.redirect.is_some()
        || (rule.direct_response.as_ref()).is_some_and(|d| d.weight.is_none());
    let svc = match rule.backends.first() {
        _ if answers_itself => table.own.clone(),
        None => table.own.clone(),
        Some(first) => {
            let b = &first.backend;
            match snapshot.service(&b.namespace, &b.service) {
                Some(svc) => svc.clone(),
                None => {
                    let detail = format!(
                        "backend service {}/{} of rule {} is not in the mesh config",
                        b.namespace, b.service, rule.name
                    );
                    return no_route(detail, shape, Arc::from(b.service.as_str()));
                }
            }
        }
    };
    if rule.redirect.is_some() {
        // A redirect keeps the request's scheme when it sets none: an HTTP/1.1 request over TLS
        // carries no scheme in its target, so it is said here.
        with_scheme(&mut req, down.scheme);
    }
    forwarded_headers(&mut req, down);
    serve_rule(
        state, &snapshot, &svc, None, rule, matched, down.peer, req, shape,
    )
    .await
}

/// Gives a request without a scheme in its target (HTTP/1.1's origin form) `scheme` and its
/// `Host` as authority; a request whose `Host` is no valid authority is left as it is.
fn with_scheme(req: &mut Request<Incoming>, scheme: &'static str) {
    if req.uri().scheme().is_some() {
        return;
    }
    let Some(host) = (req.headers().get(http::header::HOST)).and_then(|h| h.to_str().ok()) else {
        return;
    };
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if scheme == "https" {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// `x-forwarded-for` (appended) and `x-forwarded-proto`, as an ingress sets them.
fn forwarded_headers(req: &mut Request<Incoming>, down: &Downstream) {
    let headers = req.headers_mut();
    let ip = down.peer.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(down.scheme));
}
