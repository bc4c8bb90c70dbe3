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
//! (`{"error": ..., "details": [...]}`, plus `"limit"` when a parsing limit refused the body)
//! with the status that says what kind of problem it is. A successful `apply` also returns the
//! notices of what it stored (`trellis_api::notice`), which the CLI prints.
//!
//! Request bodies are bounded ([`MAX_APPLY_BODY_BYTES`] for manifests, [`MAX_BODY_BYTES`] for
//! the rest: 413 past them) and parsed on tokio's blocking pool, never on the runtime's worker
//! threads, at most [`MAX_CONCURRENT_PARSES`] manifests at once (a few more for registrations,
//! kept apart so a flood of applies cannot hold up sidecars registering): parsing even a
//! well-formed manifest of 10 000 documents takes a CPU for a while, and health probes, lease
//! keep-alives and xDS streams share the worker threads. Together with the limits of
//! `trellis_api::limits` this keeps any body from stalling the control plane.
use crate::auth;
use crate::ca::MeshCa;
use crate::ca_api;
use crate::model::Model;
use crate::store::{BatchLimits, LeaseId, ResourceKey, Store, StoreError, Stored};
use axum::extract::rejection::{JsonRejection, StringRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use trellis_api::parse::{MANAGED_KINDS, SECRET_KINDS};
use trellis_api::{parse_documents, Resource, ResourceSet};

/// Largest manifest `apply` and `replace` read: the parser's own source limit (16 MiB).
pub const MAX_APPLY_BODY_BYTES: usize = trellis_api::limits::MAX_SOURCE_BYTES;
/// Largest body of every other route (registrations, CSRs, CA roots): 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Manifests (`apply`, `replace`) parsed at once; more wait their turn.
pub const MAX_CONCURRENT_PARSES: usize = 2;
/// Registrations parsed at once (their bodies are small), apart from manifests.
pub const MAX_CONCURRENT_REGISTRATION_PARSES: usize = 4;

/// The blocking-pool slots request bodies are parsed in.
#[derive(Clone)]
struct ParseSlots {
    manifests: Arc<Semaphore>,
    registrations: Arc<Semaphore>,
}

impl ParseSlots {
    fn new() -> Self {
        Self {
            manifests: Arc::new(Semaphore::new(MAX_CONCURRENT_PARSES)),
            registrations: Arc::new(Semaphore::new(MAX_CONCURRENT_REGISTRATION_PARSES)),
        }
    }
}

/// Parses `text` on the blocking pool once one of `slots` is free. The slot is held by the
/// parse itself, so a client that goes away mid-parse does not free it early.
async fn parse_blocking(
    slots: &Arc<Semaphore>,
    file: String,
    text: String,
) -> Result<ResourceSet, ApiError> {
    let permit = slots.clone().acquire_owned().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control plane is stopping",
        )
    })?;
    let parsed = tokio::task::spawn_blocking(move || {
        let parsed = parse_documents(&file, &text);
        drop(permit);
        parsed
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("parsing the request failed: {e}"),
        )
    })?;
    Ok(parsed?)
}

/// A body the extractor refused: too large (413, naming the limit) or unreadable.
fn body_error(status: StatusCode, text: String, max: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status,
            message: format!(
                "the request body is larger than {max} bytes; exceeds limit {}",
                trellis_api::Limit::SourceBytes
            ),
            details: Vec::new(),
            limit: Some(trellis_api::Limit::SourceBytes),
        };
    }
    ApiError::new(status, text)
}

fn manifest(body: Result<String, StringRejection>) -> Result<String, ApiError> {
    body.map_err(|r| body_error(r.status(), r.body_text(), MAX_APPLY_BODY_BYTES))
}

pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub model: watch::Receiver<Arc<Model>>,
    pub lease_ttl: Duration,
    /// Replicas and connected proxies, for `check` and `proxy-config`.
    pub status: Option<Arc<crate::mesh_status::MeshStatus>>,
    /// The mesh CA, which also holds the join token every route but the health check requires.
    pub ca: Arc<MeshCa>,
    /// Documents one apply may commit at most, below the store's own cap (`None`: the store's).
    pub max_apply_documents: Option<usize>,
    /// The proxies' telemetry streams to this replica (`trellis stat`, `tap`, `top`).
    pub telemetry: Option<trellis_xds::telemetry::TelemetryHub>,
}

