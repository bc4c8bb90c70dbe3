//! The inbound side: requests from peers (or anyone) handed to the local application, after the
//! policy guarding it: a JWT, when one is presented, must validate (`RequestAuthentication`,
//! else 401), then `AuthorizationPolicy` decides on the peer's mTLS identity, the JWT and the
//! request (else 403). Every decision is counted by policy; denials are logged with the policy
//! that made them (rate-limited, see [`crate::gate`]). Before the first config nothing is
//! forwarded (503 `not-ready`). A validated token is taken out of the request (header or query)
//! unless the rule says `forwardOriginalToken`. Upgrades go through only to protocols the port
//! permits (WebSocket by default; `h2c` is stripped), and CONNECT never does: no connection
//! becomes a pipe for requests nobody authorized. Admitted requests then pass the service's
//! `RateLimitPolicy` limits (429 `rate-limited`, see [`crate::ratelimit`]).
use super::headers::{
    admit_upgrade, is_upgrade, rewrite_path, set_path_and_query, strip_hop_by_hop,
};
use super::upgrade::forward_upgrade;
use super::{record, Caller, Outcome};
use crate::body::{self, Body};
use crate::config::Snapshot;
use crate::conn::Conn;
use crate::error::{ProxyError, Reason, Shape};
use crate::gate;
use crate::state::ProxyState;
use crate::upstream::{Dial, Wire};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use trellis_identity::authz::normalize_path;
use trellis_identity::jwt::{without_query_param, TokenLocation};
use trellis_identity::RequestAttrs;

pub async fn handle(
    state: Arc<ProxyState>,
    app: SocketAddr,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let shape = Shape::of(req.headers());
    let mutual = conn.peer_id.is_some();
    let source_workload = state
        .source_workloads
        .take(req.headers_mut(), mutual)
        .unwrap_or_else(crate::metrics::no_label);
    // One look at the config in force for both the log line and the span.
    let (began, span) = {
        let snap = state.snapshot.load();
        let telemetry = snap.as_ref().map(|s| &s.mesh.telemetry);
        let began = super::begin(
            &state,
            telemetry,
            "inbound",
            conn.peer,
            conn.peer_id.clone(),
            &mut req,
        );
        (began, server_span(&state, telemetry, &conn, &mut req))
    };
    let service = state.service_label();
    let result = match guard(&state, &conn, &mut req).await {
        Ok(snap) => to_app(&state, &snap, app, req).await,
        Err(e) => Err(e),
    };
    let outcome = match result {
        Ok(response) => Outcome {
            response,
            service,
            route: crate::metrics::no_label(),
            subset: crate::metrics::no_label(),
            destination_workload: state.workload_label(),
            mtls: mutual,
            reason: None,
        },
        Err(e) => {
            if !matches!(
                e.reason,
                Reason::Denied
                    | Reason::RateLimited
                    | Reason::Unauthenticated
                    | Reason::NotReady
                    | Reason::UpgradeRefused
            ) {
                if let Some(suppressed) = state.peer_log.allow() {
                    tracing::warn!(%app, error = %e.detail, suppressed, "inbound request failed");
                }
            }
            let mut outcome = Outcome::error(e, shape, service, crate::metrics::no_label());
            outcome.destination_workload = state.workload_label();
            outcome.mtls = mutual;
            outcome
        }
    };
    let reason = outcome.reason.map(Reason::as_str);
    let caller = Caller {
        identity: conn
            .peer_id
            .clone()
            .unwrap_or_else(|| state.unknown_source()),
        workload: source_workload,
    };
    let response = record(&state.metrics, "inbound", caller, outcome, start, began);
    Ok(match span {
        Some(span) => span.end_with_body(reason, response),
        None => response,
    })
}

/// The inbound SERVER span of a traced request (the app then sees it as its parent).
fn server_span(
    state: &ProxyState,
    telemetry: Option<&trellis_api::mesh::Telemetry>,
    conn: &Conn,
    req: &mut Request<Incoming>,
) -> Option<crate::trace::OpenSpan> {
    let traced = crate::trace::decide(
        telemetry?,
        &state.identity.service,
        &state.tracer,
        req.headers(),
    )?;
    let method = req.method().clone();
    let mut span = traced.start(
        crate::trace::Kind::Server,
        method.as_str(),
        req.headers_mut(),
    );
    span.text("http.request.method", method.as_str());
    span.text("url.path", req.uri().path());
    span.text("server.address", &state.identity.service);
    span.text(
        "network.protocol.version",
        crate::trace::protocol_version(req.version()),
    );
    span.text("client.address", &conn.peer.ip().to_string());
    if let Some(id) = &conn.peer_id {
        span.text("trellis.peer.identity", id);
    }
    Some(span)
}

