//! The inbound side: requests from peers (or anyone) handed to the local application, after the
//! policy guarding it: a JWT, when one is presented, must validate (`RequestAuthentication`,
//! else 401), then `AuthorizationPolicy` decides on the peer's mTLS identity, the JWT and the
//! request (else 403). Every decision is counted by policy; denials are logged with the policy
//! that made them.
use super::forward::forward_upgrade;
use super::headers::{is_upgrade, rewrite_path, set_path_and_query, strip_hop_by_hop};
use super::upstream::{boxed_response, Wire};
use super::{record, Outcome};
use crate::body::{self, Body};
use crate::error::{ProxyError, Reason};
use crate::listener::Conn;
use crate::metrics::AuthzLabels;
use crate::retry::Failure;
use crate::state::ProxyState;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use trellis_identity::authz::normalize_path;
use trellis_identity::jwt::TokenLocation;
use trellis_identity::RequestAttrs;

pub async fn handle(
    state: Arc<ProxyState>,
    app: SocketAddr,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let service = state.identity.service.clone();
    let result = match guard(&state, &conn, &mut req).await {
        Ok(()) => to_app(&state, app, req).await,
        Err(e) => Err(e),
    };
    let outcome = match result {
        Ok(response) => Outcome {
            response,
            service,
            route: String::new(),
            reason: None,
        },
        Err(e) => {
            if !matches!(e.reason, Reason::Denied | Reason::Unauthenticated) {
                tracing::warn!(%app, error = %e.detail, "inbound request failed");
            }
            Outcome::error(e, &service, "")
        }
    };
    record(&state.metrics, "inbound", &outcome, start);
    Ok(outcome.response)
}

/// Authentication then authorization; `Err` is the proxy's answer (401 or 403).
async fn guard(
    state: &ProxyState,
    conn: &Conn,
    req: &mut Request<Incoming>,
) -> Result<(), ProxyError> {
    let Some(snap) = state.snapshot.load_full() else {
        return Ok(());
    };
    let policy = &snap.inbound;
    let claims = match &policy.jwt {
        None => None,
        Some(validator) => validator
            .validate(req.headers(), req.uri())
            .await
            .map_err(|e| {
                tracing::info!(peer = %conn.peer, reason = e.reason.as_str(), "JWT refused");
                ProxyError::new(Reason::Unauthenticated, format!("JWT refused: {e}"))
            })?,
    };
    if let Some(c) = &claims {
        if !c.forward_original_token {
            if let TokenLocation::Header(name) = &c.location {
                req.headers_mut().remove(name.as_str());
            }
        }
    }
    if policy.authorizer.is_empty() {
        return Ok(());
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
    state
        .metrics
        .authz
        .get_or_create(&AuthzLabels {
            decision: if decision.allowed {
                "allowed"
            } else {
                "denied"
            },
            policy: decision.policy.clone(),
        })
        .inc();
    let source = conn
        .peer_id
        .as_deref()
        .unwrap_or("a peer without mTLS identity");
    if !decision.allowed {
        tracing::info!(
            %source,
            method = %req.method(),
            path = %path,
            policy = %decision.decided_by(),
            reason = decision.reason.as_str(),
            "request denied"
        );
        return Err(ProxyError::new(
            Reason::Denied,
            format!("{} {path} from {source}: {decision}", req.method()),
        ));
    }
    tracing::debug!(%source, path = %path, policy = %decision.decided_by(), "request allowed");
    // The app sees the path that was authorized (only an unusual path was normalized at all).
    if let Cow::Owned(path) = path {
        if path != req.uri().path() {
            if let Ok(pq) = rewrite_path(req.uri(), None, &path).parse() {
                let _ = set_path_and_query(req.uri_mut(), pq);
            }
        }
    }
    Ok(())
}

async fn to_app(
    state: &ProxyState,
    app: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    strip_hop_by_hop(req.headers_mut(), upgrade);
    if upgrade {
        return forward_upgrade(state, app, None, req).await;
    }
    let wire = if req.version() == Version::HTTP_2 {
        Wire::Http2
    } else {
        Wire::Http1
    };
    let req = req.map(body::boxed);
    match state.upstreams.send(app, wire, req, None, None).await {
        Ok(rsp) => {
            let mut rsp = boxed_response(rsp);
            strip_hop_by_hop(rsp.headers_mut(), false);
            Ok(rsp)
        }
        Err(e) => {
            let reason = match e.failure {
                Failure::ConnectFailed => Reason::ConnectFailed,
                _ => Reason::UpstreamReset,
            };
            Err(ProxyError::new(reason, format!("local app {}", e.detail)))
        }
    }
}
