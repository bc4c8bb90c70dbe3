//! Connections to upstreams (peer proxies, or the local app on the inbound side).
//!
//! HTTP/1.1 goes through hyper-util's pooled client, one pool per endpoint address, with the
//! caller's `Host` kept. HTTP/2 keeps one multiplexed connection per endpoint and sends the
//! caller's URI unchanged, so `:authority` survives the hop. Failures are classified into
//! [`Failure`] so retry policy can tell a refused connection from a reset.
use crate::body::{self, Body};
use crate::retry::Failure;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// Which HTTP version to speak to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

/// A failed attempt: how it failed (for retry policy) and what to tell a human.
#[derive(Debug)]
pub struct AttemptError {
    pub failure: Failure,
    pub detail: String,
}

type H2Sender = hyper::client::conn::http2::SendRequest<Body>;

pub struct Upstreams {
    /// One pooled HTTP/1 client per connect timeout in use (services may set their own).
    h1: Mutex<HashMap<Duration, Client<HttpConnector, Body>>>,
    h2: Mutex<HashMap<SocketAddr, H2Sender>>,
    /// The proxy-wide default, for services that set none.
    connect_timeout: Duration,
}

fn h1_client(connect_timeout: Duration) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
}

impl Upstreams {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            h1: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
            connect_timeout,
        })
    }

    /// The proxy-wide connect timeout.
    pub fn default_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sends one attempt to `addr`, connecting within `connect_timeout` (the proxy default when
    /// `None`). The request's URI may be origin-form or absolute.
    pub async fn send(
        &self,
        addr: SocketAddr,
        wire: Wire,
        req: Request<Body>,
        connect_timeout: Option<Duration>,
    ) -> Result<Response<Incoming>, AttemptError> {
        let timeout = connect_timeout.unwrap_or(self.connect_timeout);
        match wire {
            Wire::Http1 => self.send_h1(addr, req, timeout).await,
            Wire::Http2 => self.send_h2(addr, req, timeout).await,
        }
    }

    fn h1(&self, connect_timeout: Duration) -> Client<HttpConnector, Body> {
        match self.h1.lock() {
            Ok(mut map) => map
                .entry(connect_timeout)
                .or_insert_with(|| h1_client(connect_timeout))
                .clone(),
            Err(_) => h1_client(connect_timeout),
        }
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, AttemptError> {
        if !req.headers().contains_key(http::header::HOST) {
            if let Some(a) = req.uri().authority() {
                if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
            }
        }
        *req.uri_mut() = with_authority(req.uri(), &addr.to_string())?;
        *req.version_mut() = Version::HTTP_11;
        self.h1(connect_timeout).request(req).await.map_err(|e| {
            let failure = if e.is_connect() {
                Failure::ConnectFailed
            } else {
                Failure::Reset
            };
            AttemptError {
                failure,
                detail: format!("{addr}: {}", error_chain(&e)),
            }
        })
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, AttemptError> {
        if req.uri().authority().is_none() {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| addr.to_string());
            *req.uri_mut() = with_authority(req.uri(), &host)?;
        }
        req.headers_mut().remove(http::header::HOST);
        *req.version_mut() = Version::HTTP_2;
        let mut sender = self.h2_sender(addr, connect_timeout).await?;
        sender.ready().await.map_err(|e| {
            self.forget_h2(addr);
            AttemptError {
                failure: Failure::Reset,
                detail: format!("{addr}: {}", error_chain(&e)),
            }
        })?;
        sender.send_request(req).await.map_err(|e| AttemptError {
            failure: Failure::Reset,
            detail: format!("{addr}: {}", error_chain(&e)),
        })
    }

    fn forget_h2(&self, addr: SocketAddr) {
        if let Ok(mut map) = self.h2.lock() {
            map.remove(&addr);
        }
    }

    async fn h2_sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<H2Sender, AttemptError> {
        if let Ok(map) = self.h2.lock() {
            if let Some(s) = map.get(&addr) {
                if !s.is_closed() {
                    return Ok(s.clone());
                }
            }
        }
        let stream = self.connect(addr, connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AttemptError {
                failure: Failure::ConnectFailed,
                detail: format!("{addr}: HTTP/2 handshake: {}", error_chain(&e)),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        if let Ok(mut map) = self.h2.lock() {
            map.insert(addr, sender.clone());
        }
        Ok(sender)
    }

    /// A plain TCP connection within `connect_timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<TcpStream, AttemptError> {
        let fail = |detail: String| AttemptError {
            failure: Failure::ConnectFailed,
            detail,
        };
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => Err(fail(format!(
                "{addr}: connect timed out after {connect_timeout:?}"
            ))),
            Ok(Err(e)) => Err(fail(format!("{addr}: {e}"))),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
        }
    }

    /// Forwards an HTTP/1.1 upgrade request (WebSocket and friends) on a fresh connection,
    /// returning the upstream's answer; on `101` the caller splices the two upgraded streams.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, AttemptError> {
        let stream = self.connect(addr, self.connect_timeout).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AttemptError {
                failure: Failure::ConnectFailed,
                detail: format!("{addr}: {}", error_chain(&e)),
            })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = req;
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *req.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
        sender.send_request(req).await.map_err(|e| AttemptError {
            failure: Failure::Reset,
            detail: format!("{addr}: {}", error_chain(&e)),
        })
    }
}

/// `uri` with its scheme set to http and authority replaced.
fn with_authority(uri: &Uri, authority: &str) -> Result<Uri, AttemptError> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| AttemptError {
            failure: Failure::ConnectFailed,
            detail: format!("cannot build upstream URI for {authority:?}: {e}"),
        })
}

/// The error and its sources, joined, so "connection refused" is not hidden behind "client error".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Converts an upstream answer into the proxy's body type.
pub fn boxed_response(rsp: Response<Incoming>) -> Response<Body> {
    rsp.map(body::boxed)
}
