//! One ADS stream, whichever flavour: authenticate, read the node from the first request,
//! subscribe to its view, then react to three things — a request from the proxy, a new view from
//! the control plane, room in the outgoing queue — until the stream ends.
//!
//! Bounded by construction: responses go through an mpsc of `stream_buffer` slots, and a response
//! is built only when a slot is free, from the view current at that moment. A proxy that reads
//! slowly therefore gets fewer, newer responses; it never makes the server queue stale ones.
//! The stream must never block on the proxy while reading its requests, so ACKs and
//! subscription changes are processed even when the outgoing queue is full.
use super::registry::{Mode, NodeHandle};
use super::view::{digest, NodeAuth, Scope, TypeResources, VersionedResource, View};
use super::Shared;
use crate::node::NodeInfo;
use crate::pb::envoy::config::core::v3::{ControlPlane, Node};
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Most distinct type URLs one stream may subscribe to.
pub const MAX_TYPES_PER_STREAM: usize = 64;
/// Most explicitly subscribed names per type.
pub const MAX_NAMES_PER_TYPE: usize = 10_000;

/// What a flavour of ADS (state of the world or delta) decides; the loop in [`run`] drives it.
pub(crate) trait Protocol: Sized + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    const MODE: Mode;

    fn node(req: &Self::Request) -> Option<&Node>;
    fn new(node: NodeHandle, control_plane: Option<ControlPlane>) -> Self;
    /// A request from the proxy: a subscription, an ACK or a NACK.
    fn on_request(&mut self, req: Self::Request, view: &View) -> Result<(), Status>;
    /// The control plane replaced the node's view.
    fn on_view(&mut self, view: &View);
    /// Whether some type may need a response.
    fn wants_to_send(&self) -> bool;
    /// The next response, built from `view`; `None` when nothing actually differs.
    fn next_response(&mut self, view: &View) -> Option<Self::Response>;
    /// Which Services the stream subscribed to.
    fn service_scope(&self) -> ServiceScope {
        ServiceScope::NotYet
    }
}

/// A stream's Service subscription, as an on-demand node's view follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServiceScope {
    /// No Service request yet.
    NotYet,
    /// A wildcard: every Service the node may call.
    All,
    /// These names only.
    Named(Scope),
}

pub(crate) type ResponseStream<R> = ReceiverStream<Result<R, Status>>;

