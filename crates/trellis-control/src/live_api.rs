//! `GET /api/v1/stat` and `GET /api/v1/tap`: live numbers and live requests from the proxies,
//! whichever replica each is connected to.
//!
//! A replica asks the proxies connected to it over their telemetry streams
//! (`trellis_xds::telemetry`), and asks every other live replica (from the heartbeats in the
//! shared store, [`crate::mesh_status`]) for theirs with the same call and `local=true`, then
//! merges. So any replica answers for the whole mesh, with no store writes per request and
//! nothing flowing while nobody asks. A replica that cannot be reached is named in the answer,
//! not papered over.
use crate::api::{ApiError, ApiState};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use trellis_api::telemetry::{
    merge_rows, quantile, Lines, StatAnswer, StatQuery, StatRow, TapFilter, MAX_WINDOW_SECS,
};
use trellis_xds::telemetry::{ProxyInfo, TelemetryHub};

/// How long a stat query waits for proxies (and a replica for its peers).
const PROXY_TIMEOUT: Duration = Duration::from_secs(3);
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// A tap's stream carries an empty line this often, so a reader that left is noticed (the write
/// fails) and the tap is stopped on every proxy.
const TAP_HEARTBEAT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatParams {
    /// Seconds; 60 when absent.
    window: Option<u32>,
    direction: Option<String>,
    to: Option<String>,
    from: Option<String>,
    /// Only the proxies of this namespace.
    namespace: Option<String>,
    /// Only this replica's proxies (what replicas ask each other).
    #[serde(default)]
    local: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapParams {
    /// The service whose proxies tap.
    service: String,
    namespace: Option<String>,
    direction: Option<String>,
    to: Option<String>,
    path: Option<String>,
    method: Option<String>,
    max_per_second: Option<u32>,
    #[serde(default)]
    local: bool,
}

fn direction(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d.as_deref() {
        None | Some("") => Ok(None),
        Some("inbound" | "outbound") => Ok(d),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("direction {other:?}: expected inbound or outbound"),
        )),
    }
}

fn hub(s: &ApiState) -> Result<&TelemetryHub, ApiError> {
    s.telemetry.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this control plane has no telemetry link",
        )
    })
}

/// `GET /api/v1/stat`: every matching edge over the window, merged across proxies and
/// replicas, with success rate, request rate and latency percentiles.
pub async fn stat(
    State(s): State<Arc<ApiState>>,
    Query(p): Query<StatParams>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let window = p.window.unwrap_or(MAX_WINDOW_SECS);
    if !(1..=MAX_WINDOW_SECS).contains(&window) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "window {window}s: between 1 and {MAX_WINDOW_SECS} seconds (what proxies keep)"
            ),
        ));
    }
    let query = StatQuery {
        window_secs: window,
        direction: direction(p.direction)?,
        to: p.to.filter(|t| !t.is_empty()),
        from: p.from.filter(|f| !f.is_empty()),
    };
    let namespace = p.namespace.filter(|n| !n.is_empty());
    let g = gather_stat(&s, &query, namespace, p.local, &uri).await?;
    let rows: Vec<Value> = g.rows.iter().map(with_golden_numbers).collect();
    Ok(Json(json!({
        "windowSecs": window,
        "proxiesAsked": g.proxies_asked,
        "proxiesAnswered": g.proxies_answered,
        "replicas": g.replicas,
        "rows": rows,
    })))
}

/// What the proxies (of every live replica) said to one stat query, merged.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Listed in edge order: namespace, service, direction, source, route.
    pub rows: Vec<StatRow>,
    pub proxies_asked: usize,
    pub proxies_answered: usize,
    /// `{"id", "error"}` per other replica asked.
    pub replicas: Vec<Value>,
}

