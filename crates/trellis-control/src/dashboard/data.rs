//! The JSON the dashboard reads: the topology over a window, one service's page, the control
//! plane's status (replicas, store, proxies and their config rejections), and a tap.
//!
//! The numbers come from [`crate::live_api::gather_stat`] (what `trellis stat` shows) and the
//! status from [`crate::mesh_status`] (what `trellis check` shows). A topology is kept for
//! [`CACHE_FOR`], so any number of open dashboards cost the proxies one question per window
//! and period, not one per viewer.
use super::ejections::Ejection;
use super::{service_page, topology, Shared};
use crate::api::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_api::telemetry::{StatQuery, MAX_WINDOW_SECS};

/// How long a computed topology is served again.
pub const CACHE_FOR: Duration = Duration::from_millis(900);
/// How long a store probe may take before the store is called unreachable.
const STORE_PROBE: Duration = Duration::from_secs(2);

/// The latest topology per window, as JSON text (served as is, never re-encoded), and the
/// latest ejections the proxies reported (a service page reuses them while fresh).
#[derive(Default)]
pub struct TopologyCache(
    Mutex<HashMap<u32, (Instant, Bytes)>>,
    Mutex<Option<(Instant, Arc<Vec<Ejection>>)>>,
);

/// How long reported ejections are reused by service pages.
const EJECTIONS_FOR: Duration = Duration::from_secs(3);

/// The proxies' ejections, reused while fresh.
async fn ejections(s: &Shared) -> Arc<Vec<Ejection>> {
    if let Some((at, e)) = &*s.cache.1.lock().unwrap_or_else(|e| e.into_inner()) {
        if at.elapsed() < EJECTIONS_FOR {
            return e.clone();
        }
    }
    let e = Arc::new(super::ejections::gather(&s.api).await);
    *s.cache.1.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), e.clone()));
    e
}

#[derive(Debug, Deserialize)]
pub struct WindowQuery {
    window: Option<u32>,
}

/// A window in seconds from the query (default 60), clamped to what proxies keep.
pub fn window(w: Option<u32>) -> u32 {
    w.unwrap_or(MAX_WINDOW_SECS).clamp(1, MAX_WINDOW_SECS)
}

/// The topology with how many proxies answered and which replicas did not.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    #[serde(flatten)]
    topology: &'a topology::Topology,
    proxies_asked: usize,
    proxies_answered: usize,
    replicas: &'a [Value],
}

/// The topology over `window` seconds as JSON, from the cache when it is fresh.
pub async fn topology_json(s: &Shared, window: u32) -> Result<Bytes, ApiError> {
    if let Some((at, v)) = s
        .cache
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&window)
    {
        if at.elapsed() < CACHE_FOR {
            return Ok(v.clone());
        }
    }
    let query = StatQuery {
        window_secs: window,
        ..StatQuery::default()
    };
    let uri: Uri = format!("/api/v1/stat?window={window}")
        .parse()
        .unwrap_or_default();
    let (g, ejected) = tokio::join!(
        crate::live_api::gather_stat(&s.api, &query, None, false, &uri),
        ejections(s),
    );
    let g = g?;
    let model = s.api.model.borrow().clone();
    let mut topo = topology::build(&model, &g.rows, window);
    topology::mark_ejected(&mut topo, &ejected);
    let answer = Answer {
        topology: &topo,
        proxies_asked: g.proxies_asked,
        proxies_answered: g.proxies_answered,
        replicas: &g.replicas,
    };
    let json = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
    s.cache
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(window, (Instant::now(), json.clone()));
    Ok(json)
}

/// `GET /dashboard/api/topology?window=SECS`.
pub async fn topology(
    State(s): State<Shared>,
    Query(q): Query<WindowQuery>,
) -> Result<Response, ApiError> {
    let json = topology_json(&s, window(q.window)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// The proxies of the status report (empty without one).
async fn report(s: &Shared) -> Value {
    match &s.api.status {
        Some(status) => status.report().await,
        None => json!({"proxies": [], "replicas": [], "store": null}),
    }
}

/// One service's page, `None` when there is no such Service.
pub async fn service_value(s: &Shared, namespace: &str, name: &str) -> Option<Value> {
    let report = report(s).await;
    let proxies = report["proxies"].as_array().cloned().unwrap_or_default();
    let ejected = ejections(s).await;
    let model = s.api.model.borrow().clone();
    let mut page = service_page::build(&model, namespace, name, &proxies, |id| {
        s.api.ca.latest_issued(id)
    })?;
    service_page::mark_ejected(&mut page, &ejected);
    Some(page)
}

/// `GET /dashboard/api/services/{namespace}/{name}`.
pub async fn service(
    State(s): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    service_value(&s, &namespace, &name)
        .await
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Service {namespace}/{name} not found"),
            )
        })
}

/// Replicas, the store's health, and every proxy's sync state with its config rejections.
pub async fn status_value(s: &Shared) -> Value {
    let report = report(s).await;
    let store = s.api.store.get("MeshConfig", "default", "health-probe");
    let store_health = match tokio::time::timeout(STORE_PROBE, store).await {
        Ok(Ok(_)) => json!({"ok": true, "describe": s.api.store.describe()}),
        Ok(Err(e)) => {
            json!({"ok": false, "describe": s.api.store.describe(), "error": e.to_string()})
        }
        Err(_) => {
            json!({"ok": false, "describe": s.api.store.describe(), "error": "no answer within 2 s"})
        }
    };
    let proxies: Vec<Value> = report["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let nacks: Vec<Value> = p["types"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, t)| !t["last_nack"].is_null())
                .map(|(url, t)| json!({"type": url, "nack": t["last_nack"]}))
                .collect();
            json!({
                "id": p["id"],
                "service": p["service"],
                "namespace": p["namespace"],
                "replica": p["replica"],
                "inSync": p["inSync"],
                "nacks": nacks,
            })
        })
        .collect();
    json!({
        "revision": report["revision"],
        "replica": report["replica"],
        "replicas": report["replicas"],
        "storeError": report["store"],
        "store": store_health,
        "proxies": proxies,
    })
}

/// `GET /dashboard/api/status`.
pub async fn status(State(s): State<Shared>) -> Json<Value> {
    Json(status_value(&s).await)
}

/// `GET /dashboard/api/tap?service=...`: the API's tap (newline-delimited JSON), for a session.
pub async fn tap(State(s): State<Shared>, uri: Uri) -> Result<Response, ApiError> {
    let api_uri: Uri = format!("/api/v1/tap?{}", uri.query().unwrap_or(""))
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "unreadable query"))?;
    let q = Query::try_from_uri(&api_uri)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    crate::live_api::tap(State(s.api.clone()), q, api_uri).await
}
