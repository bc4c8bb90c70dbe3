//! The control plane's HTTP JSON API, used by the CLI (`apply`, `get`, `describe`, `delete`,
//! `check`, `proxy-config`, `ca`) and by sidecars to register their workloads and get their
//! certificates (the CA routes are in [`crate::ca_api`]).
//!
//! Every route but `GET /api/v1/health` requires the join token ([`crate::auth`]). The kinds the
//! control plane manages itself (`trellis_api::parse::MANAGED_KINDS`: the trust bundle and the
//! CA) cannot be written through the resource routes, and the kinds holding secrets
//! (`SECRET_KINDS`: the CA with its private keys) are never returned by them.
//!
//! Every write is validated before it reaches the store, so a rejected write changes nothing;
//! an `apply` of several documents validates them all before writing any. Errors are JSON
//! (`{"error": ..., "details": [...]}`) with the status that says what kind of problem it is.
use crate::auth;
use crate::ca::MeshCa;
use crate::ca_api;
use crate::model::Model;
use crate::store::{LeaseId, ResourceKey, Store, StoreError, Stored};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use trellis_api::parse::{MANAGED_KINDS, SECRET_KINDS};
use trellis_api::{parse_documents, Resource};

/// Status of connected proxies, as the xDS server reports it.
pub trait ProxyStatus: Send + Sync {
    fn proxies(&self) -> Value;
}

pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub model: watch::Receiver<Arc<Model>>,
    pub lease_ttl: Duration,
    pub status: Option<Arc<dyn ProxyStatus>>,
    /// The mesh CA, which also holds the join token every route but the health check requires.
    pub ca: Arc<MeshCa>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let token = state.ca.token().clone();
    let protected = Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/resources", get(list))
        .route(
            "/api/v1/resources/{kind}/{namespace}/{name}",
            get(get_one).put(replace).delete(delete),
        )
        .route("/api/v1/workloads", post(register))
        .route("/api/v1/leases/{id}", post(keep_alive).delete(revoke))
        .route("/api/v1/proxies", get(proxies))
        .route("/api/v1/certificates", post(ca_api::issue))
        .route("/api/v1/ca", get(ca_api::show))
        .route("/api/v1/ca/roots", post(ca_api::add_root))
        .route("/api/v1/ca/roots/{id}", delete_route(ca_api::retire))
        .route("/api/v1/ca/roots/{id}/activate", post(ca_api::activate))
        .route_layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
        .route_layer(axum::middleware::from_fn(auth::refuse_browsers))
        .with_state(state);
    Router::new()
        .route("/api/v1/health", get(|| async { "ok\n" }))
        .merge(protected)
}

/// An API failure, rendered as JSON.
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "details": self.details});
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::AlreadyExists { .. } | StoreError::Conflict { .. } => StatusCode::CONFLICT,
            StoreError::LeaseNotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<trellis_api::ConfigError> for ApiError {
    fn from(e: trellis_api::ConfigError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid config ({} problems)", e.errors.len()),
            details: e.errors.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// Refuses writes of the kinds only the control plane writes.
fn refuse_managed(kind: &str) -> Result<(), ApiError> {
    if MANAGED_KINDS.contains(&kind) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "kind {kind} is managed by the control plane; use the /api/v1/ca endpoints (`trellis ca`)"
            ),
        ));
    }
    Ok(())
}

fn is_secret(kind: &str) -> bool {
    SECRET_KINDS.contains(&kind)
}

/// A stored resource as the API shows it: with `metadata.resourceVersion`.
pub fn render(stored: &Stored) -> Value {
    let mut r = stored.resource.clone();
    set_version(&mut r, Some(stored.version.to_string()));
    serde_json::to_value(&r).unwrap_or(Value::Null)
}

fn set_version(r: &mut Resource, v: Option<String>) {
    r.metadata_mut().resource_version = v;
}

/// Takes `metadata.resourceVersion` off a resource about to be written.
fn take_version(r: &mut Resource) -> Result<Option<u64>, ApiError> {
    let v = r.metadata().resource_version.clone();
    set_version(r, None);
    v.map(|s| {
        s.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: metadata.resourceVersion {s:?} is not a version this API issued",
                    r.key()
                ),
            )
        })
    })
    .transpose()
}

#[derive(Deserialize)]
struct ApplyQuery {
    /// Name of the source, for error messages.
    file: Option<String>,
}