impl ApiState {
    /// What one apply may hold: the store's cap, this control plane's, and the parser's.
    pub fn apply_limits(&self) -> BatchLimits {
        self.store.batch_limits().min(BatchLimits {
            documents: Some(
                self.max_apply_documents
                    .unwrap_or(usize::MAX)
                    .min(trellis_api::limits::MAX_DOCUMENTS),
            ),
            bytes: None,
        })
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    let token = state.ca.token().clone();
    let manifest_limit = DefaultBodyLimit::max(MAX_APPLY_BODY_BYTES);
    let protected = Router::new()
        .route("/api/v1/apply", post(apply).layer(manifest_limit))
        .route("/api/v1/apply/limits", get(apply_limits))
        .route("/api/v1/resources", get(list))
        .route(
            "/api/v1/resources/{kind}/{namespace}/{name}",
            get(get_one)
                .put(replace)
                .layer(manifest_limit)
                .delete(delete),
        )
        .route("/api/v1/workloads", post(register))
        .route("/api/v1/leases/{id}", post(keep_alive).delete(revoke))
        .route("/api/v1/proxies", get(proxies))
        .route("/api/v1/stat", get(crate::live_api::stat))
        .route("/api/v1/tap", get(crate::live_api::tap))
        .route("/api/v1/certificates", post(ca_api::issue))
        .route("/api/v1/ca", get(ca_api::show))
        .route("/api/v1/ca/roots", post(ca_api::add_root))
        .route("/api/v1/ca/roots/{id}", delete_route(ca_api::retire))
        .route("/api/v1/ca/roots/{id}/activate", post(ca_api::activate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(ParseSlots::new()))
        .route_layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
        .route_layer(axum::middleware::from_fn(auth::refuse_browsers))
        .with_state(state.clone());
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/ready", get(health))
        // Liveness: the process serves; says nothing about the store (a restart would not help).
        .route("/api/v1/live", get(|| async { "ok\n" }))
        .with_state(state)
        .merge(protected)
}

/// How long a health probe waits for the store before calling it unreachable.
const HEALTH_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Healthy only while the store answers: a replica whose store is away (etcd without quorum,
/// say) can take no apply and no registration, so a probe must not send work to it.
async fn health(State(state): State<Arc<ApiState>>) -> (StatusCode, String) {
    let read = state.store.get("MeshConfig", "default", "health-probe");
    let unreachable = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unreachable ({}): {why}\n", state.store.describe()),
        )
    };
    match tokio::time::timeout(HEALTH_STORE_TIMEOUT, read).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => unreachable(e.to_string()),
        Err(_) => unreachable(format!(
            "no answer within {} s",
            HEALTH_STORE_TIMEOUT.as_secs()
        )),
    }
}

/// An API failure, rendered as JSON.
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<String>,
    /// The parsing limit that refused the body, if one did.
    limit: Option<trellis_api::Limit>,
}

impl ApiError {
    /// The error's one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
            limit: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message, "details": self.details});
        if let Some(limit) = self.limit {
            body["limit"] = Value::String(limit.name().to_string());
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::AlreadyExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::BatchConflict { .. } => StatusCode::CONFLICT,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::Invalid { .. } => StatusCode::BAD_REQUEST,
            StoreError::LeaseNotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<trellis_api::ConfigError> for ApiError {
    fn from(e: trellis_api::ConfigError) -> Self {
        let limit = e.limit();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: match limit {
                Some(limit) => format!("invalid config: exceeds limit {limit}"),
                None => format!("invalid config ({} problems)", e.errors.len()),
            },
            details: e.errors.iter().map(|f| f.to_string()).collect(),
            limit,
        }
    }
}

