//! HTTP connections to upstreams (peer proxies, endpoints outside the mesh, or the local app on
//! the inbound side), opened through [`super::connect`].
//!
//! HTTP/1.1 goes through hyper-util's pooled client, one pool per endpoint address, with the
//! caller's `Host` kept. HTTP/2 keeps one multiplexed connection per endpoint and sends the
//! caller's URI unchanged, so `:authority` survives the hop. Failures are classified into
//! [`Failure`] so retry policy can tell a refused connection from a reset.
use super::connect::{self, Dial, PeerTls};
use super::AttemptError;
use crate::body::{self, Body, ContinueGate};
use crate::idle::{Activity, InFlight};
use crate::retry::Failure;
use crate::tls::io::PeerIo;
use crate::tls::Alpn;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use trellis_api::error_chain;
use trellis_api::service::Protocol;
use trellis_identity::SpiffeId;

/// Which HTTP version to speak to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

impl Wire {
    /// The version to speak towards a port that declares `protocol`, for a request that arrived
    /// as `version`: what the port declares (`http` is HTTP/1.1, `http2` and `grpc` HTTP/2),
    /// whatever the caller spoke, so an HTTP/2 client reaches an HTTP/1.1-only app and an
    /// HTTP/1.1 client an HTTP/2-only one. A port that declares nothing (`detect`) gets the
    /// caller's version: nothing else is known about the app behind it.
    pub fn for_port(protocol: Protocol, version: Version) -> Wire {
        match protocol {
            Protocol::Http => Wire::Http1,
            Protocol::Http2 | Protocol::Grpc => Wire::Http2,
            Protocol::Detect | Protocol::Tcp if version == Version::HTTP_2 => Wire::Http2,
            Protocol::Detect | Protocol::Tcp => Wire::Http1,
        }
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<Body>;

/// Pools are kept apart by connect timeout and by the identity a TLS peer must prove, so a
/// pooled connection is only reused for calls that would have opened it the same way.
type PoolKey = (Duration, Option<Arc<SpiffeId>>);

pub struct Upstreams {
    /// Pooled HTTP/1 clients, one per [`PoolKey`] in use: a handful (connect timeouts and peer
    /// identities in use), so a scan beats hashing the identity on every request.
    h1: Mutex<Vec<(PoolKey, Client<PeerConnector, Body>)>>,
    /// One multiplexed connection per endpoint, plaintext and mTLS apart.
    h2: Mutex<HashMap<(SocketAddr, bool), H2Conn>>,
    /// How long a connection stays open with no request (`--upstream-idle-timeout`).
    idle_timeout: Duration,
}

/// A multiplexed connection and the requests in flight on it (closed once idle too long).
struct H2Conn {
    sender: H2Sender,
    activity: Arc<Activity>,
}

/// The pooled client's connector: TCP within the timeout, then mTLS when the pool is for a
/// TLS peer. The URI's authority is the endpoint address.
#[derive(Clone)]
struct PeerConnector {
    timeout: Duration,
    tls: Option<PeerTls>,
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<PeerIo>;
    type Error = AttemptError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, AttemptError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| AttemptError {
                    failure: Failure::ConnectFailed,
                    detail: format!("{uri}: not an endpoint address"),
                })?;
            let dial = Dial {
                addr,
                timeout: this.timeout,
                tls: this.tls,
            };
            Ok(TokioIo::new(connect::connect(&dial, Alpn::Http1).await?))
        })
    }
}

fn h1_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<PeerTls>,
) -> Client<PeerConnector, Body> {
    // Without a timer the pool only notices an expired connection when it would reuse it; with
    // one, idle connections are closed (checked every idle-timeout period).
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(256)
        .build(PeerConnector {
            timeout: connect_timeout,
            tls,
        })
}

