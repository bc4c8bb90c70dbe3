//! The proxy's Prometheus metrics (prometheus-client), served in text format on the admin port.
//!
//! Families are labelled so the golden signals can be read per edge (caller identity and
//! workload → service, subset and workload, over mTLS or not) and route, and every
//! proxy-generated answer is counted by its `reason`. Label values are bounded by config
//! (services, routes, workloads), never by request content: a `grpc-status` outside the spec's 17 codes is
//! counted as `UNKNOWN`, as gRPC clients read it.
//!
//! gRPC answers with HTTP 200 and puts its outcome in `grpc-status`, usually in the trailers
//! after the last message. So a request is classified (`classification="success|failure"`) by
//! its `grpc-status` when the response is gRPC, and by its HTTP status (5xx fails) otherwise;
//! a gRPC request is counted when its status is known, which for a streamed answer is when the
//! trailers go by. Watching for them wraps the body of gRPC answers only: everything else is
//! counted when its headers are sent, with no wrapper. `docs/observability.md` has the PromQL.
pub mod bounded;
pub mod edges;
pub mod exposition;
pub mod workloads;

use crate::body::{self, Body};
use crate::grpc::{self, Ending};
use http::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The empty label value (no route, no subset, a caller that proved no identity): one shared
/// value, not an allocation per request.
pub fn no_label() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    /// Who called: see [`LatencyLabels::source`].
    pub source: Arc<str>,
    pub service: Arc<str>,
    pub route: Arc<str>,
    /// The destination subset the route chose (`""` for the whole service, and inbound).
    pub destination_subset: Arc<str>,
    pub code: u16,
    /// Empty when the application answered; the `trellis-error` reason otherwise.
    pub reason: &'static str,
    /// Empty for an answer that is not gRPC; else the final `grpc-status` (`0`..`16`), `none`
    /// when the stream ended without one, `1` (CANCELLED) when the caller went away first.
    pub grpc_status: &'static str,
    /// `success` or `failure`: by `grpc-status` (anything but 0 fails) for gRPC answers, by
    /// the HTTP status (5xx fails) for the rest.
    pub classification: &'static str,
    /// See [`LatencyLabels::source_workload`].
    pub source_workload: Arc<str>,
    /// See [`LatencyLabels::destination_workload`].
    pub destination_workload: Arc<str>,
    /// See [`LatencyLabels::mtls`].
    pub mtls: &'static str,
}

/// One edge of the mesh as a sidecar sees it: who called (`source`) which service (`service`,
/// the destination in both directions) through which route. Also the labels of the latency
/// histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: &'static str,
    /// The caller's SPIFFE identity: inbound, the one the peer proved over mTLS (empty when it
    /// proved none: a plaintext caller); outbound, this sidecar's own (empty before it has a
    /// certificate). Bounded by the mesh's identities, never by addresses.
    pub source: Arc<str>,
    pub service: Arc<str>,
    pub route: Arc<str>,
    /// The destination subset the route chose (`""` for the whole service, and inbound).
    pub destination_subset: Arc<str>,
    /// The calling instance (its Workload name, the sidecar's `--node-id`): outbound, this
    /// sidecar's own; inbound, the one the caller's sidecar named in `trellis-source-workload`
    /// over mTLS (empty over plaintext, where nothing vouches for it). See [`WorkloadNames`].
    pub source_workload: Arc<str>,
    /// The instance that answered: outbound, the Workload of the endpoint the last try went to
    /// (empty when no try was made, or for an endpoint outside the mesh); inbound, this
    /// sidecar's own.
    pub destination_workload: Arc<str>,
    /// `true` when the hop was mutual TLS (inbound: the caller proved an identity; outbound:
    /// the last try went over mTLS), else `false`.
    pub mtls: &'static str,
}

/// The `mtls` label value.
pub fn mtls_label(mutual: bool) -> &'static str {
    if mutual {
        "true"
    } else {
        "false"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: &'static str,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: &'static str,
    /// Who called: see [`LatencyLabels::source`].
    pub source: Arc<str>,
    pub service: String,
    /// `received` from the downstream peer, or `sent` to it.
    pub flow: &'static str,
}

/// One opaque TCP edge: who called (`source`, as for requests) which service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    pub source: Arc<str>,
    pub service: String,
}

fn tcp_duration_histogram() -> Histogram {
    // 1 ms .. ~70 min
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// `http` or `tcp`.
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    /// The refused `Host` (without its port), or `other` past [`MAX_DENIED_HOSTS`].
    pub host: Arc<str>,
}

