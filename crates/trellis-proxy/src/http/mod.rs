//! HTTP handling: the outbound side (route, fault, retry, balance) and the inbound side (hand to
//! the local app), over hyper.
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod replay;
pub mod upstream;

use crate::body::Body;
use crate::error::{ProxyError, Reason};
use crate::metrics::{LatencyLabels, Metrics, RequestLabels};
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
    pub fn error(e: ProxyError, service: &str, route: &str) -> Self {
        let reason = Some(e.reason);
        Self {
            response: e.into_response(),
            service: service.to_string(),
            route: route.to_string(),
            reason,
        }
    }
}

/// Counts the request and records its latency to response headers.
pub fn record(metrics: &Metrics, direction: &'static str, outcome: &Outcome, start: Instant) {
    metrics
        .requests
        .get_or_create(&RequestLabels {
            direction,
            service: outcome.service.clone(),
            route: outcome.route.clone(),
            code: outcome.response.status().as_u16(),
            reason: outcome.reason.map(Reason::as_str).unwrap_or(""),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&LatencyLabels {
            direction,
            service: outcome.service.clone(),
            route: outcome.route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
}
