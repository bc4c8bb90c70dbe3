//! Forwarding an explicit-mode request to an `ExternalService` (see [`trellis_api::external`]):
//! the sidecar resolves the destination (Static addresses, or the host name through the
//! system resolver when it connects), opens TCP, originates TLS when asked (SNI: the
//! ExternalService's `sni`, else the host), and sends the request over HTTP/1.1 (or HTTP/2 for
//! an `http2` port).
//!
//! Each request opens its own connection (no pool yet), and Route rules, retries and timeouts
//! do not apply; a connection that cannot be made in [`CONNECT_TIMEOUT`] is `503
//! connect-failed`.
use super::headers::strip_hop_by_hop;
use crate::body::{self, Body};
use crate::config::ExternalTarget;
use crate::error::{ProxyError, Reason};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use trellis_api::external::{ExternalProtocol, Resolution};
use trellis_identity::rustls::pki_types::ServerName;
use trellis_identity::tokio_rustls::TlsConnector;

/// How long resolving and connecting (TLS included) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `req` to `target` at `host:port` and returns its answer.
pub async fn forward(
    target: &ExternalTarget,
    host: &str,
    port: u16,
    protocol: ExternalProtocol,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let http2 = match protocol {
        ExternalProtocol::Http => false,
        ExternalProtocol::Http2 => true,
        ExternalProtocol::Tcp | ExternalProtocol::Tls => {
            return Err(ProxyError::new(
                Reason::NoRoute,
                format!(
                    "port {port} of ExternalService {} is {}, not HTTP: the explicit outbound port forwards HTTP only",
                    target.name,
                    if protocol == ExternalProtocol::Tcp { "tcp" } else { "tls" }
                ),
            ))
        }
    };
    strip_hop_by_hop(req.headers_mut(), false);
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    if http2 {
        parts.scheme = Some(if target.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(
            Authority::try_from(format!("{host}:{port}"))
                .map_err(|e| ProxyError::new(Reason::BadRequest, format!("authority: {e}")))?,
        );
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(http::header::HOST);
    } else {
        *req.version_mut() = Version::HTTP_11;
        // An HTTP/2 caller names the host in `:authority` only; HTTP/1.1 needs the header.
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(host) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    parts.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| ProxyError::new(Reason::BadRequest, format!("uri: {e}")))?;

    let connect_failed = |detail: String| ProxyError::new(Reason::ConnectFailed, detail);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect(target, host, port))
        .await
        .map_err(|_| {
            connect_failed(format!(
                "ExternalService {}: no connection to {host}:{port} within {CONNECT_TIMEOUT:?}",
                target.name
            ))
        })??;
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        None => send(TokioIo::new(tcp), http2, req).await,
        Some(tls) => {
            let name = match &tls.sni {
                Some(n) => n.clone(),
                None => ServerName::try_from(host.to_string()).map_err(|e| {
                    ProxyError::new(Reason::BadRequest, format!("host {host:?} as SNI: {e}"))
                })?,
            };
            let config = if http2 { &tls.http2 } else { &tls.http1 };
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TlsConnector::from(config.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                connect_failed(format!(
                    "TLS to {host}:{port}: no handshake within {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| {
                connect_failed(format!(
                    "TLS to {host}:{port} (ExternalService {}): {e}",
                    target.name
                ))
            })?;
            send(TokioIo::new(stream), http2, req).await
        }
    }
}

/// Opens TCP to the first address that answers.
async fn connect(target: &ExternalTarget, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
    let addresses: Vec<SocketAddr> = match target.resolution {
        Resolution::Static => target
            .addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect(),
        Resolution::Dns => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| {
                ProxyError::new(
                    Reason::ConnectFailed,
                    format!("resolving {host} (ExternalService {}): {e}", target.name),
                )
            })?
            .collect(),
    };
    let mut last = None;
    for a in &addresses {
        // Marked like every upstream socket, so capture rules let it out rather than
        // redirecting the sidecar's own call back into it.
        match crate::sockopt::connect(*a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(ProxyError::new(
        Reason::ConnectFailed,
        format!(
            "ExternalService {}: no connection to {host}:{port} ({})",
            target.name,
            last.unwrap_or_else(|| "no address".into())
        ),
    ))
}

async fn send<T>(
    io: TokioIo<T>,
    http2: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let reset = |e: hyper::Error| ProxyError::new(Reason::UpstreamReset, e.to_string());
    let response = if http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(reset)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(reset)?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(reset)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(reset)?
    };
    Ok(response.map(body::boxed))
}
