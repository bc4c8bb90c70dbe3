//! Certificates from the control plane's CA: this proxy makes its key locally, sends a CSR with
//! the join token, and gets back a short-lived certificate for its service's SPIFFE identity plus
//! the trust bundle. The first certificate is fetched (retrying with backoff while no control
//! plane answers); then a [`Rotator`] renews at about half the lifetime with a fresh key.
//!
//! The CA decides the identity (`spiffe://<trust domain>/ns/<namespace>/sa/<service>`) and
//! ignores what the CSR asks for, so the first CSR need not know the trust domain.
use super::MeshTls;
use crate::control_api::{ControlApi, ControlApiError};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use trellis_identity::tls::RotatorOptions;
use trellis_identity::{CertBundle, CertSource, Rotator, SpiffeId, TrustSource, WorkloadKey};

/// What `POST /api/v1/certificates` answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    #[serde(flatten)]
    pub bundle: CertBundle,
    pub trust_domain: String,
    pub trust_bundle_pem: String,
}

/// Asks the CA to sign `csr_pem` for this proxy's service.
pub async fn request(
    api: &ControlApi,
    csr_pem: String,
    namespace: &str,
    service: &str,
) -> Result<Issued, ControlApiError> {
    let body = json!({"csr": csr_pem, "namespace": namespace, "service": service});
    let (status, value) = api
        .call(http::Method::POST, "/api/v1/certificates", Some(body))
        .await?;
    if status != 200 {
        return Err(ControlApiError(format!(
            "certificate refused ({status}): {}",
            value["error"].as_str().unwrap_or("no reason given")
        )));
    }
    serde_json::from_value(value)
        .map_err(|e| ControlApiError(format!("certificate answer not understood: {e}")))
}

/// Gets the first certificate for `service` in `namespace`, hands mTLS to `install` (the proxy
/// state, which this module does not know), then keeps renewing until dropped.
pub async fn run(
    api: Arc<ControlApi>,
    namespace: String,
    service: String,
    install: impl FnOnce(Arc<MeshTls>),
) {
    let mut backoff = Duration::from_millis(100);
    let (tls, identity) = loop {
        match bootstrap(&api, &namespace, &service).await {
            Ok(done) => break done,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "no workload certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let certs = tls.certs.clone();
    tracing::info!(identity = %identity, "workload certificate installed; mTLS on");
    install(tls);
    let issue = move |csr: String| {
        let (api, namespace, service) = (api.clone(), namespace.clone(), service.clone());
        async move {
            request(&api, csr, &namespace, &service)
                .await
                .map(|i| i.bundle)
        }
    };
    let _rotator = Rotator::spawn(identity, certs, issue, RotatorOptions::default());
    std::future::pending::<()>().await;
}

async fn bootstrap(
    api: &ControlApi,
    namespace: &str,
    service: &str,
) -> Result<(Arc<MeshTls>, SpiffeId), String> {
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    // The CA grants the identity; the CSR's own is a placeholder in a reserved domain.
    let placeholder =
        SpiffeId::new("trellis.invalid", namespace, service).map_err(|e| e.to_string())?;
    let csr = key.csr_pem(&placeholder).map_err(|e| e.to_string())?;
    let issued = request(api, csr, namespace, service)
        .await
        .map_err(|e| e.to_string())?;
    let certs = CertSource::new();
    certs
        .set(&issued.bundle, &key)
        .map_err(|e| format!("certificate from the CA unusable: {e}"))?;
    let trust = TrustSource::from_pem(&issued.trust_bundle_pem)
        .map_err(|e| format!("trust bundle from the CA unusable: {e}"))?
        .with_trust_domain(&issued.trust_domain);
    let tls = MeshTls::new(Arc::new(certs), Arc::new(trust)).map_err(|e| e.to_string())?;
    tls.remember_bundle(&issued.trust_bundle_pem);
    Ok((Arc::new(tls), issued.bundle.spiffe_id))
}