/// Asks this replica's proxies (of `namespace`, or all) and, unless `local`, every other live
/// replica (the same `uri` marked local) for `query`, and merges their rows. Shared by
/// `GET /api/v1/stat` and the dashboard, so both count the same way.
pub async fn gather_stat(
    s: &ApiState,
    query: &StatQuery,
    namespace: Option<String>,
    local: bool,
    uri: &axum::http::Uri,
) -> Result<Gathered, ApiError> {
    let body = Bytes::from(serde_json::to_vec(query).unwrap_or_default());
    let select = move |i: &ProxyInfo| namespace.as_deref().is_none_or(|n| n == i.namespace);
    let mut asked = hub(s)?.ask(select, "stat", body, false);
    let mut rows: Vec<StatRow> = Vec::new();
    let (mut answered, mut asked_total) = (0usize, asked.asked);
    let deadline = tokio::time::sleep(PROXY_TIMEOUT);
    tokio::pin!(deadline);
    while answered < asked.asked {
        tokio::select! {
            reply = asked.answers.recv() => {
                let Some(reply) = reply else { break };
                answered += 1;
                if let Ok(a) = serde_json::from_slice::<StatAnswer>(&reply.body) {
                    rows.extend(a.rows);
                }
            }
            () = &mut deadline => break,
        }
    }
    drop(asked);
    let mut replicas = Vec::new();
    if !local {
        for (id, result) in ask_peers(s, uri, PEER_TIMEOUT).await {
            match result.and_then(|v| peer_stat(&v)) {
                Ok((peer_rows, peer_asked, peer_answered)) => {
                    rows.extend(peer_rows);
                    asked_total += peer_asked;
                    answered += peer_answered;
                    replicas.push(json!({ "id": id, "error": null }));
                }
                Err(e) => replicas.push(json!({ "id": id, "error": e })),
            }
        }
    }
    Ok(Gathered {
        rows: merge_rows(rows),
        proxies_asked: asked_total,
        proxies_answered: answered,
        replicas,
    })
}

/// A row as the API shows it: the raw counts (so a replica can merge them again) plus success
/// rate and percentiles in milliseconds.
fn with_golden_numbers(r: &StatRow) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    let ms = |q| quantile(&r.latency_buckets, q).map(|s| s * 1000.0);
    v["successRate"] = json!(r.success_rate());
    v["p50Ms"] = json!(ms(0.5));
    v["p95Ms"] = json!(ms(0.95));
    v["p99Ms"] = json!(ms(0.99));
    v
}

type PeerStat = (Vec<StatRow>, usize, usize);

fn peer_stat(v: &Value) -> Result<PeerStat, String> {
    let rows = serde_json::from_value::<Vec<StatRow>>(v["rows"].clone())
        .map_err(|e| format!("unreadable answer: {e}"))?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
    Ok((rows, n("proxiesAsked"), n("proxiesAnswered")))
}

/// The other live replicas' API addresses (empty with an embedded store).
async fn peers(s: &ApiState) -> Vec<(String, String)> {
    match &s.status {
        Some(status) => status.live_peers().await,
        None => Vec::new(),
    }
}

/// `uri`'s query with `local=true`, for a peer.
fn local_query(uri: &axum::http::Uri) -> String {
    let q = uri.query().unwrap_or("");
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("local="))
        .collect();
    let mut out = kept.join("&");
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str("local=true");
    out
}

fn peer_request(
    s: &ApiState,
    api: &str,
    uri: &axum::http::Uri,
) -> Result<http::Request<Empty<Bytes>>, String> {
    http::Request::get(format!("http://{api}{}?{}", uri.path(), local_query(uri)))
        .header("authorization", format!("Bearer {}", s.ca.token().expose()))
        .body(Empty::new())
        .map_err(|e| e.to_string())
}

/// Asks every other live replica the same question with `local=true`: (replica id, its JSON
/// answer or why there is none).
async fn ask_peers(
    s: &ApiState,
    uri: &axum::http::Uri,
    timeout: Duration,
) -> Vec<(String, Result<Value, String>)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let calls = peers(s).await.into_iter().map(|(id, api)| {
        let request = peer_request(s, &api, uri);
        let client = client.clone();
        async move {
            let call = async {
                let rsp = client
                    .request(request?)
                    .await
                    .map_err(|e| trellis_api::error_chain(&e))?;
                let status = rsp.status();
                let body = rsp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
                }
                serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
            };
            let result = tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            (format!("{id} ({api})"), result)
        }
    });
    futures_util::future::join_all(calls).await
}