/// Distinct `host` labels `trellis_egress_denied_requests_total` takes before counting the rest
/// as `other`: the Host header is the caller's to choose.
pub const MAX_DENIED_HOSTS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub service: Arc<str>,
    pub route: Arc<str>,
    /// `attempted`, or `budget-exhausted` when the budget refused one.
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s: the bounds `trellis stat` merges buckets by.
    Histogram::new(trellis_api::telemetry::latency_bounds())
}

/// All metric families of one proxy process.
pub struct Metrics {
    registry: Registry,
    /// Only the request count and latency families, which `trellis stat` samples
    /// ([`crate::live::history`]): encoding them alone is cheap.
    golden: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// Time to the end of the response body (or the caller abandoning it).
    pub response_duration: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// HTTP body bytes per edge: received from the caller, and sent back to it.
    pub http_request_bytes: Family<LatencyLabels, Counter>,
    pub http_response_bytes: Family<LatencyLabels, Counter>,
    /// The handles of each edge's series above, found with one fast hash per request.
    edges: edges::Edges,
    pub conns_opened: Family<ConnLabels, Counter>,
    pub conns_closed: Family<ConnLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    /// Opaque TCP connections forwarded, per edge: opened, closed, and how long they lasted.
    pub tcp_streams_opened: Family<TcpLabels, Counter>,
    pub tcp_streams_closed: Family<TcpLabels, Counter>,
    pub tcp_stream_duration: Family<TcpLabels, Histogram, fn() -> Histogram>,
    pub detections: Family<ResultLabels, Counter>,
    /// `trellis gateway`'s TLS passthrough connections by result (ok, no-route, not-tls, ...).
    pub gateway_passthrough: Family<ResultLabels, Counter>,
    /// Its `TLS` `Terminate` connections by result (ok, no-route, handshake-failed, ...).
    pub gateway_tls_terminate: Family<ResultLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub ejections: Family<ServiceLabels, Counter>,
    pub accrual_backoffs: Family<ServiceLabels, Counter>,
    pub inbound_tls: Family<ResultLabels, Counter>,
    pub authz: Family<AuthzLabels, Counter>,
    /// Local rate-limit decisions (see [`crate::ratelimit`]).
    pub rate_limited: Family<RateLimitLabels, Counter>,
    /// Captured traffic refused by a `RegistryOnly` outbound policy.
    pub egress_denied: Family<ProtocolLabels, Counter>,
    /// Explicit-mode requests refused by a `RegistryOnly` outbound policy, by host (bounded).
    pub egress_denied_requests: Family<HostLabels, Counter>,
    /// The hosts `egress_denied_requests` has a series for.
    denied_hosts: bounded::BoundedNames,
    pub config_version: Gauge,
    /// Live taps (`trellis tap`, `trellis top`) open on this proxy.
    pub taps_open: Gauge,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// Spans sent to the OTLP collector, and spans dropped (full queue, failed export).
    pub spans_exported: Counter,
    pub spans_dropped: Counter,
}

/// An authorization decision: allowed or denied, and the policy (or `default`) that decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub decision: &'static str,
    pub policy: String,
}

