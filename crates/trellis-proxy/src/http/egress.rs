//! Refusing traffic that leaves the mesh: what a capturing sidecar does, under the MeshConfig's
//! `outboundTrafficPolicy: {mode: RegistryOnly}`, with a connection the app opened to an
//! address that is neither a service's VIP nor a known workload.
//!
//! The connection is detected like any other, so an HTTP caller learns why (`502` with
//! `trellis-error: egress-denied`, or a gRPC `PERMISSION_DENIED`) rather than meeting a reset,
//! and each refusal is counted (`trellis_egress_denied_total` by protocol, and HTTP requests in
//! `trellis_requests_total` with `reason="egress-denied"`), and logged at most about once a second
//! with the destination, which names the app's mistake or the entry it needs.
//! Anything else (opaque TCP, TLS the app originates) is closed without a byte sent on.
use super::{record, Caller, Outcome};
use crate::body::Body;
use crate::error::{ProxyError, Reason, Shape};
use crate::metrics::no_label;
use crate::state::ProxyState;
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Answers one HTTP request of a refused connection.
pub async fn handle(
    state: Arc<ProxyState>,
    to: SocketAddr,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    denied(&state, peer, to, "http");
    let e = ProxyError::new(
        Reason::EgressDenied,
        format!(
            "{to} is outside the mesh (no service VIP, no known workload) and the MeshConfig's outboundTrafficPolicy is RegistryOnly"
        ),
    );
    let outcome = Outcome::error(e, Shape::of(req.headers()), no_label(), no_label());
    let caller = Caller {
        identity: state.local_source(),
        workload: state.workload_label(),
    };
    drop(req);
    Ok(record(
        &state.metrics,
        "outbound",
        caller,
        outcome,
        start,
        Default::default(),
    ))
}

/// Counts and logs one refusal (`protocol`: `http` per request, `tcp` per connection).
pub fn denied(state: &ProxyState, peer: SocketAddr, to: SocketAddr, protocol: &'static str) {
    state
        .metrics
        .egress_denied
        .get_or_create(&crate::metrics::ProtocolLabels { protocol })
        .inc();
    if let Some(suppressed) = state.peer_log.allow() {
        tracing::warn!(%peer, destination = %to, protocol, suppressed, "egress denied: the destination is outside the mesh and the outbound traffic policy is RegistryOnly");
    }
}