/// `GET /api/v1/tap`: a stream of newline-delimited JSON: first `{"tap": {...}}` (how many
/// proxies tap, replicas that could not), then `{"event": {...}}` per request, and an empty
/// line every couple of seconds. Closing the connection stops the tap everywhere.
pub async fn tap(
    State(s): State<Arc<ApiState>>,
    Query(p): Query<TapParams>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    if p.service.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "service: which service's proxies to tap",
        ));
    }
    let filter = TapFilter {
        direction: direction(p.direction)?,
        to: p.to.filter(|t| !t.is_empty()),
        path_prefix: p.path.filter(|t| !t.is_empty()),
        method: p.method.filter(|t| !t.is_empty()),
        max_per_second: p.max_per_second.unwrap_or(100).clamp(1, 10_000),
    };
    let body = Bytes::from(serde_json::to_vec(&filter).unwrap_or_default());
    let (service, namespace) = (p.service.clone(), p.namespace.clone());
    let select = move |i: &ProxyInfo| {
        i.service == service && namespace.as_deref().is_none_or(|n| n == i.namespace)
    };
    let mut asked = hub(&s)?.ask(select, "tap", body, true);
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut proxies = asked.asked;
    let mut replicas = Vec::new();
    let mut peer_streams = Vec::new();
    if !p.local {
        // Every peer at once: a replica that is slow to answer delays the tap by one timeout,
        // not one per replica.
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let opens = peers(&s).await.into_iter().map(|(id, api)| {
            let (client, s, uri) = (client.clone(), s.clone(), uri.clone());
            async move {
                let name = format!("{id} ({api})");
                let opened = open_peer_tap(&client, &s, &api, &uri);
                match tokio::time::timeout(PEER_TIMEOUT, opened).await {
                    Ok(result) => (name, result),
                    Err(_) => (name, Err("no answer in time".to_string())),
                }
            }
        });
        for (name, result) in futures_util::future::join_all(opens).await {
            match result {
                Ok(tap) => {
                    proxies += tap.proxies;
                    replicas.push(json!({ "id": name, "error": null }));
                    peer_streams.push(tap);
                }
                Err(e) => replicas.push(json!({ "id": name, "error": e })),
            }
        }
    }
    // Each peer's events pass through.
    for PeerTap {
        mut lines,
        mut frames,
        ..
    } in peer_streams
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                while let Some(line) = lines.next_line() {
                    if line.is_empty() {
                        // The peer's heartbeat: the moment to notice our reader left.
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                    let mut l = line;
                    l.push(b'\n');
                    if tx.send(Bytes::from(l)).await.is_err() {
                        return;
                    }
                }
                match frames.next().await {
                    Some(Ok(chunk)) => lines.push(&chunk),
                    _ => return,
                }
            }
        });
    }
    let header = json!({ "tap": { "proxies": proxies, "replicas": replicas } });
    let mut first = serde_json::to_vec(&header).unwrap_or_default();
    first.push(b'\n');
    let local_tx = tx;
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(TAP_HEARTBEAT);
        beat.tick().await;
        loop {
            let line = tokio::select! {
                reply = asked.answers.recv() => match reply {
                    Some(r) => {
                        let mut l = Vec::with_capacity(r.body.len() + 11);
                        l.extend_from_slice(b"{\"event\":");
                        l.extend_from_slice(&r.body);
                        l.extend_from_slice(b"}\n");
                        Bytes::from(l)
                    }
                    None => return,
                },
                _ = beat.tick() => Bytes::from_static(b"\n"),
            };
            if local_tx.send(line).await.is_err() {
                // The reader left: dropping `asked` stops the tap on every proxy.
                return;
            }
        }
    });
    let stream = futures_util::stream::once(async move { Bytes::from(first) })
        .chain(tokio_stream::wrappers::ReceiverStream::new(rx))
        .map(Ok::<_, std::convert::Infallible>);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A peer replica's tap stream, past its first line.
struct PeerTap {
    /// How many proxies the peer taps (its first line says).
    proxies: usize,
    lines: Lines,
    frames: http_body_util::BodyDataStream<hyper::body::Incoming>,
}

/// Opens the same tap on a peer replica (marked local) and reads its first line.
async fn open_peer_tap(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    s: &ApiState,
    api: &str,
    uri: &axum::http::Uri,
) -> Result<PeerTap, String> {
    let rsp = client
        .request(peer_request(s, api, uri)?)
        .await
        .map_err(|e| trellis_api::error_chain(&e))?;
    if !rsp.status().is_success() {
        return Err(format!("{}", rsp.status()));
    }
    let mut lines = Lines::default();
    let mut frames = rsp.into_body().into_data_stream();
    let first = loop {
        if let Some(line) = lines.next_line() {
            break line;
        }
        match frames.next().await {
            Some(Ok(chunk)) => lines.push(&chunk),
            _ => return Err("no tap header".into()),
        }
    };
    let proxies = serde_json::from_slice::<Value>(&first)
        .ok()
        .and_then(|v| v["tap"]["proxies"].as_u64())
        .ok_or("no tap header")?;
    Ok(PeerTap {
        proxies: proxies as usize,
        lines,
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_the_same_question_marked_local() {
        let uri: axum::http::Uri = "/api/v1/stat?window=30&to=ratings&local=false"
            .parse()
            .unwrap();
        assert_eq!(local_query(&uri), "window=30&to=ratings&local=true");
        let bare: axum::http::Uri = "/api/v1/stat".parse().unwrap();
        assert_eq!(local_query(&bare), "local=true");
    }
}
