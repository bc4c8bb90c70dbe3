//! The CA's part of the HTTP API: proxies ask for workload certificates, operators look at and
//! rotate the CA. Kept out of `api.rs` so the config API and the CA API stay small and separate.
//!
//! - `POST /api/v1/certificates` `{"csr", "namespace", "service"}`: a certificate for
//!   `spiffe://<CA trust domain>/ns/<namespace>/sa/<service>`, valid for the MeshConfig's
//!   `spec.certificateLifetime`. The CSR only contributes its public key.
//! - `GET /api/v1/ca`: trust domain, signers (never their keys), trust bundle.
//! - `POST /api/v1/ca/roots`, `POST /api/v1/ca/roots/{id}/activate`,
//!   `DELETE /api/v1/ca/roots/{id}`: the three steps of a root rotation.
use crate::api::{ApiError, ApiState};
use crate::ca::{CaChangeError, IssueError, MeshCa};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use trellis_api::meta::DEFAULT_NAMESPACE;
use trellis_api::validate::is_dns_label;
use trellis_identity::ca::CaError;

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// The body of `POST /api/v1/certificates`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertRequest {
    /// PEM `CERTIFICATE REQUEST`.
    csr: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    service: String,
}

fn label_error(field: &str, value: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "{field} {value:?} is not a valid DNS label: use lowercase letters, digits and '-', \
             at most 63 characters, starting and ending with a letter or digit"
        ),
    )
}

/// `POST /api/v1/certificates`.
pub async fn issue(
    State(s): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: CertRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the body must be JSON {{\"csr\": \"<PEM CSR>\", \"namespace\": \"...\", \"service\": \"...\"}}: {e}"
            ),
        )
    })?;
    if !is_dns_label(&req.namespace) {
        return Err(label_error("namespace", &req.namespace));
    }
    if !is_dns_label(&req.service) {
        return Err(label_error("service", &req.service));
    }
    let lifetime = s.model.borrow().mesh_config().certificate_lifetime.as_std();
    let issued =
        s.ca.issue(&req.csr, &req.namespace, &req.service, lifetime)
            .map_err(|e| {
                let status = match &e {
                    IssueError::Identity(_)
                    | IssueError::Ca(
                        CaError::Pem(_)
                        | CaError::CsrMalformed(_)
                        | CaError::CsrSignature
                        | CaError::CsrKey(_),
                    ) => StatusCode::BAD_REQUEST,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                ApiError::new(status, e.to_string())
            })?;
    let mut v = serde_json::to_value(&issued.bundle).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the certificate: {e}"),
        )
    })?;
    v["trustDomain"] = Value::String(issued.trust_domain);
    v["trustBundlePem"] = Value::String(issued.trust_bundle_pem);
    Ok(Json(v))
}

fn summary(ca: &MeshCa) -> Value {
    let loaded = ca.current();
    json!({
        "trustDomain": loaded.ca.trust_domain(),
        "active": loaded.ca.active_id(),
        "signers": loaded.ca.signers(),
        "trustBundlePem": loaded.ca.trust_bundle_pem(),
    })
}

/// `GET /api/v1/ca`.
pub async fn show(State(s): State<Arc<ApiState>>) -> Json<Value> {
    Json(summary(&s.ca))
}

impl From<CaChangeError> for ApiError {
    fn from(e: CaChangeError) -> Self {
        let status = match &e {
            CaChangeError::Store(se) => return ApiError::from(se.clone()),
            CaChangeError::Refused(CaError::UnknownSigner { .. }) => StatusCode::NOT_FOUND,
            CaChangeError::Refused(CaError::RetireActive(_) | CaError::DuplicateSigner(_)) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// `POST /api/v1/ca/roots`: a new root, trusted at once, not signing yet.
pub async fn add_root(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let id = s.ca.add_root().await?;
    Ok(Json(json!({ "id": id })))
}

/// `POST /api/v1/ca/roots/{id}/activate`: answers with the CA as `GET /api/v1/ca` shows it.
pub async fn activate(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.ca.activate(&id).await?;
    Ok(Json(summary(&s.ca)))
}

/// `DELETE /api/v1/ca/roots/{id}`: answers with the CA as `GET /api/v1/ca` shows it.
pub async fn retire(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.ca.retire(&id).await?;
    Ok(Json(summary(&s.ca)))
}