/// Creates or replaces every resource of a multi-document YAML/JSON body.
async fn apply(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<ApplyQuery>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let file = q.file.unwrap_or_else(|| "request".into());
    let set = parse_documents(&file, &body)?;
    if let Some(d) = set.deployments().next() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{file}: Deployment {:?} is only understood by `trellis up`; a control plane stores Services, Workloads, Routes and policies",
                d.metadata.name
            ),
        ));
    }
    for r in &set.resources {
        refuse_managed(r.kind())?;
    }
    let mut results = Vec::new();
    for mut r in set.resources {
        let expected = take_version(&mut r)?;
        let key = ResourceKey::of(&r);
        let before = s.store.get(&key.kind, &key.namespace, &key.name).await?;
        let action = match &before {
            Some(b) if b.resource == r => "unchanged",
            Some(_) => "configured",
            None => "created",
        };
        let stored = match (before, expected) {
            (Some(b), None) if b.resource == r => b,
            (None, None) => s.store.create(r).await?,
            (_, expected) => s.store.replace(r, expected).await?,
        };
        results.push(json!({"key": key.to_string(), "action": action, "version": stored.version}));
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
struct ListQuery {
    kind: Option<String>,
    namespace: Option<String>,
}

async fn list(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = q.kind.as_deref().map(canonical_kind).transpose()?;
    let listing = s.store.list(kind, q.namespace.as_deref()).await?;
    let items: Vec<Value> = listing
        .items
        .iter()
        .filter(|i| !is_secret(i.resource.kind()))
        .map(render)
        .collect();
    Ok(Json(json!({"items": items, "revision": listing.revision})))
}

/// Accepts kinds as users type them: `route`, `routes`, `Route`, `dp` for DestinationPolicy.
pub fn canonical_kind(k: &str) -> Result<&'static str, ApiError> {
    let lower = k.to_ascii_lowercase();
    let short = match lower.strip_suffix("ies") {
        Some(stem) => format!("{stem}y"),
        None => lower.trim_end_matches('s').to_string(),
    };
    trellis_api::parse::KINDS
        .iter()
        .copied()
        .find(|kind| {
            let kl = kind.to_ascii_lowercase();
            kl == lower || kl == short || abbreviation(kind) == lower
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown kind {k:?}; expected one of {}",
                    trellis_api::parse::KINDS.join(", ")
                ),
            )
        })
}

fn abbreviation(kind: &str) -> String {
    kind.chars()
        .filter(char::is_ascii_uppercase)
        .collect::<String>()
        .to_ascii_lowercase()
}

async fn get_one(
    State(s): State<Arc<ApiState>>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = canonical_kind(&kind)?;
    // A secret kind answers as if absent, without being read.
    let stored = match is_secret(kind) {
        true => None,
        false => s.store.get(kind, &namespace, &name).await?,
    };
    match stored {
        Some(stored) => Ok(Json(render(&stored))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{kind} {namespace}/{name} not found"),
        )),
    }
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<u64>,
}

async fn replace(
    State(s): State<Arc<ApiState>>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<VersionQuery>,
    body: String,
) -> Result<Json<Value>, ApiError> {
    let kind = canonical_kind(&kind)?;
    refuse_managed(kind)?;
    let set = parse_documents("request", &body)?;
    let [mut r] = <[Resource; 1]>::try_from(set.resources).map_err(|v| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected exactly one resource, got {}", v.len()),
        )
    })?;
    let key = ResourceKey::of(&r);
    if key != ResourceKey::new(kind, &namespace, &name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is {key}, but the path names {kind}/{namespace}/{name}"),
        ));
    }
    let expected = take_version(&mut r)?.or(q.version);
    let stored = s.store.replace(r, expected).await?;
    Ok(Json(render(&stored)))
}

async fn delete(
    State(s): State<Arc<ApiState>>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = canonical_kind(&kind)?;
    refuse_managed(kind)?;
    s.store.delete(kind, &namespace, &name, q.version).await?;
    Ok(Json(
        json!({"deleted": format!("{kind}/{namespace}/{name}")}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Registration {
    workload: Value,
    ttl_seconds: Option<u64>,
}

/// A sidecar registers its workload under a fresh lease and keeps the lease alive.
///
/// The workload's `spec.identity` is set to the identity the CA grants its service
/// (`spiffe://<CA trust domain>/ns/<namespace>/sa/<service>`), whatever the caller sent: callers
/// of the workload check its certificate against it. A workload that names no service (it is
/// selected by labels) keeps the identity it was sent.
async fn register(
    State(s): State<Arc<ApiState>>,
    Json(reg): Json<Registration>,
) -> Result<Json<Value>, ApiError> {
    let text = serde_json::to_string(&reg.workload)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let set = parse_documents("registration", &text)?;
    let Some(Resource::Workload(mut w)) = set.resources.into_iter().next() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "registration.workload must be one Workload",
        ));
    };
    if let Some(service) = &w.spec.service {
        let ca = s.ca.current();
        let id = trellis_identity::SpiffeId::new(
            ca.ca.trust_domain(),
            w.metadata.namespace.as_str(),
            service.as_str(),
        )
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("registration.workload has no valid mesh identity: {e}"),
            )
        })?;
        w.spec.identity = Some(id.to_string());
    }
    let ttl = reg
        .ttl_seconds
        .map(Duration::from_secs)
        .unwrap_or(s.lease_ttl)
        .clamp(Duration::from_secs(1), Duration::from_secs(300));
    let lease = s.store.grant_lease(ttl).await?;
    let stored = s
        .store
        .put_with_lease(Resource::Workload(w), lease.id)
        .await?;
    Ok(Json(json!({
        "leaseId": lease.id.0,
        "ttlSeconds": lease.ttl.as_secs(),
        "version": stored.version,
    })))
}

async fn keep_alive(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    s.store.keep_alive(LeaseId(id)).await?;
    Ok(Json(json!({"leaseId": id})))
}

async fn revoke(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    s.store.revoke_lease(LeaseId(id)).await?;
    Ok(Json(json!({"revoked": id})))
}

async fn proxies(State(s): State<Arc<ApiState>>) -> Json<Value> {
    let model = s.model.borrow().clone();
    let proxies = s
        .status
        .as_ref()
        .map(|p| p.proxies())
        .unwrap_or(Value::Null);
    Json(json!({"revision": model.revision, "proxies": proxies}))
}
