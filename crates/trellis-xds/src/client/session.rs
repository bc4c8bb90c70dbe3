//! One connection to one control-plane replica: connect, open the ADS stream, subscribe to every
//! type (saying what the proxy already holds, so a resync sends only what differs), then turn
//! each response into a candidate, let the [`Applier`] judge it, and ACK or NACK.
//!
//! A session ends when the stream does; it never retries by itself (the caller owns backoff
//! and failover) and never touches the cache except through the applier.
use super::cache::{Applier, Candidate, TypeCache, Verdict};
use super::resources::Held;
use super::{ClientConfig, Discovery, TypeChange};
use crate::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use crate::pb::google::rpc::Status as RpcStatus;
use crate::server::registry::now_ms;
use crate::server::Mode;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status, Streaming};
use trellis_api::error_chain;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;
/// Most decode problems listed in one NACK.
const MAX_ERRORS: usize = 10;

/// How a session ended.
pub(crate) struct SessionEnd {
    /// Whether the server sent at least one response (the connection was good).
    pub received: bool,
    pub error: String,
}

type Client = AggregatedDiscoveryServiceClient<Channel>;

/// A response as `(type URL, nonce, candidate or why it was refused)`.
type Decoded = (String, String, Result<Candidate, String>);

pub(crate) async fn run(uri: &Uri, cfg: &ClientConfig, applier: &mut Applier) -> SessionEnd {
    let endpoint = uri.to_string();
    let channel = match connect(uri, cfg).await {
        Ok(c) => c,
        Err(e) => return end(false, format!("cannot connect to {endpoint}: {e}")),
    };
    let client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(cfg.max_message_bytes)
        .max_encoding_message_size(cfg.max_message_bytes);
    applier.new_session();
    match cfg.mode {
        Mode::Sotw => {
            let initial = initial_sotw(cfg, applier);
            let open = |mut c: Client, r| async move { c.stream_aggregated_resources(r).await };
            drive(
                &endpoint,
                cfg,
                applier,
                client,
                initial,
                open,
                sotw_candidate,
                sotw_reply,
                None,
            )
            .await
        }
        Mode::Delta => {
            let open = |mut c: Client, r| async move { c.delta_aggregated_resources(r).await };
            // Watch for new names before reading the current ones, so none is missed.
            let on_demand = cfg.discovery.as_ref().map(|discovery| OnDemand {
                discovery,
                asked: discovery.asked(),
                named: discovery.wanted(),
                subscribe: delta_subscribe,
                services: delta_services,
            });
            let initial = initial_delta(cfg, applier, on_demand.as_ref().map(|o| &o.named));
            drive(
                &endpoint,
                cfg,
                applier,
                client,
                initial,
                open,
                delta_candidate,
                delta_reply,
                on_demand,
            )
            .await
        }
    }
}

async fn connect(uri: &Uri, cfg: &ClientConfig) -> Result<Channel, String> {
    let endpoint = Endpoint::from(uri.clone())
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(cfg.keepalive_interval)
        .keep_alive_timeout(cfg.keepalive_timeout)
        .keep_alive_while_idle(true);
    match tokio::time::timeout(cfg.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no connection within {:?}", cfg.connect_timeout)),
    }
}

fn end(received: bool, error: String) -> SessionEnd {
    SessionEnd { received, error }
}

/// The Service names a response carries, and the names it removes.
type Named = (Vec<String>, Vec<String>);

/// What a session of an on-demand client does besides answering: send the names the proxy
/// asks for, and report what Service responses said about them.
struct OnDemand<'a, Req, Resp> {
    discovery: &'a Discovery,
    /// Changes of the wanted names.
    asked: watch::Receiver<u64>,
    /// The names this session subscribed to so far.
    named: BTreeSet<String>,
    /// A request subscribing to more Services and unsubscribing from some.
    subscribe: fn(Vec<String>, Vec<String>) -> Req,
    /// For a Service response: the names it carries and the names it removes.
    services: fn(&Resp) -> Option<Named>,
}

