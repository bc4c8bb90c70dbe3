//! HTTP handling: the outbound side (route, fault, retry, balance) and the inbound side (hand to
//! the local app), over hyper.
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod mirror;
pub mod outbound;
pub mod replay;
pub mod upgrade;

use crate::body::Body;
use crate::error::{ProxyError, Reason, Shape};
use crate::metrics::Metrics;
use http::Response;
use std::time::Instant;

/// What one request came to, for metrics and logs.
pub struct Outcome {
    pub response: Response<Body>,
    pub service: String,
    pub route: String,
    pub reason: Option<Reason>,
}

impl Outcome {
    pub fn error(e: ProxyError, shape: Shape, service: &str, route: &str) -> Self {
        let reason = Some(e.reason);
        Self {
            response: e.into_response(shape),
            service: service.to_string(),
            route: route.to_string(),
            reason,
        }
    }
}

/// Counts the request and records its latency to response headers; a gRPC answer is counted
/// when its `grpc-status` is known (see [`Metrics::record_request`]).
pub fn record(
    metrics: &std::sync::Arc<Metrics>,
    direction: &'static str,
    outcome: Outcome,
    start: Instant,
) -> Response<Body> {
    let reason = outcome.reason.map(Reason::as_str).unwrap_or("");
    metrics.record_request(
        direction,
        outcome.service,
        outcome.route,
        reason,
        outcome.response,
        start,
    )
}
