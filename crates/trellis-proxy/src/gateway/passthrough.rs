//! `TLS` listeners in `mode: Passthrough`: the client's TLS is not terminated here. The
//! ClientHello's server name ([`super::sni`]) picks the TLSRoute (by hostname, as HTTP picks by
//! `Host`), and the raw bytes — the ClientHello first, replayed — are tunnelled to an endpoint of
//! the route's backend service over the mesh's opaque mTLS path (the same connect, balancing and
//! passive health as the sidecar's TCP), so the backend terminates the client's TLS itself.
//!
//! A connection whose first bytes are no ClientHello, or whose name no route serves, is closed
//! and counted (`trellis_gateway_passthrough_total{result}`) with a reason in the access log.
use super::plan::{PortPlan, TlsHost};
use super::sni::{self, Hello};
use crate::detect::PrefixedIo;
use crate::error::Reason;
use crate::metrics::{ResultLabels, TcpLabels};
use crate::state::ProxyState;
use crate::tcp::splice;
use crate::upstream::opaque;
use prometheus_client::metrics::{counter::Counter, family::Family};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Serves one passthrough connection to its end.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    port: Arc<PortPlan>,
    state: Arc<ProxyState>,
) {
    let started = (std::time::SystemTime::now(), std::time::Instant::now());
    let (hello, prefix) = match sni::peek(&mut stream, state.settings.detect_timeout).await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "read failed while peeking the ClientHello");
            return;
        }
    };
    let (service, bytes, reason) = match hello {
        Hello::ClientHello { server_name } => {
            let name = server_name.unwrap_or_default();
            match port.tls.lookup(&name) {
                Some(host) => {
                    let io = PrefixedIo::new(prefix, stream);
                    tunnel(io, peer, host, &state).await
                }
                None => {
                    tracing::debug!(%peer, sni = %name, "no TLSRoute serves this server name; closing");
                    (String::new(), (0, 0), Reason::NoRoute.as_str())
                }
            }
        }
        Hello::NotTls | Hello::Incomplete => {
            tracing::debug!(%peer, "not a TLS ClientHello on a passthrough listener; closing");
            (String::new(), (0, 0), "not-tls")
        }
    };
    record(
        &state,
        &state.metrics.gateway_passthrough,
        started,
        peer,
        &service,
        bytes,
        reason,
    );
}

/// Counts a `TLS` connection by its result in `family` and writes its access log line.
pub(super) fn record(
    state: &ProxyState,
    family: &Family<ResultLabels, Counter>,
    started: (std::time::SystemTime, std::time::Instant),
    peer: SocketAddr,
    service: &str,
    bytes: (u64, u64),
    reason: &'static str,
) {
    let result = if reason.is_empty() { "ok" } else { reason };
    family.get_or_create(&ResultLabels { result }).inc();
    if let Some(snap) = state.snapshot.load().as_ref() {
        crate::access_log::tcp_connection(
            &state.access_log,
            &snap.mesh.telemetry.access_log,
            super::http::DIRECTION,
            started,
            peer,
            None,
            service,
            bytes,
            reason,
        );
    }
}

/// A backend by weight (the first when weights are all zero).
fn choose(host: &TlsHost) -> Option<&crate::config::BackendRef> {
    let total: u64 = host.backends.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return host.backends.first().map(|(b, _)| b);
    }
    let mut roll = rand::random_range(0..total);
    for (b, w) in &host.backends {
        let w = u64::from(*w);
        if roll < w {
            return Some(b);
        }
        roll -= w;
    }
    None
}

/// Tunnels `downstream` to an endpoint of one of `host`'s backends over the mesh's opaque path;
/// the service, the bytes each way, and the reason it failed (empty when it did not).
pub(super) async fn tunnel<D>(
    downstream: D,
    peer: SocketAddr,
    host: &TlsHost,
    state: &Arc<ProxyState>,
) -> (String, (u64, u64), &'static str)
where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let Some(backend) = choose(host) else {
        return (String::new(), (0, 0), Reason::NoRoute.as_str());
    };
    let service = backend.service.clone();
    let Some(snap) = state.snapshot.load_full() else {
        return (service, (0, 0), Reason::NotReady.as_str());
    };
    let ctx = state.upstream_context();
    let mut upstream = match opaque::to_service(
        &ctx,
        &snap,
        &backend.namespace,
        &backend.service,
        peer,
    )
    .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(%peer, route = %host.route, error = %e, "passthrough upstream not opened");
            return (service, (0, 0), e.reason.as_str());
        }
    };
    let edge = TcpLabels {
        direction: super::http::DIRECTION,
        source: state.local_source(),
        service: service.clone(),
    };
    let bytes = splice(&state.metrics, edge, downstream, &mut upstream.io).await;
    (service, bytes, "")
}
