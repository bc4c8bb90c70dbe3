//! `trellis control`: opens the store, follows it into an in-memory model, and serves the HTTP
//! API (and the xDS transport) until shutdown.
use crate::api::{self, ApiState};
use crate::model;
use crate::store::{self, StoreSpec};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub listen: SocketAddr,
    pub store: StoreSpec,
    /// TTL of the leases registered workloads live under.
    pub lease_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot open the store: {0}")]
    Store(store::StoreError),
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
    let state = Arc::new(ApiState {
        store,
        model,
        lease_ttl: opts.lease_ttl,
        status: None,
    });
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|error| ControlError::Bind {
            addr: opts.listen,
            error,
        })?;
    let addr = listener.local_addr().unwrap_or(opts.listen);
    on_ready(addr);
    let app = api::router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "control plane server ended with an error");
    }
    Ok(())
}
