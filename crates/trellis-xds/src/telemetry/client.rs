//! The proxy's end of the telemetry link: one stream to some replica, kept open across failures
//! (the next replica after a failure, with jittered backoff), answering each question through a
//! [`Handler`].
use super::MAX_MESSAGE_BYTES;
use crate::client::Backoff;
use crate::node::NodeInfo;
use crate::pb::trellis::v1::telemetry_client::TelemetryClient;
use crate::pb::trellis::v1::{ControlMessage, ProxyMessage};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Endpoint, Uri};

/// Answers sent per stream before the proxy waits (a tap's events are dropped instead).
const OUTGOING: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with questions; bodies are JSON (`trellis_api::telemetry`).
pub trait Handler: Send + Sync + 'static {
    /// The answer to a stat query.
    fn stat(&self, query: &[u8]) -> Vec<u8>;
    /// Starts a tap: its events (JSON each) arrive on the receiver until it is dropped, which
    /// ends the tap. `Err` says why the filter was refused.
    fn tap(&self, filter: &[u8]) -> Result<mpsc::Receiver<Vec<u8>>, String>;
    /// The endpoints this proxy has ejected (outlier detection), for the dashboard: JSON
    /// `{"ejected": [{"service", "namespace", "address", "ejections"}]}`.
    fn endpoints(&self) -> Vec<u8> {
        b"{\"ejected\":[]}".to_vec()
    }
}

/// Keeps a telemetry stream open to one of `endpoints` until the task is aborted.
pub fn spawn(
    endpoints: Vec<Uri>,
    token: Option<String>,
    node: NodeInfo,
    handler: Arc<dyn Handler>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let backoff = Backoff::default();
        let mut failures = 0u32;
        let mut next = 0usize;
        loop {
            let Some(uri) = endpoints.get(next % endpoints.len().max(1)) else {
                return;
            };
            match session(uri, token.as_deref(), &node, &handler).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::debug!(replica = %uri, error = %e, "telemetry stream ended");
                    failures += 1;
                    next += 1;
                }
            }
            tokio::time::sleep(backoff.delay(failures)).await;
        }
    })
}

/// One stream's life: hello, then questions until it ends. `Ok` when it ran and was closed.
async fn session(
    uri: &Uri,
    token: Option<&str>,
    node: &NodeInfo,
    handler: &Arc<dyn Handler>,
) -> Result<(), String> {
    let endpoint = Endpoint::from(uri.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| "no connection in time".to_string())?
        .map_err(|e| trellis_api::error_chain(&e))?;
    let mut client = TelemetryClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, out_rx) = mpsc::channel(OUTGOING);
    let hello = ProxyMessage {
        node_id: node.id.clone(),
        namespace: node.namespace.clone(),
        service: node.service.clone(),
        ..ProxyMessage::default()
    };
    out.try_send(hello).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut questions = client
        .open(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let mut taps: HashMap<u64, JoinHandle<()>> = HashMap::new();
    let result = loop {
        match questions.next().await {
            None => break Ok(()),
            Some(Err(s)) => break Err(format!("{}: {}", s.code(), s.message())),
            Some(Ok(q)) => answer(q, handler, &out, &mut taps),
        }
    };
    for (_, t) in taps {
        t.abort();
    }
    result
}

fn answer(
    q: ControlMessage,
    handler: &Arc<dyn Handler>,
    out: &mpsc::Sender<ProxyMessage>,
    taps: &mut HashMap<u64, JoinHandle<()>>,
) {
    taps.retain(|_, t| !t.is_finished());
    match q.kind.as_str() {
        "stat" | "endpoints" => {
            let (handler, out) = (handler.clone(), out.clone());
            tokio::spawn(async move {
                let body = match q.kind.as_str() {
                    "stat" => handler.stat(&q.body_json),
                    _ => handler.endpoints(),
                };
                let _ = out
                    .send(ProxyMessage {
                        id: q.id,
                        body_json: body,
                        done: true,
                        ..ProxyMessage::default()
                    })
                    .await;
            });
        }
        "tap" => {
            let mut events = match handler.tap(&q.body_json) {
                Ok(rx) => rx,
                Err(why) => {
                    let body = serde_json::to_vec(&serde_json::json!({ "error": why }))
                        .unwrap_or_default();
                    let _ = out.try_send(ProxyMessage {
                        id: q.id,
                        body_json: body,
                        done: true,
                        ..ProxyMessage::default()
                    });
                    return;
                }
            };
            let out = out.clone();
            let id = q.id;
            let task = tokio::spawn(async move {
                while let Some(body) = events.recv().await {
                    let m = ProxyMessage {
                        id,
                        body_json: body,
                        ..ProxyMessage::default()
                    };
                    if out.send(m).await.is_err() {
                        return;
                    }
                }
            });
            taps.insert(id, task);
        }
        "stop" => {
            if let Some(t) = taps.remove(&q.id) {
                t.abort();
            }
        }
        _ => {}
    }
}
