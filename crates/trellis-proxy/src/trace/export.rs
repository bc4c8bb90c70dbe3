//! Finished spans leave the sidecar in OTLP/gRPC batches (the `opentelemetry-proto` crate's
//! messages and client), to the collector the MeshConfig names.
//!
//! A request never waits for its span: spans go through a bounded queue to one export task on
//! its own thread, which sends a batch when it has 512 spans or after half a second. A full queue, a collector
//! that is down, slow (5 s per export at most) or refuses a batch: the spans are dropped and
//! counted (`trellis_trace_spans_dropped_total`), never retried into a growing backlog.
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 4096;
const BATCH: usize = 512;
const BATCH_WAIT: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Exporter {
    queue: OnceLock<mpsc::Sender<Finished>>,
    dropped: Counter,
    exported: Counter,
}

/// A span ready to go, with where it goes and whose it is.
pub struct Finished {
    pub endpoint: Arc<str>,
    pub service: Arc<str>,
    pub span: Span,
}

impl Exporter {
    pub fn new(exported: Counter, dropped: Counter) -> Self {
        Self {
            queue: OnceLock::new(),
            dropped,
            exported,
        }
    }

    /// Queues a span. The export runs on a thread of its own (with its own small runtime),
    /// started with the first span: encoding and sending a batch never holds up the workers
    /// that serve requests.
    pub fn send(&self, span: Finished) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let (exported, dropped) = (self.exported.clone(), self.dropped.clone());
            let started = std::thread::Builder::new()
                .name("otlp-export".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(run(rx, exported, dropped)),
                        Err(e) => tracing::warn!(error = %e, "no runtime for span export; spans are dropped"),
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the span exporter; spans are dropped");
            }
            tx
        });
        if queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Finished>, exported: Counter, dropped: Counter) {
    let mut clients: HashMap<Arc<str>, TraceServiceClient<tonic::transport::Channel>> =
        HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(span) => batch.push(span),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let mut by_target: HashMap<(Arc<str>, Arc<str>), Vec<Span>> = HashMap::new();
        for f in batch {
            by_target
                .entry((f.endpoint, f.service))
                .or_default()
                .push(f.span);
        }
        for ((endpoint, service), spans) in by_target {
            let n = spans.len() as u64;
            let client = match clients.get(&endpoint) {
                Some(c) => c.clone(),
                None => match tonic::transport::Channel::from_shared(endpoint.to_string()) {
                    Ok(ch) => {
                        let c = TraceServiceClient::new(ch.connect_lazy());
                        clients.insert(endpoint.clone(), c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::warn!(%endpoint, error = %e, "the OTLP endpoint is not a URI; spans dropped");
                        dropped.inc_by(n);
                        continue;
                    }
                },
            };
            let request = ExportTraceServiceRequest {
                resource_spans: vec![resource_spans(&service, spans)],
            };
            let mut client = client;
            match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
                Ok(Ok(_)) => {
                    exported.inc_by(n);
                }
                Ok(Err(status)) => {
                    tracing::debug!(%endpoint, %status, "OTLP export failed; spans dropped");
                    dropped.inc_by(n);
                }
                Err(_) => {
                    tracing::debug!(%endpoint, "OTLP export timed out; spans dropped");
                    dropped.inc_by(n);
                }
            }
        }
    }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![string("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "trellis-proxy".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

pub fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}