/// A local rate-limit decision: `outbound` by a Route rule (`route` its label) or `inbound` by a
/// RateLimitPolicy (`route` its name); `scope` is `route`, `identity` or `total`; `decision` is
/// `admitted` or `limited` (refused in `enforce` mode, let through in `shadow`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub direction: &'static str,
    pub service: Arc<str>,
    pub route: Arc<str>,
    pub scope: &'static str,
    pub mode: &'static str,
    pub decision: &'static str,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("trellis");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let response_duration =
            Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let http_request_bytes = Family::<LatencyLabels, Counter>::default();
        let http_response_bytes = Family::<LatencyLabels, Counter>::default();
        let conns_opened = Family::<ConnLabels, Counter>::default();
        let conns_closed = Family::<ConnLabels, Counter>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let tcp_streams_opened = Family::<TcpLabels, Counter>::default();
        let tcp_streams_closed = Family::<TcpLabels, Counter>::default();
        let tcp_stream_duration =
            Family::<TcpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                tcp_duration_histogram,
            );
        let detections = Family::<ResultLabels, Counter>::default();
        let gateway_passthrough = Family::<ResultLabels, Counter>::default();
        registry.register(
            "gateway_passthrough",
            "TLS passthrough connections of a gateway by result: ok (tunnelled), no-route (no TLSRoute serves the SNI), not-tls, or why the backend could not be reached",
            gateway_passthrough.clone(),
        );
        let gateway_tls_terminate = Family::<ResultLabels, Counter>::default();
        registry.register(
            "gateway_tls_terminate",
            "Connections to a gateway's TLS listeners in mode Terminate by result: ok (tunnelled), handshake-failed, handshake-timeout, no-route (no TLSRoute serves the SNI), or why the backend could not be reached",
            gateway_tls_terminate.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let ejections = Family::<ServiceLabels, Counter>::default();
        let accrual_backoffs = Family::<ServiceLabels, Counter>::default();
        let inbound_tls = Family::<ResultLabels, Counter>::default();
        let authz = Family::<AuthzLabels, Counter>::default();
        let egress_denied = Family::<ProtocolLabels, Counter>::default();
        let rate_limited = Family::<RateLimitLabels, Counter>::default();
        let egress_denied_requests = Family::<HostLabels, Counter>::default();
        registry.register(
            "egress_denied_requests",
            "Requests to the explicit outbound port naming a host that is neither a mesh service nor an ExternalService, refused by a RegistryOnly outbound traffic policy, by host (at most 256 hosts, then other)",
            egress_denied_requests.clone(),
        );
        registry.register(
            "rate_limited",
            "Local rate-limit decisions by direction, service, route (or RateLimitPolicy), scope (route, identity, total), mode (enforce, shadow) and decision (admitted, limited)",
            rate_limited.clone(),
        );
        registry.register(
            "egress_denied",
            "Captured HTTP requests (protocol=http) and other connections (protocol=tcp) to destinations outside the mesh, refused by a RegistryOnly outbound traffic policy",
            egress_denied.clone(),
        );
        let config_version = Gauge::default();
        let taps_open = Gauge::default();
        registry.register(
            "taps_open",
            "Live taps (trellis tap, trellis top) open on this proxy",
            taps_open.clone(),
        );
        let access_log_dropped = Counter::default();
        let spans_exported = Counter::default();
        let spans_dropped = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            spans_exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: the export queue was full, or the collector was down, slow or refused them",
            spans_dropped.clone(),
        );
        registry.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer fell behind (a full queue)",
            access_log_dropped.clone(),
        );
        registry.register(
            "inbound_tls_connections",
            "Inbound connections by mTLS outcome (ok, handshake-failed, handshake-timeout, plaintext-refused, no-certificate)",
            inbound_tls.clone(),
        );
        registry.register(
            "authorization_decisions",
            "Inbound authorization decisions by decision and deciding policy",
            authz.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests by direction, source (identity and workload), destination (service, subset and workload), route, status code, proxy error reason, gRPC status, classification and mTLS",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            latency.clone(),
        );
        registry.register(
            "response_duration_seconds",
            "Time from request received to the end of the response body sent (or the caller abandoning it)",
            response_duration.clone(),
        );
        registry.register(
            "http_request_bytes",
            "HTTP request body bytes received from the caller, per edge and route (counted when the response ends)",
            http_request_bytes.clone(),
        );
        registry.register(
            "http_response_bytes",
            "HTTP response body bytes sent to the caller, per edge and route",
            http_response_bytes.clone(),
        );
        registry.register(
            "tcp_connections_opened",
            "Accepted downstream connections",
            conns_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Closed downstream connections",
            conns_closed.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes moved on opaque TCP connections, by direction, source identity, service and flow (received from or sent to the downstream peer)",
            bytes.clone(),
        );
        registry.register(
            "tcp_streams_opened",
            "Opaque TCP connections forwarded, by direction, source identity and service",
            tcp_streams_opened.clone(),
        );
        registry.register(
            "tcp_streams_closed",
            "Opaque TCP connections that ended, by direction, source identity and service",
            tcp_streams_closed.clone(),
        );
        registry.register(
            "tcp_stream_duration_seconds",
            "How long opaque TCP connections lasted, by direction, source identity and service",
            tcp_stream_duration.clone(),
        );
        registry.register(
            "protocol_detections",
            "Protocol detection outcomes (http1, http2, tcp, timeout, closed, skipped)",
            detections.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result (applied, rejected)",
            reloads.clone(),
        );
        registry.register(
            "retries",
            "Retries attempted or refused by the retry budget",
            retries.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "failure_accrual_backoffs",
            "Endpoints backed off by default failure accrual (consecutive failures, no outlier detection configured)",
            accrual_backoffs.clone(),
        );
        registry.register(
            "config_version",
            "Version of the config snapshot in use",
            config_version.clone(),
        );
        let mut golden = Registry::with_prefix("trellis");
        golden.register("requests", "", requests.clone());
        golden.register("request_duration_seconds", "", latency.clone());
        Arc::new(Self {
            registry,
            golden,
            requests,
            latency,
            response_duration,
            http_request_bytes,
            http_response_bytes,
            edges: edges::Edges::default(),
            conns_opened,
            conns_closed,
            bytes,
            tcp_streams_opened,
            tcp_streams_closed,
            tcp_stream_duration,
            detections,
            gateway_passthrough,
            gateway_tls_terminate,
            reloads,
            retries,
            ejections,
            accrual_backoffs,
            inbound_tls,
            authz,
            rate_limited,
            egress_denied,
            egress_denied_requests,
            denied_hosts: bounded::BoundedNames::new(MAX_DENIED_HOSTS),
            config_version,
            taps_open,
            access_log_dropped,
            spans_exported,
            spans_dropped,
        })
    }

    /// Counts one explicit-mode request refused by the outbound policy, under its host (the
    /// first [`MAX_DENIED_HOSTS`] distinct hosts; `other` after them).
    pub fn egress_denied_request(&self, host: &str) {
        let (host, _) = self.denied_hosts.label(host);
        self.egress_denied_requests
            .get_or_create(&HostLabels { host })
            .inc();
    }

    /// Counts one request and records its latency to response headers. A gRPC answer whose
    /// `grpc-status` is not in its headers is counted when its trailers pass (or its stream
    /// ends or is dropped). The time to the end of the body and the body bytes each way are
    /// recorded when the response body ends or is dropped, so a response with a body comes back
    /// wrapped. `request_bytes` counts the request body as it is read (`None`: it had none).
    pub fn record_request(
        self: &Arc<Self>,
        edge: LatencyLabels,
        reason: &'static str,
        response: Response<Body>,
        start: std::time::Instant,
        request_bytes: Option<Arc<AtomicU64>>,
    ) -> Response<Body> {
        let series = self.edges.get(
            edge,
            edges::EdgeFamilies {
                latency: &self.latency,
                to_end: &self.response_duration,
                request_bytes: &self.http_request_bytes,
                response_bytes: &self.http_response_bytes,
            },
        );
        series.latency.observe(start.elapsed().as_secs_f64());
        let code = response.status().as_u16();
        let outcome = move |grpc_status: &'static str, failed: bool| {
            (code, reason, grpc_status, classification(failed))
        };
        if !grpc::is_grpc(response.headers()) {
            series.count(&self.requests, outcome("", code >= 500));
            return until_end(series, start, request_bytes, response);
        }
        let known = grpc::status_of(response.headers())
            .map(Ending::Status)
            .or_else(|| {
                http_body::Body::is_end_stream(response.body()).then_some(Ending::NoStatus)
            });
        if let Some(ending) = known {
            let (status, failed) = grpc_label(ending);
            series.count(&self.requests, outcome(status, failed));
            return until_end(series, start, request_bytes, response);
        }
        let (metrics, counted) = (Arc::clone(self), series.clone());
        let watched = response.map(move |b| {
            body::boxed(grpc::WatchStatus::new(b, move |ending| {
                let (status, failed) = grpc_label(ending);
                counted.count(&metrics.requests, outcome(status, failed));
            }))
        });
        until_end(series, start, request_bytes, watched)
    }

    /// The text exposition in `format` (see [`exposition`]).
    pub fn encode_as(&self, format: exposition::Format) -> String {
        let openmetrics = self.encode();
        match format {
            exposition::Format::OpenMetrics => openmetrics,
            exposition::Format::Classic => exposition::to_classic(&openmetrics),
        }
    }

    /// The OpenMetrics text of the request count and latency families only.
    pub fn encode_golden(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.golden);
        out
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `response`, with the edge's time to the end of the body and its body bytes each way
/// recorded when the body ends or is dropped: at once for an answer with no body to come.
fn until_end(
    series: Arc<edges::EdgeSeries>,
    start: std::time::Instant,
    request_bytes: Option<Arc<AtomicU64>>,
    response: Response<Body>,
) -> Response<Body> {
    let end = EdgeEnd {
        series,
        start,
        request_bytes,
    };
    if http_body::Body::is_end_stream(response.body()) {
        end.record(0);
        return response;
    }
    response.map(|inner| {
        body::boxed(TimedToEnd {
            inner,
            sent: 0,
            end: Some(end),
        })
    })
}

