//! The inbound side: requests from peers (or anyone) handed to the local application. Policy
//! that guards the app (authorization, JWT, rate limits) plugs in here.
use super::forward::forward_upgrade;
use super::headers::{is_upgrade, strip_hop_by_hop};
use super::upstream::{boxed_response, Wire};
use super::{record, Outcome};
use crate::body::{self, Body};
use crate::error::{ProxyError, Reason};
use crate::retry::Failure;
use crate::state::ProxyState;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub async fn handle(
    state: Arc<ProxyState>,
    app: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let service = state.identity.service.clone();
    let outcome = match to_app(&state, app, req).await {
        Ok(response) => Outcome {
            response,
            service,
            route: String::new(),
            reason: None,
        },
        Err(e) => {
            tracing::warn!(%app, error = %e, "inbound request failed");
            Outcome::error(e, &service, "")
        }
    };
    record(&state.metrics, "inbound", &outcome, start);
    Ok(outcome.response)
}

async fn to_app(
    state: &ProxyState,
    app: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    strip_hop_by_hop(req.headers_mut(), upgrade);
    if upgrade {
        return forward_upgrade(state, app, req).await;
    }
    let wire = if req.version() == Version::HTTP_2 {
        Wire::Http2
    } else {
        Wire::Http1
    };
    let req = req.map(body::boxed);
    match state.upstreams.send(app, wire, req, None).await {
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