/// Opens the stream with `initial` requests queued, then answers responses until it ends.
#[allow(clippy::too_many_arguments)]
async fn drive<Req, Resp, Open, Fut>(
    endpoint: &str,
    cfg: &ClientConfig,
    applier: &mut Applier,
    client: Client,
    initial: Vec<Req>,
    open: Open,
    candidate: fn(Resp, &Applier) -> Decoded,
    reply: fn(Verdict) -> Req,
    on_demand: Option<OnDemand<'_, Req, Resp>>,
) -> SessionEnd
where
    Req: Send + 'static,
    Open: FnOnce(Client, Request<ReceiverStream<Req>>) -> Fut,
    Fut: Future<Output = Result<Response<Streaming<Resp>>, Status>>,
{
    // Room for every initial request plus a burst of replies; replies wait when it is full.
    let (tx, rx) = mpsc::channel(initial.len() + 16);
    for req in initial {
        let _ = tx.try_send(req);
    }
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Some(token) = &cfg.token {
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
    }
    let mut inbound = match tokio::time::timeout(cfg.connect_timeout, open(client, request)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return end(false, format!("{endpoint} refused the stream: {status}")),
        Err(_) => {
            return end(
                false,
                format!("{endpoint} did not answer within {:?}", cfg.connect_timeout),
            )
        }
    };
    applier.status().send_modify(|s| {
        s.endpoint = Some(endpoint.to_string());
        s.connected_since_unix_ms = Some(now_ms());
        s.connects += 1;
        // The connect error that ended the last session is history now (a NACK stays in
        // `last_nack`).
        s.last_error = None;
    });
    tracing::info!(endpoint, "connected to the control plane");
    let mut received = false;
    let mut on_demand = on_demand;
    loop {
        let more = async {
            match on_demand.as_mut() {
                Some(o) => o.asked.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let response = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(r)) => r,
                Ok(None) => return end(received, format!("{endpoint} closed the stream")),
                Err(status) => {
                    return end(received, format!("stream to {endpoint} failed: {status}"))
                }
            },
            alive = more => {
                let Some(o) = on_demand.as_mut().filter(|_| alive) else {
                    on_demand = None;
                    continue;
                };
                let wanted = o.discovery.wanted();
                let new: Vec<String> = wanted.difference(&o.named).cloned().collect();
                let gone: Vec<String> = o.named.difference(&wanted).cloned().collect();
                if !new.is_empty() || !gone.is_empty() {
                    o.named = wanted;
                    if tx.send((o.subscribe)(new, gone)).await.is_err() {
                        return end(received, format!("stream to {endpoint} closed"));
                    }
                }
                continue;
            }
        };
        received = true;
        let services = on_demand.as_ref().and_then(|o| (o.services)(&response));
        if let (Some(o), Some((present, removed))) = (&on_demand, &services) {
            o.discovery.record(present, removed);
        }
        let (type_url, nonce, result) = candidate(response, applier);
        let verdicts = applier.receive(type_url, nonce, result, endpoint);
        if let (Some(o), Some(_)) = (&on_demand, &services) {
            o.discovery.answered();
        }
        for verdict in verdicts {
            if tx.send(reply(verdict)).await.is_err() {
                return end(received, format!("stream to {endpoint} closed"));
            }
        }
    }
}

fn delta_subscribe(names: Vec<String>, gone: Vec<String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: crate::resource::SERVICE.to_string(),
        resource_names_subscribe: names,
        resource_names_unsubscribe: gone,
        ..Default::default()
    }
}

fn delta_services(r: &DeltaDiscoveryResponse) -> Option<Named> {
    (r.type_url == crate::resource::SERVICE).then(|| {
        (
            r.resources.iter().map(|x| x.name.clone()).collect(),
            r.removed_resources.clone(),
        )
    })
}

fn initial_sotw(cfg: &ClientConfig, applier: &Applier) -> Vec<DiscoveryRequest> {
    applier
        .types()
        .iter()
        .enumerate()
        .map(|(i, t)| DiscoveryRequest {
            version_info: applier.version(t),
            node: (i == 0).then(|| cfg.node.to_node()),
            type_url: t.clone(),
            ..Default::default()
        })
        .collect()
}

fn initial_delta(
    cfg: &ClientConfig,
    applier: &Applier,
    named: Option<&BTreeSet<String>>,
) -> Vec<DeltaDiscoveryRequest> {
    applier
        .types()
        .iter()
        .enumerate()
        .map(|(i, t)| DeltaDiscoveryRequest {
            node: (i == 0).then(|| cfg.node.to_node()),
            type_url: t.clone(),
            initial_resource_versions: applier.resource_versions(t),
            // An on-demand client names its Services (never an empty list: that is a wildcard).
            resource_names_subscribe: match named {
                Some(names) if t == crate::resource::SERVICE => names.iter().cloned().collect(),
                _ => Vec::new(),
            },
            ..Default::default()
        })
        .collect()
}

fn nack_detail(error: String) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: INVALID_ARGUMENT,
        message: error,
        details: Vec::new(),
    })
}