/// Authenticates and starts a stream; the work happens in a task of its own.
pub(crate) fn start<P: Protocol>(
    shared: Arc<Shared>,
    request: Request<Streaming<P::Request>>,
) -> Result<Response<ResponseStream<P::Response>>, Status>
where
    Streaming<P::Request>: Send,
{
    let auth = match &shared.config.auth {
        Some(hook) => hook(request.metadata())?,
        None => Default::default(),
    };
    let peer = request.remote_addr();
    let inbound = request.into_inner();
    let (tx, rx) = mpsc::channel(shared.config.stream_buffer.max(1));
    tokio::spawn(async move {
        let Some(first) = first_request::<P>(&shared, inbound, &tx, peer).await else {
            return;
        };
        let (first, inbound) = first;
        let node = match P::node(&first).map(NodeInfo::from_node) {
            Some(Ok(node)) => node,
            Some(Err(e)) => return finish(&tx, Status::invalid_argument(e.to_string())).await,
            None => {
                let e = crate::node::NodeError::MissingId;
                return finish(&tx, Status::invalid_argument(e.to_string())).await;
            }
        };
        // An on-demand node starts with nothing but its own; what it names comes later.
        let on_demand = P::MODE == Mode::Delta && node.on_demand();
        let subscribed = if on_demand {
            shared.source.subscribe_scoped(&node, &auth, &Scope::new())
        } else {
            shared.source.subscribe(&node, &auth)
        };
        let views = match subscribed {
            Ok(views) => views,
            Err(status) => {
                tracing::warn!(node = %node.id, %status, "control plane refused the node");
                return finish(&tx, status).await;
            }
        };
        tracing::debug!(node = %node.id, service = %node.service, mode = ?P::MODE, "xDS stream opened");
        let handle = shared
            .registry
            .register(node.clone(), P::MODE, auth.principal.clone(), peer);
        let control_plane = (!shared.config.control_plane_id.is_empty()).then(|| ControlPlane {
            identifier: shared.config.control_plane_id.clone(),
        });
        let proto = P::new(handle, control_plane);
        let scoped = on_demand.then(|| Scoped {
            node,
            auth,
            scope: Some(Scope::new()),
        });
        run(shared, proto, first, inbound, views, scoped, tx).await;
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}

type Tx<R> = mpsc::Sender<Result<R, Status>>;

/// Waits (bounded) for the request that names the node.
async fn first_request<P: Protocol>(
    shared: &Shared,
    mut inbound: Streaming<P::Request>,
    tx: &Tx<P::Response>,
    peer: Option<std::net::SocketAddr>,
) -> Option<(P::Request, Streaming<P::Request>)> {
    let wait = shared.config.first_request_timeout;
    match tokio::time::timeout(wait, inbound.message()).await {
        Ok(Ok(Some(req))) => Some((req, inbound)),
        Ok(Ok(None)) => None,
        Ok(Err(status)) => {
            tracing::warn!(?peer, %status, "xDS stream failed before its first request");
            finish(tx, unreadable(&status)).await;
            None
        }
        Err(_) => {
            let msg = format!("no discovery request within {wait:?} of opening the stream");
            finish(tx, Status::deadline_exceeded(msg)).await;
            None
        }
    }
}

/// An on-demand node's stream: who it is, and the scope its current view was computed for.
struct Scoped {
    node: NodeInfo,
    auth: NodeAuth,
    scope: Option<Scope>,
}

type Views = tokio::sync::watch::Receiver<Arc<View>>;

impl Scoped {
    /// After a request: a new view when the Services the stream names changed.
    fn rescope<P: Protocol>(
        &mut self,
        shared: &Shared,
        proto: &P,
    ) -> Result<Option<Views>, Status> {
        let scope = match proto.service_scope() {
            ServiceScope::NotYet => return Ok(None),
            ServiceScope::All => None,
            ServiceScope::Named(names) => Some(names),
        };
        if scope == self.scope {
            return Ok(None);
        }
        let views = match &scope {
            Some(s) => shared.source.subscribe_scoped(&self.node, &self.auth, s)?,
            // A wildcard Service subscription: the node asked for everything after all.
            None => shared.source.subscribe(&self.node, &self.auth)?,
        };
        self.scope = scope;
        Ok(Some(views))
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<P: Protocol>(
    shared: Arc<Shared>,
    mut proto: P,
    first: P::Request,
    mut inbound: Streaming<P::Request>,
    mut views: Views,
    mut scoped: Option<Scoped>,
    tx: Tx<P::Response>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow_and_update() {
        let msg = "control plane is shutting down; reconnect to another replica";
        return finish(&tx, Status::unavailable(msg)).await;
    }
    let mut view = views.borrow_and_update().clone();
    if let Err(status) = proto.on_request(first, &view) {
        return finish(&tx, status).await;
    }
    // Swaps in a new view when an on-demand stream's named Services changed.
    macro_rules! rescope {
        () => {
            if let Some(s) = scoped.as_mut() {
                match s.rescope(&shared, &proto) {
                    Ok(Some(next)) => {
                        views = next;
                        view = views.borrow_and_update().clone();
                        proto.on_view(&view);
                    }
                    Ok(None) => {}
                    Err(status) => return finish(&tx, status).await,
                }
            }
        };
    }
    rescope!();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let msg = "control plane is shutting down; reconnect to another replica";
                return finish(&tx, Status::unavailable(msg)).await;
            }
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if let Err(status) = proto.on_request(req, &view) {
                        tracing::warn!(%status, "closing xDS stream: bad request");
                        return finish(&tx, status).await;
                    }
                    rescope!();
                }
                Ok(None) => return,
                Err(status) if gone(&status) => {
                    tracing::info!(%status, "xDS stream ended: the proxy went away");
                    return;
                }
                Err(status) => {
                    tracing::warn!(%status, "xDS stream failed");
                    return finish(&tx, unreadable(&status)).await;
                }
            },
            changed = views.changed() => {
                if changed.is_err() {
                    let msg = "the control plane no longer serves this node";
                    return finish(&tx, Status::unavailable(msg)).await;
                }
                view = views.borrow_and_update().clone();
                proto.on_view(&view);
            }
            permit = tx.reserve(), if proto.wants_to_send() => match permit {
                Ok(permit) => {
                    if let Some(resp) = proto.next_response(&view) {
                        permit.send(Ok(resp));
                    }
                }
                Err(_) => return,
            },
        }
    }
}