/// Authentication then authorization; `Ok` is the config the request was admitted under, `Err`
/// the proxy's answer (503 before the first config, 401, 403).
async fn guard(
    state: &ProxyState,
    conn: &Conn,
    req: &mut Request<Incoming>,
) -> Result<Arc<Snapshot>, ProxyError> {
    let snap = gate::ready_snapshot(state)?;
    let policy = &snap.inbound;
    let claims = match &policy.jwt {
        None => None,
        Some(validator) => validator
            .validate(req.headers(), req.uri())
            .await
            .map_err(|e| {
                if let Some(suppressed) = state.denial_log.allow() {
                    let reason = e.reason.as_str();
                    tracing::info!(peer = %conn.peer, reason, suppressed, "JWT refused");
                }
                ProxyError::new(Reason::Unauthenticated, format!("JWT refused: {e}"))
            })?,
    };
    if let Some(c) = &claims {
        if !c.forward_original_token {
            remove_token(req, &c.location);
        }
    }
    if policy.authorizer.is_empty() {
        rate_limit(state, &snap, conn)?;
        return Ok(snap);
    }
    let principal = claims.as_ref().map(|c| c.request_principal());
    let path = normalize_path(req.uri().path());
    let attrs = RequestAttrs {
        source: conn.peer_id.as_deref(),
        method: req.method().as_str(),
        path: &path,
        port: policy.port,
        request_principal: principal.as_deref(),
        claims: claims.as_ref().map(|c| &c.claims),
    };
    let decision = policy.authorizer.decide(&attrs);
    gate::enforce(
        state,
        gate::Subject::Request,
        &decision,
        conn.peer_id.as_deref(),
        format_args!("{} {path}", req.method()),
    )?;
    // The app sees the path that was authorized (only an unusual path was normalized at all).
    if let Cow::Owned(path) = path {
        if path != req.uri().path() {
            if let Ok(pq) = rewrite_path(req.uri(), None, &path).parse() {
                let _ = set_path_and_query(req.uri_mut(), pq);
            }
        }
    }
    rate_limit(state, &snap, conn)?;
    Ok(snap)
}

/// The service's `RateLimitPolicy` limits, checked after authorization (see
/// [`crate::ratelimit`]): a denied request spends no tokens.
fn rate_limit(state: &ProxyState, snap: &Snapshot, conn: &Conn) -> Result<(), ProxyError> {
    let limits = &snap.inbound.rate_limits;
    if limits.is_empty() {
        return Ok(());
    }
    let service = state.service_label();
    for l in limits {
        l.check(&state.metrics, &service, conn.peer_id.as_ref())?;
    }
    Ok(())
}

/// Takes a validated token out of the request, so the app never sees a credential it was not
/// meant to have (`forwardOriginalToken: false`, the default).
fn remove_token(req: &mut Request<Incoming>, location: &TokenLocation) {
    match location {
        TokenLocation::Header(name) => {
            req.headers_mut().remove(name.as_str());
        }
        TokenLocation::Query(param) => {
            let Some(query) = req.uri().query() else {
                return;
            };
            let rest = without_query_param(query, param);
            let pq = match rest.is_empty() {
                true => req.uri().path().to_string(),
                false => format!("{}?{rest}", req.uri().path()),
            };
            if let Ok(pq) = pq.parse() {
                let _ = set_path_and_query(req.uri_mut(), pq);
            }
        }
    }
}

async fn to_app(
    state: &ProxyState,
    snap: &Snapshot,
    app: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::new(
            Reason::UpgradeRefused,
            "CONNECT is not served on the inbound side: a tunnel would carry bytes no policy saw",
        ));
    }
    let upgrade = req.version() == Version::HTTP_11
        && is_upgrade(req.headers())
        && admit_upgrade(req.headers_mut(), snap.inbound.upgrades.as_deref())?;
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let dial = Dial::plain(app, state.settings.connect_timeout);
    if upgrade {
        return forward_upgrade(&state.upstreams, dial, req).await;
    }
    // The app hears the version its port declares, whatever the caller (or the peer's sidecar)
    // spoke: an `http` app may know only HTTP/1.1.
    let wire = Wire::for_port(snap.inbound.protocol, req.version());
    let req = crate::access_log::counting(req.map(body::boxed));
    match state.upstreams.send(&dial, wire, req).await {
        Ok(mut rsp) => {
            strip_hop_by_hop(rsp.headers_mut(), false);
            Ok(rsp)
        }
        Err(e) => Err(ProxyError::new(
            e.reason(),
            format!("local app {}", e.detail),
        )),
    }
}
