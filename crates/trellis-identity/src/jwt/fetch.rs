//! Fetching a JWKS over HTTP or HTTPS.
//!
//! Why this shape: hyper-util's client with a hyper-rustls connector (ring provider, like the
//! rest of the crate), so `https://` issuers work with the machine's root certificates plus any
//! roots the caller adds (`JwtOptions::extra_roots`, e.g. a private IdP's CA). The client is
//! built on first use, so validators that never fetch never read the system store. Each fetch
//! has a timeout and a size limit; redirects are not followed.
use super::jwks::MAX_JWKS_BYTES;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use std::sync::OnceLock;
use std::time::Duration;
use trellis_api::error_chain;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub(crate) struct Fetcher {
    client: OnceLock<Result<HttpsClient, String>>,
    extra_roots: Vec<CertificateDer<'static>>,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(extra_roots: Vec<CertificateDer<'static>>, timeout: Duration) -> Self {
        Self {
            client: OnceLock::new(),
            extra_roots,
            timeout,
        }
    }

    fn client(&self) -> Result<&HttpsClient, String> {
        self.client
            .get_or_init(|| build_client(&self.extra_roots))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// GETs `uri` and returns the body as text (status 200 only).
    pub async fn get(&self, uri: &http::Uri) -> Result<String, String> {
        let client = self.client()?;
        let request = http::Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            let status = response.status();
            if status != http::StatusCode::OK {
                return Err(format!("answered {status}"));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".to_string())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

fn build_client(extra_roots: &[CertificateDer<'static>]) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::debug!(errors = ?native.errors, "no system root certificates found for JWKS over https");
    }
    for root in extra_roots {
        roots
            .add(root.clone())
            .map_err(|e| format!("extra JWKS root is not usable: {e}"))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