/// What is recorded for an edge when a response body ends: its time, and its bytes each way.
struct EdgeEnd {
    series: Arc<edges::EdgeSeries>,
    start: std::time::Instant,
    /// The request body's running count.
    request_bytes: Option<Arc<AtomicU64>>,
}

impl EdgeEnd {
    fn record(self, sent: u64) {
        let s = &self.series;
        s.to_end.observe(self.start.elapsed().as_secs_f64());
        if let Some(count) = self.request_bytes {
            s.request_bytes.inc_by(count.load(Ordering::Relaxed));
        }
        if sent > 0 {
            s.response_bytes.inc_by(sent);
        }
    }
}

/// A response body that counts its bytes and records its edge's end when it ends.
struct TimedToEnd {
    inner: Body,
    sent: u64,
    end: Option<EdgeEnd>,
}

impl TimedToEnd {
    fn end(&mut self) {
        if let Some(end) = self.end.take() {
            end.record(self.sent);
        }
    }
}

impl Drop for TimedToEnd {
    fn drop(&mut self) {
        self.end();
    }
}

impl http_body::Body for TimedToEnd {
    type Data = bytes::Bytes;
    type Error = body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, body::BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        if matches!(polled, std::task::Poll::Ready(None))
            || (polled.is_ready() && self.inner.is_end_stream())
        {
            self.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc_status` label of a gRPC ending, and whether it is a failure.
fn grpc_label(ending: Ending) -> (&'static str, bool) {
    match ending {
        Ending::Status(code) => (code.as_str(), code != grpc::Code::Ok),
        Ending::NoStatus => ("none", true),
        Ending::Dropped => (grpc::Code::Cancelled.as_str(), true),
    }
}

fn classification(failed: bool) -> &'static str {
    if failed {
        "failure"
    } else {
        "success"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode};
    use http_body::Frame;
    use http_body_util::BodyExt;

    #[test]
    fn egress_denied_hosts_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_DENIED_HOSTS + 10 {
            m.egress_denied_request(&format!("h{i}.example"));
        }
        m.egress_denied_request("h0.example");
        let get = |host: &str| {
            m.egress_denied_requests
                .get_or_create(&HostLabels { host: host.into() })
                .get()
        };
        assert_eq!(get("h0.example"), 2, "a host seen before keeps its series");
        assert_eq!(get(&format!("h{}.example", MAX_DENIED_HOSTS - 1)), 1);
        assert_eq!(
            get("other"),
            10,
            "hosts past the bound are counted together"
        );
        assert_eq!(m.denied_hosts.len(), MAX_DENIED_HOSTS);
    }

    fn count(
        m: &Metrics,
        code: u16,
        grpc_status: &'static str,
        classification: &'static str,
    ) -> u64 {
        m.requests
            .get_or_create(&RequestLabels {
                direction: "outbound",
                source: Arc::from("spiffe://t/ns/default/sa/caller"),
                service: "web".into(),
                route: "r".into(),
                destination_subset: "".into(),
                code,
                reason: "",
                grpc_status,
                classification,
                source_workload: "caller-0".into(),
                destination_workload: "web-0".into(),
                mtls: "true",
            })
            .get()
    }

    fn edge() -> LatencyLabels {
        LatencyLabels {
            direction: "outbound",
            source: Arc::from("spiffe://t/ns/default/sa/caller"),
            service: "web".into(),
            route: "r".into(),
            destination_subset: "".into(),
            source_workload: "caller-0".into(),
            destination_workload: "web-0".into(),
            mtls: "true",
        }
    }

    fn record(m: &Arc<Metrics>, rsp: Response<Body>) -> Response<Body> {
        m.record_request(edge(), "", rsp, std::time::Instant::now(), None)
    }

    fn grpc_response(body: Body, status_in_headers: Option<&'static str>) -> Response<Body> {
        let mut rsp = Response::new(body);
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        if let Some(s) = status_in_headers {
            rsp.headers_mut()
                .insert("grpc-status", HeaderValue::from_static(s));
        }
        rsp
    }

    fn streamed(trailer_status: &'static str) -> Body {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static(trailer_status));
        let frames: Vec<Result<Frame<Bytes>, body::BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
            Ok(Frame::trailers(t)),
        ];
        body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn http_answers_are_classified_by_status_at_once() {
        let m = Metrics::new();
        let mut rsp = Response::new(body::full("x"));
        *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        record(&m, rsp);
        record(&m, Response::new(body::full("ok")));
        assert_eq!(count(&m, 503, "", "failure"), 1);
        assert_eq!(count(&m, 200, "", "success"), 1);
    }

    #[tokio::test]
    async fn grpc_answers_are_classified_by_grpc_status() {
        let m = Metrics::new();
        // Trailers-only: counted at once from the headers.
        record(&m, grpc_response(body::empty(), Some("14")));
        assert_eq!(count(&m, 200, "14", "failure"), 1);

        // Streamed: counted when the trailers pass, not before.
        let rsp = record(&m, grpc_response(streamed("13"), None));
        assert_eq!(count(&m, 200, "13", "failure"), 0);
        let collected = rsp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "13");
        assert_eq!(count(&m, 200, "13", "failure"), 1);

        let rsp = record(&m, grpc_response(streamed("0"), None));
        rsp.into_body().collect().await.unwrap();
        assert_eq!(count(&m, 200, "0", "success"), 1);

        // The caller went away before the end: cancelled, a failure.
        let rsp = record(&m, grpc_response(streamed("0"), None));
        let mut b = rsp.into_body();
        b.frame().await.unwrap().unwrap();
        drop(b);
        assert_eq!(count(&m, 200, "1", "failure"), 1);

        // Ended with no status at all.
        let rsp = record(&m, grpc_response(body::full("\0\0\0\0\0"), None));
        rsp.into_body().collect().await.unwrap();
        assert_eq!(count(&m, 200, "none", "failure"), 1);
        assert_eq!(count(&m, 200, "0", "success"), 1, "nothing else counted");
    }

    /// How many responses the to-the-end histogram holds.
    fn ended(m: &Metrics) -> u64 {
        let text = m.encode();
        text.lines()
            .filter(|l| l.starts_with("trellis_response_duration_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn time_to_the_end_of_the_body_is_recorded_when_the_body_ends() {
        let m = Metrics::new();
        // No body to come: at once.
        record(&m, Response::new(body::empty()));
        assert_eq!(ended(&m), 1);
        // A body: only once it has been sent...
        let rsp = record(&m, Response::new(body::full("payload")));
        assert_eq!(ended(&m), 1, "not before the body ends");
        rsp.into_body().collect().await.unwrap();
        assert_eq!(ended(&m), 2);
        // ...or abandoned by the caller.
        drop(record(&m, Response::new(body::full("payload"))));
        assert_eq!(ended(&m), 3);
        // A streamed gRPC answer: when its trailers pass.
        let rsp = record(&m, grpc_response(streamed("0"), None));
        assert_eq!(ended(&m), 3);
        rsp.into_body().collect().await.unwrap();
        assert_eq!(ended(&m), 4);
    }

    #[test]
    fn the_exposition_carries_the_new_labels() {
        let m = Metrics::new();
        record(&m, grpc_response(body::empty(), Some("12")));
        let text = m.encode();
        assert!(
            text.contains(r#"grpc_status="12",classification="failure""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn body_bytes_each_way_are_counted_per_edge() {
        let m = Metrics::new();
        let request_bytes = Arc::new(AtomicU64::new(0));
        let rsp = m.record_request(
            edge(),
            "",
            Response::new(body::full("0123456789")),
            std::time::Instant::now(),
            Some(request_bytes.clone()),
        );
        // The request body is read (counted by the request's wrapper) while the answer goes.
        request_bytes.fetch_add(7, Ordering::Relaxed);
        let sent = || m.http_response_bytes.get_or_create(&edge()).get();
        let received = || m.http_request_bytes.get_or_create(&edge()).get();
        assert_eq!((received(), sent()), (0, 0), "nothing before the body ends");
        rsp.into_body().collect().await.unwrap();
        assert_eq!((received(), sent()), (7, 10));
        // A streamed gRPC answer counts its framed messages.
        let rsp = record(&m, grpc_response(streamed("0"), None));
        rsp.into_body().collect().await.unwrap();
        assert_eq!(sent(), 16);
        // An answer without a body still adds its request's bytes.
        let empty = Arc::new(AtomicU64::new(3));
        drop(m.record_request(
            edge(),
            "",
            Response::new(body::empty()),
            std::time::Instant::now(),
            Some(empty),
        ));
        assert_eq!(received(), 10);
        let text = m.encode();
        assert!(
            text.contains(r#"trellis_http_response_bytes_total{direction="outbound",source="spiffe://t/ns/default/sa/caller",service="web",route="r",destination_subset="",source_workload="caller-0",destination_workload="web-0",mtls="true"} 16"#),
            "{text}"
        );
    }
}
