//! The replica's end of the telemetry link: the proxies connected here, and the questions in
//! flight to them.
use super::MAX_MESSAGE_BYTES;
use crate::pb::trellis::v1::telemetry_server::{Telemetry, TelemetryServer};
use crate::pb::trellis::v1::{ControlMessage, ProxyMessage};
use crate::server::AuthHook;
use bytes::Bytes;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Questions queued for one proxy; a proxy that falls this far behind is skipped.
const QUESTIONS_PER_PROXY: usize = 64;
/// Answers queued for one question; past it answers are dropped (a tap's reader fell behind).
const ANSWERS_PER_QUESTION: usize = 1024;
/// How long a new stream may take to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Who a connected proxy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    pub node_id: String,
    pub namespace: String,
    pub service: String,
}

/// One proxy's answer to a question.
#[derive(Debug, Clone)]
pub struct Reply {
    pub proxy: Arc<ProxyInfo>,
    pub body: Bytes,
    /// The proxy's last answer to this question.
    pub done: bool,
}

struct Link {
    info: Arc<ProxyInfo>,
    questions: mpsc::Sender<ControlMessage>,
}

#[derive(Default)]
struct Inner {
    links: HashMap<u64, Link>,
    waiting: HashMap<u64, mpsc::Sender<Reply>>,
}

/// The proxies connected to this replica's telemetry service; cheap to clone.
#[derive(Clone)]
pub struct TelemetryHub {
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicU64>,
    auth: Option<AuthHook>,
}

/// A question sent: its answers arrive on `answers`; dropping it stops a tap on every proxy
/// that was asked.
pub struct Asked {
    pub answers: mpsc::Receiver<Reply>,
    /// How many proxies were asked.
    pub asked: usize,
    id: u64,
    hub: TelemetryHub,
    /// The links (proxy streams) to tell to stop when this is dropped: those a tap was sent to;
    /// none for a question answered once.
    to_stop: Vec<u64>,
}

impl Drop for Asked {
    fn drop(&mut self) {
        self.hub.forget(self.id, &self.to_stop);
    }
}

impl TelemetryHub {
    /// A hub whose streams must pass `auth` (the join token), or anyone's with `None`.
    pub fn new(auth: Option<AuthHook>) -> Self {
        TelemetryHub {
            inner: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            auth,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gRPC service to mount beside ADS.
    pub fn service(&self) -> TelemetryServer<TelemetryHub> {
        TelemetryServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The proxies connected now.
    pub fn proxies(&self) -> Vec<Arc<ProxyInfo>> {
        self.lock().links.values().map(|l| l.info.clone()).collect()
    }

    /// Sends a question (`kind` and JSON `body`) to every connected proxy `select` picks. A
    /// proxy whose queue is full is skipped (not counted in [`Asked::asked`]).
    pub fn ask(
        &self,
        select: impl Fn(&ProxyInfo) -> bool,
        kind: &str,
        body: Bytes,
        stop_on_drop: bool,
    ) -> Asked {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(ANSWERS_PER_QUESTION);
        let mut inner = self.lock();
        inner.waiting.insert(id, tx);
        let question = ControlMessage {
            id,
            kind: kind.to_string(),
            body_json: body.to_vec(),
        };
        let sent: Vec<u64> = inner
            .links
            .iter()
            .filter(|(_, l)| select(&l.info))
            .filter(|(_, l)| l.questions.try_send(question.clone()).is_ok())
            .map(|(link, _)| *link)
            .collect();
        drop(inner);
        Asked {
            answers: rx,
            asked: sent.len(),
            id,
            hub: self.clone(),
            to_stop: if stop_on_drop { sent } else { Vec::new() },
        }
    }

    fn forget(&self, id: u64, to_stop: &[u64]) {
        let mut inner = self.lock();
        inner.waiting.remove(&id);
        let stop = ControlMessage {
            id,
            kind: "stop".into(),
            body_json: Vec::new(),
        };
        for link in to_stop.iter().filter_map(|l| inner.links.get(l)) {
            let _ = link.questions.try_send(stop.clone());
        }
    }

    fn deliver(&self, proxy: &Arc<ProxyInfo>, m: ProxyMessage) {
        let inner = self.lock();
        if let Some(tx) = inner.waiting.get(&m.id) {
            let _ = tx.try_send(Reply {
                proxy: proxy.clone(),
                body: Bytes::from(m.body_json),
                done: m.done,
            });
        }
    }

    /// Serves one proxy's stream: waits for its hello, then routes its answers until it ends.
    async fn serve_stream(
        self,
        link_id: u64,
        mut incoming: Streaming<ProxyMessage>,
        questions: mpsc::Sender<ControlMessage>,
    ) {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, incoming.next()).await {
            Ok(Some(Ok(m))) if !m.node_id.is_empty() => m,
            _ => return,
        };
        let info = Arc::new(ProxyInfo {
            node_id: hello.node_id,
            namespace: hello.namespace,
            service: hello.service,
        });
        self.lock().links.insert(
            link_id,
            Link {
                info: info.clone(),
                questions,
            },
        );
        while let Some(Ok(m)) = incoming.next().await {
            self.deliver(&info, m);
        }
        self.lock().links.remove(&link_id);
    }
}

type QuestionStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryHub {
    type OpenStream = QuestionStream;

    async fn open(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        if let Some(auth) = &self.auth {
            auth(request.metadata())?;
        }
        let (tx, rx) = mpsc::channel(QUESTIONS_PER_PROXY);
        let link_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(self.clone().serve_stream(link_id, request.into_inner(), tx));
        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}
