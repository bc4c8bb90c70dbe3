//! `TLS` listeners in `mode: Terminate`: the gateway ends the client's TLS with the listener's
//! certificate (picked by SNI, as for `HTTPS`), then tunnels the plaintext bytes — whatever
//! protocol they are, unread — to an endpoint of the TLSRoute's backend over the mesh's opaque
//! mTLS path. The handshake's server name picks the route, as the ClientHello's does for
//! passthrough, so the backend sees no TLS from the client, only the mesh's own.
//!
//! A failed or slow handshake, or a name no TLSRoute serves, closes the connection and is
//! counted (`trellis_gateway_tls_terminate_total{result}`) with a reason in the access log.
use super::passthrough::{record, tunnel};
use super::plan::PortPlan;
use crate::error::Reason;
use crate::state::ProxyState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use trellis_identity::rustls::ServerConfig;
use trellis_identity::tokio_rustls::{server::TlsStream, TlsAcceptor};

/// Serves one terminated connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: Arc<PortPlan>,
    state: Arc<ProxyState>,
) {
    let started = (std::time::SystemTime::now(), std::time::Instant::now());
    let Some(server) = port.server.clone() else {
        return;
    };
    let (service, bytes, reason) = match handshake(
        server,
        stream,
        state.settings.detect_timeout,
        peer,
    )
    .await
    {
        Ok(tls) => {
            let name = tls.get_ref().1.server_name().unwrap_or_default().to_owned();
            match port.tls.lookup(&name) {
                Some(host) => tunnel(tls, peer, host, &state).await,
                None => {
                    tracing::debug!(%peer, sni = %name, "no TLSRoute serves this server name; closing");
                    (String::new(), (0, 0), Reason::NoRoute.as_str())
                }
            }
        }
        Err(reason) => (String::new(), (0, 0), reason),
    };
    record(
        &state,
        &state.metrics.gateway_tls_terminate,
        started,
        peer,
        &service,
        bytes,
        reason,
    );
}

/// Ends a client's TLS with a port's certificates within `limit` (for `HTTPS` ports and `TLS`
/// `Terminate` ports alike); `Err` is why it failed (`handshake-failed`, `handshake-timeout`),
/// logged here.
pub(super) async fn handshake(
    server: Arc<ServerConfig>,
    stream: TcpStream,
    limit: Duration,
    peer: SocketAddr,
) -> Result<TlsStream<TcpStream>, &'static str> {
    let accept = TlsAcceptor::from(server).accept(stream);
    match tokio::time::timeout(limit, accept).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "gateway TLS handshake failed");
            Err("handshake-failed")
        }
        Err(_) => {
            tracing::debug!(%peer, "gateway TLS handshake timed out");
            Err("handshake-timeout")
        }
    }
}
