//! Opening a connection to an endpoint: how long it may take and whether it is mesh mTLS, decided
//! here once for every path (pooled HTTP/1, multiplexed HTTP/2, upgrades, mirrors, opaque TCP, the
//! inbound hop to the app), then TCP within that time, wrapped in mTLS when asked.
//!
//! A connection is opened only from a [`Dial`], and a `Dial` for an endpoint of a service is only
//! made by [`Dial::to`]: so no path can work out the connect timeout or the peer's expected
//! identity its own way. A failed connect, TCP or TLS handshake, is an [`AttemptError`] with
//! [`Failure::ConnectFailed`] naming the cause.
use super::AttemptError;
use crate::balance::Endpoint;
use crate::config::ServiceTarget;
use crate::retry::Failure;
use crate::tls::io::PeerIo;
use crate::tls::{Alpn, MeshTls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use trellis_identity::rustls::pki_types::ServerName;
use trellis_identity::SpiffeId;

/// How to secure a connection to a peer proxy: mesh mTLS, accepting only `identity`. Cheap to
/// make for every request (two `Arc`s); the TLS client config is looked up only when a new
/// connection is opened.
#[derive(Clone)]
pub struct PeerTls {
    pub tls: Arc<MeshTls>,
    pub identity: Arc<SpiffeId>,
}

/// Where and how to open a connection: the endpoint, the connect timeout (which also bounds the
/// mTLS handshake) and, for a peer sidecar, mesh mTLS.
#[derive(Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub timeout: Duration,
    pub tls: Option<PeerTls>,
}

impl Dial {
    /// A connection to `ep`, an endpoint of `svc`: the service's connect timeout (else
    /// `default`, the proxy's `--connect-timeout`) and mTLS as [`peer_tls`] decides.
    pub fn to(
        svc: &ServiceTarget,
        ep: &Endpoint,
        default: Duration,
        mesh: Option<&Arc<MeshTls>>,
    ) -> Dial {
        Dial {
            addr: ep.addr,
            timeout: timeout(Some(svc), default),
            tls: peer_tls(svc, ep, mesh),
        }
    }

    /// A plaintext connection to an address that is no service's endpoint (the local app), with
    /// the proxy's `--connect-timeout`.
    pub fn plain(addr: SocketAddr, default: Duration) -> Dial {
        Dial {
            addr,
            timeout: timeout(None, default),
            tls: None,
        }
    }
}

/// The connect timeout towards `svc`'s endpoints: its DestinationPolicy's
/// `connectionPool.connectTimeout`, else `default` (`--connect-timeout`).
pub fn timeout(svc: Option<&ServiceTarget>, default: Duration) -> Duration {
    svc.and_then(|s| s.connect_timeout).unwrap_or(default)
}

/// Mesh mTLS for a call to `ep`: when the service's mode asks for it, the endpoint has an
/// identity to check (it runs a sidecar), and this proxy holds a certificate (`mesh`). Otherwise
/// the call is plaintext (an endpoint outside the mesh, or TLS turned off).
pub fn peer_tls(
    svc: &ServiceTarget,
    ep: &Endpoint,
    mesh: Option<&Arc<MeshTls>>,
) -> Option<PeerTls> {
    if !svc.mtls {
        return None;
    }
    Some(PeerTls {
        identity: ep.identity.clone()?,
        tls: mesh?.clone(),
    })
}

/// A TCP connection within `dial.timeout`, wrapped in mTLS when `dial.tls` says so. A failed
/// handshake (wrong identity, untrusted or expired certificate) is a connect failure naming the
/// cause. `alpn` tells a peer sidecar what will be sent through the connection (see [`Alpn`]).
pub async fn connect(dial: &Dial, alpn: Alpn) -> Result<PeerIo, AttemptError> {
    let (addr, timeout) = (dial.addr, dial.timeout);
    let tcp = connect_tcp(addr, timeout).await?;
    let Some(tls) = &dial.tls else {
        return Ok(PeerIo::Plain(tcp));
    };
    let connector = tls
        .tls
        .connector(Some(&tls.identity), alpn)
        .map_err(|e| AttemptError {
            failure: Failure::ConnectFailed,
            detail: format!("{addr}: cannot build the mTLS client config: {e}"),
        })?;
    let name = ServerName::IpAddress(addr.ip().into());
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(PeerIo::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(AttemptError {
            failure: Failure::ConnectFailed,
            detail: format!(
                "{addr}: mTLS handshake (expecting {}) failed: {e}",
                tls.identity
            ),
        }),
        Err(_) => Err(AttemptError {
            failure: Failure::ConnectFailed,
            detail: format!("{addr}: mTLS handshake timed out after {timeout:?}"),
        }),
    }
}

async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, AttemptError> {
    let fail = |detail: String| AttemptError {
        failure: Failure::ConnectFailed,
        detail,
    };
    // Marked under capture, so the capture rules let it out (`crate::sockopt`).
    match tokio::time::timeout(timeout, crate::sockopt::connect(addr)).await {
        Err(_) => Err(fail(format!("{addr}: connect timed out after {timeout:?}"))),
        Ok(Err(e)) => Err(fail(format!("{addr}: {e}"))),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}