/// The status for a request that could not be read (not protobuf, too large, reset); the
/// proxy may be gone already, in which case nobody reads it.
fn unreadable(status: &Status) -> Status {
    Status::invalid_argument(format!(
        "cannot read the discovery request: {}",
        status.message()
    ))
}

/// Ends the stream with `status`, without waiting long on a proxy that does not read.
async fn finish<R>(tx: &Tx<R>, status: Status) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
}

static EMPTY: LazyLock<Arc<TypeResources>> = LazyLock::new(Default::default);

/// The resources of `type_url` in `view`; empty when the view has none of that type.
pub(crate) fn resources_of(view: &View, type_url: &str) -> Arc<TypeResources> {
    view.get(type_url).cloned().unwrap_or_else(|| EMPTY.clone())
}

/// Which names of a type a stream wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
}

impl Subscription {
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The wanted resources present in `res`, in name order.
    pub fn select<'a>(
        &'a self,
        res: &'a TypeResources,
    ) -> Box<dyn Iterator<Item = (&'a String, &'a VersionedResource)> + 'a> {
        if self.wildcard {
            Box::new(res.resources().iter().map(|(n, r)| (n, &**r)))
        } else {
            Box::new(
                self.names
                    .iter()
                    .filter_map(|n| res.resources().get_key_value(n))
                    .map(|(n, r)| (n, &**r)),
            )
        }
    }

    /// The version of what the subscription selects.
    pub fn version(&self, res: &TypeResources) -> String {
        if self.wildcard {
            res.version().to_string()
        } else {
            digest(self.select(res))
        }
    }
}

/// Per-type state of a stream, kept in send order (see [`crate::TYPE_URLS`]).
#[derive(Debug)]
pub(crate) struct Types<S> {
    entries: Vec<(String, S)>,
}

impl<S> Default for Types<S> {
    fn default() -> Self {
        Types {
            entries: Vec::new(),
        }
    }
}

fn rank(type_url: &str) -> (usize, &str) {
    let known = crate::TYPE_URLS.iter().position(|t| *t == type_url);
    (known.unwrap_or(crate::TYPE_URLS.len()), type_url)
}

impl<S> Types<S> {
    /// The state of `type_url`, created by `init` on first sight; `true` when new.
    pub fn get_or_insert(
        &mut self,
        type_url: &str,
        init: impl FnOnce() -> S,
    ) -> Result<(&mut S, bool), Status> {
        if type_url.is_empty() {
            return Err(Status::invalid_argument("request has an empty type_url"));
        }
        match self
            .entries
            .binary_search_by(|(t, _)| rank(t).cmp(&rank(type_url)))
        {
            Ok(i) => Ok((&mut self.entries[i].1, false)),
            Err(i) => {
                if self.entries.len() >= MAX_TYPES_PER_STREAM {
                    return Err(Status::resource_exhausted(format!(
                        "a stream may subscribe to at most {MAX_TYPES_PER_STREAM} types"
                    )));
                }
                self.entries.insert(i, (type_url.to_string(), init()));
                Ok((&mut self.entries[i].1, true))
            }
        }
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut S)> {
        self.entries.iter_mut().map(|(t, s)| (&*t, s))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &S)> {
        self.entries.iter().map(|(t, s)| (t, s))
    }
}

/// Applies subscribe/unsubscribe lists (delta) or a replacement list (SotW) within limits.
pub(crate) fn check_names(sub: &Subscription) -> Result<(), Status> {
    if sub.names.len() > MAX_NAMES_PER_TYPE {
        return Err(Status::resource_exhausted(format!(
            "a stream may subscribe to at most {MAX_NAMES_PER_TYPE} names per type"
        )));
    }
    Ok(())
}

/// Nonces are unique per stream; a counter is enough.
#[derive(Debug, Default)]
pub(crate) struct Nonces(u64);

impl Nonces {
    pub fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

/// A stream error that only means the proxy's connection is gone (it exited, was killed, or its
/// network went away): normal in a mesh, not worth a warning.
fn gone(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled)
        && (status.message().contains("error reading a body")
            || status.message().contains("broken pipe")
            || status.message().contains("connection reset"))
}