fn sotw_reply(v: Verdict) -> DiscoveryRequest {
    match v {
        Verdict::Ack {
            type_url,
            nonce,
            version,
        } => DiscoveryRequest {
            version_info: version,
            type_url,
            response_nonce: nonce,
            ..Default::default()
        },
        Verdict::Nack {
            type_url,
            nonce,
            version,
            error,
        } => DiscoveryRequest {
            version_info: version,
            type_url,
            response_nonce: nonce,
            error_detail: nack_detail(error),
            ..Default::default()
        },
    }
}

fn delta_reply(v: Verdict) -> DeltaDiscoveryRequest {
    match v {
        Verdict::Ack {
            type_url, nonce, ..
        } => DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            ..Default::default()
        },
        Verdict::Nack {
            type_url,
            nonce,
            error,
            ..
        } => DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail: nack_detail(error),
            ..Default::default()
        },
    }
}

/// Collects decode problems, a bounded number of them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: String) {
        if self.0.len() < MAX_ERRORS {
            self.0.push(p);
        }
    }

    fn into_result<T>(self, ok: T) -> Result<T, String> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// A state-of-the-world response: every resource of the type. A resource whose version (a digest
/// of its bytes) the proxy already holds is taken from the cache as it is, not decoded again.
pub(super) fn sotw_candidate(r: DiscoveryResponse, applier: &Applier) -> Decoded {
    let t = r.type_url;
    if !applier.subscribes(&t) {
        let e = format!("not subscribed to {t}");
        return (t, r.nonce, Err(e));
    }
    let previous = applier.base(&t).resources;
    let held: HashMap<&str, (&String, &Held)> = previous
        .iter()
        .map(|(name, h)| (&*h.version, (name, h)))
        .collect();
    let mut problems = Problems::default();
    let mut resources = previous.clone();
    let mut seen = BTreeSet::new();
    let mut change = TypeChange {
        type_url: t.clone(),
        version: r.version_info.clone(),
        updated: Vec::new(),
        removed: Vec::new(),
    };
    for any in &r.resources {
        if any.type_url != t {
            problems.push(format!("a {t} response holds a {} resource", any.type_url));
            continue;
        }
        let version = crate::server::VersionedResource::new(any.clone()).version;
        let (name, fresh) = match held.get(version.as_str()) {
            Some((name, _)) => ((*name).clone(), None),
            None => match crate::decode(any) {
                Ok(resource) => (crate::resource_name(&resource), Some(resource)),
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            },
        };
        if !seen.insert(name.clone()) {
            problems.push(format!("{t}: resource {name:?} appears twice"));
            continue;
        }
        if let Some(resource) = fresh {
            let h = Held {
                version: Arc::from(version),
                resource: Arc::new(resource),
            };
            resources.insert(name.clone(), h);
            change.updated.push(name);
        }
    }
    for name in previous.keys() {
        if !seen.contains(name) {
            resources.remove(name);
            change.removed.push(name.clone());
        }
    }
    change.updated.sort();
    let state = TypeCache {
        version: r.version_info,
        resources,
    };
    (
        t,
        r.nonce,
        problems.into_result(Candidate { state, change }),
    )
}

pub(super) fn delta_candidate(r: DeltaDiscoveryResponse, applier: &Applier) -> Decoded {
    let t = r.type_url;
    if !applier.subscribes(&t) {
        let e = format!("not subscribed to {t}");
        return (t, r.nonce, Err(e));
    }
    let mut problems = Problems::default();
    let mut state = applier.base(&t);
    let mut change = TypeChange {
        type_url: t.clone(),
        version: r.system_version_info.clone(),
        updated: Vec::new(),
        removed: Vec::new(),
    };
    for res in r.resources {
        if state.resources.get(&res.name).map(|c| &*c.version) == Some(res.version.as_str()) {
            continue;
        }
        let Some(any) = res.resource else {
            problems.push(format!("{t}: resource {:?} has no body", res.name));
            continue;
        };
        if any.type_url != t {
            problems.push(format!("a {t} response holds a {} resource", any.type_url));
            continue;
        }
        match crate::resource::decode_named(&any, Some(&res.name)) {
            Ok(resource) => {
                let cached = Held {
                    version: Arc::from(res.version),
                    resource: Arc::new(resource),
                };
                state.resources.insert(res.name.clone(), cached);
                change.updated.push(res.name);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    for name in r.removed_resources {
        if state.resources.remove(&name).is_some() {
            change.removed.push(name);
        }
    }
    state.version = r.system_version_info;
    (
        t,
        r.nonce,
        problems.into_result(Candidate { state, change }),
    )
}
