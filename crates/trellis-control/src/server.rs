//! `trellis control`: opens the store, follows it into an in-memory model, loads (or creates)
//! the mesh CA and the join token, computes each proxy's view, and serves the HTTP API and the
//! xDS transport on one port: a connection that opens with the HTTP/2 preface is gRPC (xDS),
//! anything else is the HTTP/1 API (and the dashboard, [`crate::dashboard`]). Both require the join token (see [`crate::auth`]).
//!
//! The port holds up under floods of connections that never finish a request (slowloris) and
//! near the open-files limit ([`trellis_net`]): a connection cap ([`ConnectionLimits`], fitted
//! under the open-files limit) that sheds the oldest connection with no request in flight
//! instead of refusing the newcomer, a header-read timeout that also bounds protocol detection,
//! an idle timeout for connections with no request in flight, and accept errors backed off and
//! logged at most about once a second. An xDS stream is a request in flight for its whole life,
//! so neither the cap nor the idle timeout ever cuts one; HTTP/2 PINGs find dead proxies.
use crate::api::{self, ApiState};
use crate::auth;
use crate::ca::{CaSetupError, MeshCa};
use crate::mesh_status::MeshStatus;
use crate::model;
use crate::store::{self, StoreSpec};
use crate::views::MeshViews;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use trellis_net::{ConnLimiter, ConnSlot, Ended, HttpServer};
use trellis_xds::server::ServerConfig;
use trellis_xds::telemetry::TelemetryHub;
use trellis_xds::AdsServer;

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
    /// The connection cap and timeouts of the control port.
    pub connections: ConnectionLimits,
    /// Documents one apply may commit at most (`None`: what the store takes in one
    /// transaction). Bigger applies are refused with 413; the CLI splits them.
    pub max_apply_documents: Option<usize>,
    /// Where the dashboard (`/dashboard/`) is served: by default only when `listen` is a
    /// loopback address (see [`crate::dashboard`]).
    pub dashboard: crate::dashboard::DashboardOptions,
}

/// How many connections the control port keeps, and how long it waits on them.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections kept at most (lowered at start to fit the open-files limit). Each proxy
    /// holds one xDS connection and at times one more for registration; the CLI one per call.
    pub max_connections: usize,
    /// Header-read, idle and PING timeouts.
    pub http: HttpServer,
}

/// Room for a few thousand proxies with their registration calls, and the CLI.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            http: HttpServer::default(),
        }
    }
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
            .field("connections", &self.connections)
            .field("dashboard", &self.dashboard)
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
    let reaper = crate::registry::spawn(store.clone());
    let _reaper = AbortOnDrop(reaper);
    let _vips = AbortOnDrop(crate::vip::spawn(store.clone(), model.clone()));
    let views = MeshViews::spawn(model.clone());
    let config = ServerConfig {
        auth: Some(auth::xds_hook(ca.token().clone())),
        ..ServerConfig::default()
    };
    let ads = AdsServer::new(views.clone(), config);
    let telemetry = TelemetryHub::new(Some(auth::xds_hook(ca.token().clone())));
    let listener = trellis_net::bind(opts.listen)
        .await
        .map_err(|error| ControlError::Bind {
            addr: opts.listen,
            error,
        })?;
    let addr = listener.local_addr().unwrap_or(opts.listen);
    let status = MeshStatus::new(
        addr.to_string(),
        store.clone(),
        ads.registry(),
        model.clone(),
    );
    status.set_views(views);
    let _publisher = status.spawn_publisher().map(AbortOnDrop);
    let _compaction = crate::compaction::spawn(store.clone()).map(AbortOnDrop);
    let state = Arc::new(ApiState {
        store,
        model,
        lease_ttl: opts.lease_ttl,
        status: Some(status),
        ca,
        max_apply_documents: opts.max_apply_documents,
        telemetry: Some(telemetry.clone()),
    });
    on_ready(addr);
    let api =
        api::router(state.clone()).merge(crate::dashboard::router(state, opts.dashboard, addr));
    let wanted = opts.connections.max_connections;
    let limiter = ConnLimiter::new(trellis_net::fdlimit::fit_cap(wanted), "control");
    if limiter.max() < wanted {
        tracing::info!(
            max_connections = limiter.max(),
            asked = wanted,
            open_files_limit = trellis_net::fdlimit::soft_limit(),
            "connection cap lowered to fit the open-files limit"
        );
    }
    let http = opts.connections.http.clone();
    // xDS and the telemetry link share the gRPC side of the port.
    let grpc = tonic::service::Routes::new(ads.service()).add_service(telemetry.service());
    trellis_net::serve(
        listener,
        "control",
        limiter,
        shutdown,
        |stream, peer, slot| {
            let (api, grpc, http) = (api.clone(), grpc.clone(), http.clone());
            async move {
                let _ = stream.set_nodelay(true);
                let ended = serve_connection(stream, slot, api, grpc, &http).await;
                tracing::debug!(%peer, %ended, "control connection ended");
            }
        },
    )
    .await;
    // Proxies fail over to another replica at once instead of waiting for a timeout.
    ads.close_streams();
    Ok(())
}

/// Whether the client opened with the HTTP/2 preface (`PRI * HTTP/2.0`): peeks until three
/// bytes are in (the caller bounds the wait by the header-read timeout), backing off while a
/// client trickles them so that thousands of trickling clients cost little.
async fn is_http2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 3];
    let mut delay = Duration::from_millis(1);
    for _ in 0..1_000 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if n >= 3 {
            return Ok(&buf == b"PRI");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
    Ok(false)
}

/// Serves one connection: xDS (gRPC over HTTP/2) or the HTTP/1 API, told apart by its first
/// bytes, all under the connection's slot and timeouts.
async fn serve_connection(
    stream: TcpStream,
    slot: ConnSlot,
    api: axum::Router,
    grpc: tonic::service::Routes,
    http: &HttpServer,
) -> Ended {
    let h2 = match http.while_pending(&slot, is_http2(&stream)).await {
        Some(Ok(h2)) => h2,
        Some(Err(_)) => return Ended::Closed(Ok(())),
        None if slot.is_shed() => return Ended::Shed,
        None => return Ended::HeaderTimeout,
    };
    if h2 {
        let svc = TowerToHyperService::new(grpc);
        http.serve_http2(stream, svc, slot).await
    } else {
        let svc = TowerToHyperService::new(api);
        http.serve_http1(stream, svc, slot).await
    }
}

/// Stops a background task when the control plane's `run` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
            connections: ConnectionLimits::default(),
            max_apply_documents: None,
            dashboard: Default::default(),
        };
        let dbg = format!("{opts:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("PRIVATE"), "{dbg}");
    }
}