/// Refuses writes of the kinds only the control plane writes.
fn refuse_managed(kind: &str) -> Result<(), ApiError> {
    if MANAGED_KINDS.contains(&kind) {
        let how = match kind {
            "ServiceAddress" => {
                "a virtual IP is allocated for each Service and released when the Service is \
                 deleted; set the range with MeshConfig spec.serviceAddressRange"
            }
            _ => "use the /api/v1/ca endpoints (`trellis ca`)",
        };
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("kind {kind} is managed by the control plane; {how}"),
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

/// Whether `kind` is a Gateway API kind (its status is computed when read).
fn is_gateway_api(kind: &str) -> bool {
    trellis_api::gateway_api::api_version_of(kind).is_some()
}

/// What the status of Gateway API kinds among `items` is computed from: the whole store, read
/// only when some item needs it.
async fn status_inputs(s: &ApiState, items: &[Stored]) -> Result<Vec<Resource>, ApiError> {
    if !items.iter().any(|i| is_gateway_api(i.resource.kind())) {
        return Ok(Vec::new());
    }
    let listing = s.store.list(None, None).await?;
    Ok(listing.items.into_iter().map(|i| i.resource).collect())
}

/// [`render`], with the status of a Gateway API kind computed from `all` (never stored).
fn render_with_status(stored: &Stored, all: &[Resource]) -> Value {
    if !is_gateway_api(stored.resource.kind()) {
        return render(stored);
    }
    let mut r = trellis_api::gateway_api::status::with_status(&stored.resource, all);
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

/// What one apply may hold, for a client that splits big manifests:
/// `{"documents": N, "bytes": B | null, "bodyBytes": N}`. `documents` counts every document,
/// unchanged ones too; `bytes` (when the store has such a cap) is the sum over the documents of
/// their JSON length plus twice their `Kind/namespace/name` key plus 128; `bodyBytes` is the
/// largest request body.
async fn apply_limits(State(s): State<Arc<ApiState>>) -> Json<Value> {
    let limits = s.apply_limits();
    Json(json!({
        "documents": limits.documents,
        "bytes": limits.bytes,
        "bodyBytes": MAX_APPLY_BODY_BYTES,
    }))
}

#[derive(Deserialize)]
struct ApplyQuery {
    /// Name of the source, for error messages.
    file: Option<String>,
}

/// Creates or replaces every resource of a multi-document YAML/JSON body, all in one
/// transaction (see [`crate::apply`]). Answers
/// `{"results": [{key, action, version}], "notices": [text], "revision": R, "replayed": bool}`.
async fn apply(
    State(s): State<Arc<ApiState>>,
    Extension(slots): Extension<ParseSlots>,
    Query(q): Query<ApplyQuery>,
    headers: axum::http::HeaderMap,
    body: Result<String, StringRejection>,
) -> Result<Json<Value>, ApiError> {
    let apply_id = crate::apply::apply_id(&headers)?;
    let body = manifest(body)?;
    let file = q.file.unwrap_or_else(|| "request".into());
    let set = parse_blocking(&slots.manifests, file.clone(), body).await?;
    let mut notices: Vec<String> = set.notices().iter().map(ToString::to_string).collect();
    // Gateway API routes the store's Trellis Routes override (or the reverse), beyond the file.
    if set.resources.iter().any(|r| is_gateway_api(r.kind())) {
        let mut all: Vec<Resource> = s
            .store
            .list(None, None)
            .await?
            .items
            .into_iter()
            .map(|i| i.resource)
            .filter(|r| !set.resources.iter().any(|n| n.key() == r.key()))
            .collect();
        all.extend(set.resources.iter().cloned());
        for n in trellis_api::notice::overridden(&set.resources, &all) {
            let n = n.to_string();
            if !notices.contains(&n) {
                notices.push(n);
            }
        }
    }
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
    let mut documents = Vec::with_capacity(set.resources.len());
    for mut resource in set.resources {
        let expected = take_version(&mut resource)?;
        documents.push(crate::apply::Document { resource, expected });
    }
    let limits = s.apply_limits();
    let answer = crate::apply::apply(&*s.store, documents, notices, apply_id, limits).await?;
    Ok(Json(answer))
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
    let all = status_inputs(&s, &listing.items).await?;
    let items: Vec<Value> = listing
        .items
        .iter()
        .filter(|i| !is_secret(i.resource.kind()))
        .map(|i| render_with_status(i, &all))
        .collect();
    Ok(Json(json!({"items": items, "revision": listing.revision})))
}

/// Accepts kinds as users type them: `route`, `routes`, `Route`, `dp` for DestinationPolicy.
pub fn canonical_kind(k: &str) -> Result<&'static str, ApiError> {
    let lower = k.to_ascii_lowercase();
    let short = match (lower.strip_suffix("ies"), lower.strip_suffix("sses")) {
        (Some(stem), _) => format!("{stem}y"),
        // serviceaddresses -> serviceaddress
        (None, Some(stem)) => format!("{stem}ss"),
        (None, None) => lower.trim_end_matches('s').to_string(),
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
        Some(stored) => {
            let all = status_inputs(&s, std::slice::from_ref(&stored)).await?;
            Ok(Json(render_with_status(&stored, &all)))
        }
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
    Extension(slots): Extension<ParseSlots>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<VersionQuery>,
    body: Result<String, StringRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = manifest(body)?;
    let kind = canonical_kind(&kind)?;
    refuse_managed(kind)?;
    let set = parse_blocking(&slots.manifests, "request".into(), body).await?;
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
    Extension(slots): Extension<ParseSlots>,
    reg: Result<Json<Registration>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(reg) = reg.map_err(|r| body_error(r.status(), r.body_text(), MAX_BODY_BYTES))?;
    let text = serde_json::to_string(&reg.workload)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let set = parse_blocking(&slots.registrations, "registration".into(), text).await?;
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
    let stored = s.store.register(Resource::Workload(w), lease).await?;
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
    s.store.deregister(LeaseId(id)).await?;
    Ok(Json(json!({"revoked": id})))
}

async fn proxies(State(s): State<Arc<ApiState>>) -> Json<Value> {
    match &s.status {
        Some(status) => Json(status.report().await),
        None => {
            let model = s.model.borrow().clone();
            Json(json!({"revision": model.revision, "proxies": [], "replicas": [], "store": null}))
        }
    }
}
