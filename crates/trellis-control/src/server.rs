//! `trellis control`: opens the store, follows it into an in-memory model, loads (or creates)
//! the mesh CA and the join token, computes each proxy's view, and serves the HTTP API and the
//! xDS transport on one port: a connection that opens with the HTTP/2 preface is gRPC (xDS),
//! anything else is the HTTP/1 API. Both require the join token (see [`crate::auth`]).
use crate::api::{self, ApiState, ProxyStatus};
use crate::auth;
use crate::ca::{CaSetupError, MeshCa};
use crate::model;
use crate::store::{self, StoreSpec};
use crate::views::MeshViews;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use trellis_xds::server::ServerConfig;
use trellis_xds::{AdsServer, Registry};

#[derive(Clone)]
pub struct ControlOptions {
    pub listen: SocketAddr,
    pub store: StoreSpec,
    /// TTL of the leases registered workloads live under.
    pub lease_ttl: Duration,
    /// The join token proxies and the CLI must present (`authorization: Bearer <token>`) on the
    /// API and the xDS stream. `None`: the token kept in the store, generated on first start.
    pub join_token: Option<String>,
    /// Where to write the token in force (mode 0600) for proxies and the CLI to read.
    pub join_token_file: Option<std::path::PathBuf>,
    /// A user-supplied CA certificate chain and key (PEM) used on first start instead of a
    /// generated root (ignored, with a warning, when the store already holds a CA).
    pub ca: Option<SuppliedCa>,
}

impl std::fmt::Debug for ControlOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlOptions")
            .field("listen", &self.listen)
            .field("store", &self.store)
            .field("lease_ttl", &self.lease_ttl)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .field("join_token_file", &self.join_token_file)
            .field("ca", &self.ca)
            .finish()
    }
}

/// A root or intermediate the operator brings, instead of one Trellis generates.
#[derive(Clone)]
pub struct SuppliedCa {
    /// The signing certificate first, then its chain up to the root.
    pub cert_chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for SuppliedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuppliedCa")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot open the store: {0}")]
    Store(store::StoreError),
    #[error("mesh CA: {0}")]
    Ca(#[from] CaSetupError),
    #[error("cannot write the join token to {path}: {error}")]
    TokenFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

struct XdsStatus(Registry);

impl ProxyStatus for XdsStatus {
    fn proxies(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .0
            .nodes()
            .into_iter()
            .map(|n| {
                let in_sync = n.in_sync();
                let mut v = serde_json::to_value(&n).unwrap_or_default();
                v["inSync"] = serde_json::Value::Bool(in_sync);
                v["id"] = serde_json::Value::String(n.node.id.clone());
                v["service"] = serde_json::Value::String(n.node.service.clone());
                v
            })
            .collect();
        serde_json::Value::Array(nodes)
    }
}

/// Runs a control plane until `shutdown` resolves; `on_ready` gets the bound address.
pub async fn run(
    opts: ControlOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ControlError> {
    let store = store::open(&opts.store)
        .await
        .map_err(ControlError::Store)?;
    let model = model::follow(store.clone());
    let ca = MeshCa::start(
        store.clone(),
        model.clone(),
        opts.ca.as_ref(),
        opts.join_token.as_deref(),
    )
    .await?;
    if let Some(path) = &opts.join_token_file {
        auth::write_token_file(path, ca.token()).map_err(|error| ControlError::TokenFile {
            path: path.clone(),
            error,
        })?;
        tracing::info!(path = %path.display(), "join token written");
    }
    let views = MeshViews::spawn(model.clone());
    let config = ServerConfig {
        auth: Some(auth::xds_hook(ca.token().clone())),
        ..ServerConfig::default()
    };
    let ads = AdsServer::new(views, config);
    let state = Arc::new(ApiState {
        store,
        model,
        lease_ttl: opts.lease_ttl,
        status: Some(Arc::new(XdsStatus(ads.registry()))),
        ca,
    });
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|error| ControlError::Bind {
            addr: opts.listen,
            error,
        })?;
    let addr = listener.local_addr().unwrap_or(opts.listen);
    on_ready(addr);
    let api = api::router(state);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (api, ads) = (api.clone(), ads.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, api, ads).await {
                tracing::debug!(%peer, error = %e, "control connection ended");
            }
        });
    }
    // Proxies fail over to another replica at once instead of waiting for a timeout.
    ads.close_streams();
    Ok(())
}

/// Whether the client opened with the HTTP/2 preface (`PRI * HTTP/2.0`), waiting (bounded) for
/// the first three bytes.
async fn is_http2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 3];
    for _ in 0..5_000 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if n >= 3 {
            return Ok(&buf == b"PRI");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(false)
}

async fn serve_connection(
    stream: TcpStream,
    api: axum::Router,
    ads: AdsServer,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if is_http2(&stream).await? {
        let svc = TowerToHyperService::new(ads.service());
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await?;
    } else {
        let svc = TowerToHyperService::new(api);
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token_or_the_ca_key() {
        let opts = ControlOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            store: StoreSpec::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
            },
            lease_ttl: Duration::from_secs(10),
            join_token: Some("s3cret-token".into()),
            join_token_file: None,
            ca: Some(SuppliedCa {
                cert_chain_pem: "CERT".into(),
                key_pem: "-----BEGIN PRIVATE KEY-----".into(),
            }),
        };
        let dbg = format!("{opts:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("PRIVATE"), "{dbg}");
    }
}
