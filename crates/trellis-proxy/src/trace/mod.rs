//! Distributed tracing: each sidecar a sampled request passes adds its spans to the request's
//! trace and sends them over OTLP/gRPC to the collector the MeshConfig names
//! (`spec.telemetry.otlpEndpoint`).
//!
//! - The inbound side makes a SERVER span (the caller's span is its parent) and hands the app
//!   the server span as its parent; the outbound side makes a CLIENT span per attempt, so
//!   retries show as sibling spans, each the parent of what the next hop does.
//! - Context is read from W3C `traceparent` or B3 (single or multi header) and written back in
//!   the same style ([`context`]).
//! - Sampling is parent-based: a caller's decision (the sampled flag) is honoured either way;
//!   a request with no decision starts a trace with `tracingSamplePercent` chance. A request not
//!   sampled passes with its headers untouched.
//! - Attributes follow the OpenTelemetry HTTP semantic conventions, plus the peer's identity and
//!   the proxy's reason when it answered itself.
//!
//! Without an endpoint nothing here runs beyond one field test per request.
pub mod context;
mod export;

pub use export::Exporter;

use context::{SpanId, Style, TraceId};
use export::{int, string, Finished};
use http::HeaderMap;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span, Status};
use std::sync::Arc;
use std::time::SystemTime;
use trellis_api::mesh::Telemetry;

/// A request this hop traces: its trace, and where its spans go.
#[derive(Clone)]
pub struct Traced {
    trace_id: TraceId,
    /// The caller's span; none when this hop starts the trace.
    parent: Option<SpanId>,
    style: Style,
    short_b3: bool,
    endpoint: Arc<str>,
    service: Arc<str>,
    exporter: Arc<Exporter>,
}

/// Whether `headers`' request is traced here, by the config's endpoint and sampling.
pub fn decide(
    telemetry: &Telemetry,
    service: &str,
    exporter: &Arc<Exporter>,
    headers: &HeaderMap,
) -> Option<Traced> {
    let endpoint = telemetry.otlp_endpoint.as_deref()?;
    let incoming = context::extract(headers);
    let sampled = match incoming.as_ref().and_then(|c| c.sampled) {
        Some(decided) => decided,
        None => {
            let p = telemetry.tracing_sample_percent;
            p >= 100.0 || rand::random::<f64>() * 100.0 < p
        }
    };
    if !sampled {
        return None;
    }
    let (trace_id, parent, style, short_b3) = match incoming {
        Some(c) => (c.trace_id, Some(c.parent), c.style, c.short_b3),
        None => (new_trace_id(), None, Style::W3c, false),
    };
    Some(Traced {
        trace_id,
        parent,
        style,
        short_b3,
        endpoint: Arc::from(endpoint),
        service: Arc::from(service),
        exporter: exporter.clone(),
    })
}

fn new_trace_id() -> TraceId {
    loop {
        let id: TraceId = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id: SpanId = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Server,
    Client,
}

impl Traced {
    /// Starts a span of this hop, a child of the caller's, and writes it into `headers` as the
    /// parent of whatever the request reaches next.
    pub fn start(&self, kind: Kind, name: &str, headers: &mut HeaderMap) -> OpenSpan {
        let span_id = new_span_id();
        context::inject(headers, &self.trace_id, &span_id, self.style, self.short_b3);
        OpenSpan {
            traced: self.clone(),
            span_id,
            kind,
            name: name.to_string(),
            start: SystemTime::now(),
            attributes: Vec::with_capacity(8),
        }
    }

    pub fn trace_id(&self) -> String {
        context::hex(&self.trace_id)
    }
}

/// A span in progress.
pub struct OpenSpan {
    traced: Traced,
    span_id: SpanId,
    kind: Kind,
    name: String,
    start: SystemTime,
    attributes: Vec<KeyValue>,
}

impl OpenSpan {
    pub fn text(&mut self, key: &str, value: &str) {
        self.attributes.push(string(key, value));
    }

    pub fn number(&mut self, key: &str, value: i64) {
        self.attributes.push(int(key, value));
    }

    /// Ends the span with `response` (status, and the proxy's `reason` when it made the answer)
    /// when its body has been sent or abandoned, as Envoy's spans end with the stream: a slow
    /// or streamed body is inside the span that carried it.
    pub fn end_with_body(
        self,
        reason: Option<&'static str>,
        response: http::Response<crate::body::Body>,
    ) -> http::Response<crate::body::Body> {
        let status = response.status().as_u16();
        if http_body::Body::is_end_stream(response.body()) {
            self.end(Some(status), reason);
            return response;
        }
        response.map(|b| crate::body::on_drop(b, move || self.end(Some(status), reason)))
    }

    /// Ends the span: an HTTP status when there was an answer, the proxy's reason when it made
    /// the answer or failed the attempt (then the span is an error).
    pub fn end(mut self, status: Option<u16>, reason: Option<&str>) {
        if let Some(code) = status {
            self.number("http.response.status_code", i64::from(code));
        }
        if let Some(r) = reason.filter(|r| !r.is_empty()) {
            self.text("trellis.reason", r);
        }
        // Per the HTTP conventions: a server span fails on 5xx, a client span on 4xx too.
        let failed = reason.is_some_and(|r| !r.is_empty())
            || status.is_some_and(|s| match self.kind {
                Kind::Server => s >= 500,
                Kind::Client => s >= 400,
            });
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let t = &self.traced;
        let span = Span {
            trace_id: t.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name,
            kind: match self.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
            } as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(SystemTime::now()),
            attributes: self.attributes,
            status: Some(Status {
                code: if failed {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                } as i32,
                message: reason.unwrap_or_default().to_string(),
            }),
            ..Default::default()
        };
        t.exporter.send(Finished {
            endpoint: t.endpoint.clone(),
            service: t.service.clone(),
            span,
        });
    }
}

/// `HTTP/1.1` → `1.1`, as `network.protocol.version` wants it.
pub fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