impl Upstreams {
    /// Connections idle for `idle_timeout` (`--upstream-idle-timeout`) are closed.
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            h1: Mutex::new(Vec::new()),
            h2: Mutex::new(HashMap::new()),
            idle_timeout,
        })
    }

    /// Sends one attempt as `dial` says (endpoint, connect timeout, mTLS). The request's URI
    /// may be origin-form or absolute.
    pub async fn send(
        &self,
        dial: &Dial,
        wire: Wire,
        req: Request<Body>,
    ) -> Result<Response<Body>, AttemptError> {
        match wire {
            Wire::Http1 => self.send_h1(dial, req).await,
            Wire::Http2 => self.send_h2(dial, req).await,
        }
    }

    fn h1(&self, dial: &Dial) -> Client<PeerConnector, Body> {
        let identity = dial.tls.as_ref().map(|t| &t.identity);
        // `Arc`'s `==` compares the pointers before the values.
        let same = |(timeout, id): &PoolKey| *timeout == dial.timeout && id.as_ref() == identity;
        let client = || h1_client(dial.timeout, self.idle_timeout, dial.tls.clone());
        let Ok(mut pools) = self.h1.lock() else {
            return client();
        };
        if let Some((_, c)) = pools.iter().find(|(key, _)| same(key)) {
            return c.clone();
        }
        let c = client();
        pools.push(((dial.timeout, identity.cloned()), c.clone()));
        c
    }

    async fn send_h1(
        &self,
        dial: &Dial,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, AttemptError> {
        as_http1(&mut req, dial.addr)?;
        // `Expect: 100-continue`: the body waits for the upstream's 100 (hyper reports 1xx
        // answers on HTTP/1 only; over HTTP/2 the body goes at once).
        let gate = body::expects_continue(&req).then(|| {
            let gate = ContinueGate::new();
            let on_100 = gate.clone();
            hyper::ext::on_informational(&mut req, move |rsp| {
                if rsp.status() == StatusCode::CONTINUE {
                    on_100.open();
                }
            });
            gate
        });
        if let Some(gate) = &gate {
            req = req.map(|b| gate.hold(b));
        }
        let rsp = self.h1(dial).request(req).await.map_err(|e| {
            let failure = if e.is_connect() {
                Failure::ConnectFailed
            } else {
                Failure::Reset
            };
            AttemptError {
                failure,
                detail: format!("{}: {}", dial.addr, error_chain(&e)),
            }
        })?;
        Ok(match gate {
            Some(gate) if !gate.is_open() => {
                // A final answer without a 100: the body is never sent; once the answer is done
                // with, the connection (owed a body it will not get) is let go.
                gate.answered();
                rsp.map(|b| body::on_drop(body::boxed(b), move || gate.close()))
            }
            _ => boxed_response(rsp),
        })
    }

    async fn send_h2(
        &self,
        dial: &Dial,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, AttemptError> {
        let addr = dial.addr;
        as_http2(&mut req, addr)?;
        let key = (addr, dial.tls.is_some());
        let (mut sender, in_flight) = self.h2_sender(key, dial).await?;
        sender.ready().await.map_err(|e| {
            self.forget_h2(key);
            AttemptError {
                failure: Failure::Reset,
                detail: format!("{addr}: {}", error_chain(&e)),
            }
        })?;
        sender
            .send_request(req)
            .await
            .map(|rsp| rsp.map(|b| body::boxed(body::Holding::new(b, in_flight))))
            .map_err(|e| AttemptError {
                failure: Failure::Reset,
                detail: format!("{addr}: {}", error_chain(&e)),
            })
    }

    fn forget_h2(&self, key: (SocketAddr, bool)) {
        if let Ok(mut map) = self.h2.lock() {
            map.remove(&key);
        }
    }

    async fn h2_sender(
        &self,
        key: (SocketAddr, bool),
        dial: &Dial,
    ) -> Result<(H2Sender, InFlight), AttemptError> {
        if let Ok(map) = self.h2.lock() {
            if let Some(c) = map.get(&key) {
                if !c.sender.is_closed() {
                    if let Some(in_flight) = c.activity.try_start() {
                        return Ok((c.sender.clone(), in_flight));
                    }
                }
            }
        }
        // Boxed: opening a connection (connect, mTLS, handshake) is a future of ~1.5 KB that
        // would otherwise sit inline in every request's future, and every enclosing future
        // copies its child whole when it starts awaiting it (a memcpy per level, per request).
        Box::pin(self.open_h2(key, dial)).await
    }

    /// A new multiplexed connection for `key`, kept for the requests after this one.
    async fn open_h2(
        &self,
        key: (SocketAddr, bool),
        dial: &Dial,
    ) -> Result<(H2Sender, InFlight), AttemptError> {
        let addr = key.0;
        let stream = connect::connect(dial, Alpn::Http2).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AttemptError {
                failure: Failure::ConnectFailed,
                detail: format!("{addr}: HTTP/2 handshake: {}", error_chain(&e)),
            })?;
        let activity = Activity::new();
        let in_flight = activity.start();
        let watched = activity.clone();
        let idle = self.idle_timeout;
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
                },
                // Dropping the connection closes it; it takes no new request once retired.
                _ = watched.expired(idle, idle) => {
                    tracing::debug!(%addr, ?idle, "closing an idle upstream HTTP/2 connection");
                }
            }
        });
        if let Ok(mut map) = self.h2.lock() {
            map.insert(
                key,
                H2Conn {
                    sender: sender.clone(),
                    activity,
                },
            );
        }
        Ok((sender, in_flight))
    }

    /// Forwards an HTTP/1.1 upgrade request (WebSocket and friends) on a fresh connection,
    /// returning the upstream's answer; on `101` the caller splices the two upgraded streams.
    pub async fn send_upgrade(
        &self,
        dial: &Dial,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, AttemptError> {
        let addr = dial.addr;
        let stream = connect::connect(dial, Alpn::Http1).await?;
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

/// Makes `req` an HTTP/1.1 request to `addr`: the caller's authority (an HTTP/2 `:authority`)
/// becomes `Host` unless it has one, and the URI is absolute-form with the endpoint's address,
/// which the pooled client connects to.
fn as_http1(req: &mut Request<Body>, addr: SocketAddr) -> Result<(), AttemptError> {
    if !req.headers().contains_key(http::header::HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    *req.uri_mut() = with_authority(req.uri(), addr_authority(addr))?;
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// Makes `req` an HTTP/2 request: `Host` becomes `:authority` (the endpoint's address when the
/// caller named none), and the `Host` header goes.
fn as_http2(req: &mut Request<Body>, addr: SocketAddr) -> Result<(), AttemptError> {
    if req.uri().authority().is_none() {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                Authority::try_from(h).map_err(|e| AttemptError {
                    failure: Failure::ConnectFailed,
                    detail: format!("cannot build upstream URI for {h:?}: {e}"),
                })
            })
            .transpose()?
            .unwrap_or_else(|| addr_authority(addr));
        *req.uri_mut() = with_authority(req.uri(), host)?;
    }
    req.headers_mut().remove(http::header::HOST);
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}

/// `uri` with its scheme set to http and authority replaced. The path is the request's own
/// (shared, not copied), and so is the authority: the pooled client clones both per request.
fn with_authority(uri: &Uri, authority: Authority) -> Result<Uri, AttemptError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let detail = |e: http::uri::InvalidUriParts| {
        format!(
            "cannot build upstream URI for {:?}: {e}",
            authority.as_str()
        )
    };
    parts.authority = Some(authority.clone());
    Uri::from_parts(parts).map_err(|e| AttemptError {
        failure: Failure::ConnectFailed,
        detail: detail(e),
    })
}

/// `addr` as a URI authority, written on the stack into one shared buffer (no `String`, no
/// copy of it, no copy when the pooled client clones it).
fn addr_authority(addr: SocketAddr) -> Authority {
    /// `[` + the longest IPv6 text (45) + `]:` + a port (5), rounded up.
    const MAX: usize = 56;
    struct Text([u8; MAX], usize);
    impl AsRef<[u8]> for Text {
        fn as_ref(&self) -> &[u8] {
            &self.0[..self.1]
        }
    }
    let mut buf = [0u8; MAX];
    let mut w = &mut buf[..];
    // A socket address always fits (and always parses back as an authority).
    let _ = write!(w, "{addr}");
    let len = MAX - w.len();
    Authority::from_maybe_shared(Bytes::from_owner(Text(buf, len)))
        .unwrap_or_else(|_| Authority::from_static("0.0.0.0"))
}

/// Converts an upstream answer into the proxy's body type.
pub fn boxed_response(rsp: Response<Incoming>) -> Response<Body> {
    rsp.map(body::boxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_authority_trade_places_between_versions() {
        let addr: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        // An HTTP/2 caller's :authority becomes Host towards an HTTP/1.1 hop.
        let mut req = Request::get("http://web.shop:80/a?b=1")
            .version(Version::HTTP_2)
            .body(body::empty())
            .unwrap();
        as_http1(&mut req, addr).unwrap();
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()[http::header::HOST], "web.shop:80");
        assert_eq!(req.uri(), "http://10.0.0.1:8080/a?b=1");
        // An HTTP/1.1 caller's Host becomes :authority towards an HTTP/2 hop.
        let mut req = Request::get("/a?b=1")
            .header(http::header::HOST, "web.shop")
            .body(body::empty())
            .unwrap();
        as_http2(&mut req, addr).unwrap();
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(!req.headers().contains_key(http::header::HOST));
        assert_eq!(req.uri(), "http://web.shop/a?b=1");
        // Without either, the endpoint's address stands in.
        let mut req = Request::get("/").body(body::empty()).unwrap();
        as_http2(&mut req, addr).unwrap();
        assert_eq!(req.uri(), "http://10.0.0.1:8080/");
        // IPv6 endpoints, the longest included.
        let v6: SocketAddr = "[1111:2222:3333:4444:5555:6666:123.123.123.123]:65535"
            .parse()
            .unwrap();
        let mut req = Request::get("/x").body(body::empty()).unwrap();
        as_http1(&mut req, v6).unwrap();
        assert_eq!(req.uri(), &format!("http://{v6}/x")[..]);
        assert_eq!(addr_authority("[::1]:80".parse().unwrap()), "[::1]:80");
    }

    #[test]
    fn the_declared_protocol_picks_the_version_towards_the_app() {
        use Protocol::*;
        for v in [Version::HTTP_11, Version::HTTP_2, Version::HTTP_10] {
            assert_eq!(Wire::for_port(Http, v), Wire::Http1, "{v:?} to http");
            assert_eq!(Wire::for_port(Http2, v), Wire::Http2, "{v:?} to http2");
            assert_eq!(Wire::for_port(Grpc, v), Wire::Http2, "{v:?} to grpc");
        }
        assert_eq!(Wire::for_port(Detect, Version::HTTP_2), Wire::Http2);
        assert_eq!(Wire::for_port(Detect, Version::HTTP_11), Wire::Http1);
    }
}
