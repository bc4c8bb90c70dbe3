//! HTTP handling: the outbound side (route, fault, retry, balance) and the inbound side (hand to
//! the local app), over hyper.
pub mod egress;
pub mod external;
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod mirror;
pub mod outbound;
pub mod replay;
pub mod upgrade;

use crate::access_log::{count_body, ensure_request_id, RequestLine};
use crate::body::Body;
use crate::error::{ProxyError, Reason, Shape};
use crate::metrics::{mtls_label, no_label, LatencyLabels, Metrics};
use crate::state::ProxyState;
use http::{Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;
use trellis_api::mesh::Telemetry;

/// What one request came to, for metrics and logs.
pub struct Outcome {
    pub response: Response<Body>,
    pub service: Arc<str>,
    pub route: Arc<str>,
    /// The subset the last try went to (`""`: the whole service, or inbound).
    pub subset: Arc<str>,
    /// The instance that answered (see [`LatencyLabels::destination_workload`]).
    pub destination_workload: Arc<str>,
    /// Whether the hop was mutual TLS (see [`LatencyLabels::mtls`]).
    pub mtls: bool,
    pub reason: Option<Reason>,
}

impl Outcome {
    pub fn error(e: ProxyError, shape: Shape, service: Arc<str>, route: Arc<str>) -> Self {
        let reason = Some(e.reason);
        Self {
            response: e.into_response(shape),
            service,
            route,
            subset: no_label(),
            destination_workload: no_label(),
            mtls: false,
            reason,
        }
    }
}

/// Who made a request, as its metrics name the caller.
pub struct Caller {
    /// The SPIFFE identity (see [`LatencyLabels::source`]).
    pub identity: Arc<str>,
    /// The instance (see [`LatencyLabels::source_workload`]).
    pub workload: Arc<str>,
}

/// What [`begin`] set up for a request: its access-log line (or tap) and its body's byte count.
#[derive(Default)]
pub struct Began {
    line: Option<RequestLine>,
    request_bytes: Option<Arc<AtomicU64>>,
}

/// Counts the request, records its latency to response headers, and (when the response body
/// ends) its time to the end and its bytes each way; a gRPC answer is counted when its
/// `grpc-status` is known (see [`Metrics::record_request`]). A request with an access-log line
/// gets it written when its response body ends.
pub fn record(
    metrics: &std::sync::Arc<Metrics>,
    direction: &'static str,
    caller: Caller,
    outcome: Outcome,
    start: Instant,
    began: Began,
) -> Response<Body> {
    let reason = outcome.reason.map(Reason::as_str).unwrap_or("");
    let edge = LatencyLabels {
        direction,
        source: caller.identity,
        service: outcome.service,
        route: outcome.route,
        destination_subset: outcome.subset,
        source_workload: caller.workload,
        destination_workload: outcome.destination_workload,
        mtls: mtls_label(outcome.mtls),
    };
    let Began {
        line,
        request_bytes,
    } = began;
    let Some(line) = line else {
        return metrics.record_request(edge, reason, outcome.response, start, request_bytes);
    };
    let (service, route) = (edge.service.clone(), edge.route.clone());
    let response = metrics.record_request(edge, reason, outcome.response, start, request_bytes);
    line.finish(&service, &route, reason, response)
}

/// Gives the request an `x-request-id` when it has none, sets up the count of its body, and
/// takes its access-log line when `telemetry` (the config in force) asks for one or an open tap
/// may want it.
pub fn begin(
    state: &ProxyState,
    telemetry: Option<&Telemetry>,
    direction: &'static str,
    peer: SocketAddr,
    peer_identity: Option<Arc<str>>,
    req: &mut Request<Incoming>,
) -> Began {
    ensure_request_id(req.headers_mut());
    let request_bytes = count_body(req);
    let line = RequestLine::begin(
        &state.access_log,
        telemetry.map(|t| &t.access_log),
        &state.taps,
        direction,
        peer,
        peer_identity,
        req,
    );
    Began {
        line,
        request_bytes,
    }
}
