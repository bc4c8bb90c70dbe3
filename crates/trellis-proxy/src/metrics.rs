//! The proxy's Prometheus metrics (prometheus-client), served in text format on the admin port.
//!
//! Families are labelled so the golden signals can be read per direction, service and route, and
//! every proxy-generated answer is counted by its `reason`. Label values are bounded by config
//! (services, routes), never by request content.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: &'static str,
    pub service: String,
    pub route: String,
    pub code: u16,
    /// Empty when the application answered; the `trellis-error` reason otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: &'static str,
    pub service: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: &'static str,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: &'static str,
    pub service: String,
    /// `received` from the downstream peer, or `sent` to it.
    pub flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub service: String,
    pub route: String,
    /// `attempted`, or `budget-exhausted` when the budget refused one.
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// All metric families of one proxy process.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub conns_opened: Family<ConnLabels, Counter>,
    pub conns_closed: Family<ConnLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub detections: Family<ResultLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub ejections: Family<ServiceLabels, Counter>,
    pub inbound_tls: Family<ResultLabels, Counter>,
    pub authz: Family<AuthzLabels, Counter>,
    pub config_version: Gauge,
}

/// An authorization decision: allowed or denied, and the policy (or `default`) that decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub decision: &'static str,
    pub policy: String,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("trellis");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let conns_opened = Family::<ConnLabels, Counter>::default();
        let conns_closed = Family::<ConnLabels, Counter>::default();
        let bytes = Family::<BytesLabels, Counter>::default();
        let detections = Family::<ResultLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let retries = Family::<RetryLabels, Counter>::default();
        let ejections = Family::<ServiceLabels, Counter>::default();
        let inbound_tls = Family::<ResultLabels, Counter>::default();
        let authz = Family::<AuthzLabels, Counter>::default();
        let config_version = Gauge::default();
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
            "HTTP requests by direction, service, route, status code and proxy error reason",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            latency.clone(),
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
            "Bytes moved on downstream connections",
            bytes.clone(),
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
            "config_version",
            "Version of the config snapshot in use",
            config_version.clone(),
        );
        Arc::new(Self {
            registry,
            requests,
            latency,
            conns_opened,
            conns_closed,
            bytes,
            detections,
            reloads,
            retries,
            ejections,
            inbound_tls,
            authz,
            config_version,
        })
    }

    /// Text exposition format (OpenMetrics flavour that Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
