//! HTTP serving for the ports Trellis answers itself (the control plane's API and xDS, the
//! sidecar's admin port), with the timeouts hyper leaves to its user.
//!
//! Why: hyper's HTTP/1 server has a header-read timeout only when given a timer (without one a
//! client that sends half a request head holds its connection forever), and its HTTP/2 server
//! has no timeout at all for a client that sends the preface and then nothing. [`HttpServer`]
//! drives a connection together with its [`ConnSlot`] so that:
//!
//! - a connection with no complete request head yet ([`Phase::Pending`]) is closed once the
//!   **header-read timeout** has passed since it was accepted, whatever the protocol;
//! - a connection with no request in flight ([`Phase::Idle`]) is closed gracefully (HTTP/2:
//!   GOAWAY) once the **idle timeout** has passed since its last response finished. For HTTP/1
//!   hyper's own header-read timer is set to the idle timeout too, so a slow head after a
//!   keep-alive is bounded the same way;
//! - a connection with a request in flight ([`Phase::Active`]) is never timed out. A request
//!   counts as in flight until its response body is finished or dropped, so a long-lived gRPC
//!   stream (an xDS subscription) keeps its connection as long as it lives; such connections
//!   are watched with HTTP/2 PINGs instead, which any live client answers;
//! - a connection the [`ConnLimiter`](crate::ConnLimiter) sheds is dropped at once.
//!
//! [`Tracked`] wraps a hyper service to move the slot between phases.
use crate::limit::{ConnSlot, Phase, RequestGuard};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Timeouts for a port's connections (see the module docs).
#[derive(Debug, Clone)]
pub struct HttpServer {
    /// How long a new connection may take to send its first complete request head.
    pub header_read_timeout: Duration,
    /// How long a connection may stay with no request in flight.
    pub idle_timeout: Duration,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed.
    pub ping_timeout: Duration,
}

impl Default for HttpServer {
    /// 10 s to send a request head, 60 s idle, 20 s to answer a PING.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

/// How a connection served by [`HttpServer::drive`] ended.
#[derive(Debug)]
pub enum Ended {
    /// The connection finished (the client closed it, or a graceful close completed).
    Closed(Result<(), hyper::Error>),
    /// No complete request head within the header-read timeout.
    HeaderTimeout,
    /// Closed gracefully after the idle timeout.
    Idle,
    /// A graceful close did not complete within the header-read timeout; dropped.
    CloseTimeout,
    /// The connection limiter shed it to make room.
    Shed,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Closed(Ok(())) => f.write_str("closed"),
            Ended::Closed(Err(e)) => write!(f, "closed with an error: {e}"),
            Ended::HeaderTimeout => f.write_str("no request head within the header-read timeout"),
            Ended::Idle => f.write_str("closed after the idle timeout"),
            Ended::CloseTimeout => f.write_str("graceful close did not complete; dropped"),
            Ended::Shed => f.write_str("shed by the connection cap"),
        }
    }
}

impl HttpServer {
    /// An HTTP/1 server builder with a timer, keep-alive, and hyper's header-read timer (which
    /// runs from the moment hyper waits for a head, so between keep-alive requests too) set to
    /// the idle timeout plus the header-read timeout: the idle close of [`HttpServer::drive`]
    /// comes first, and a slow head after a keep-alive is cut by then at the latest. (The first
    /// head is bounded by the header-read timeout alone, in [`HttpServer::drive`].)
    pub fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(self.idle_timeout + self.header_read_timeout);
        b
    }

    /// An HTTP/2 server builder with a timer and PINGs every idle-timeout period to find dead
    /// peers (hyper's limits on reset streams stay at their defaults).
    pub fn http2(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(self.idle_timeout)
            .keep_alive_timeout(self.ping_timeout);
        b
    }

    /// Runs `fut` (say, protocol detection) while the connection is pending: `None` when the
    /// header-read timeout passes or the connection is shed first.
    pub async fn while_pending<F: Future>(&self, slot: &ConnSlot, fut: F) -> Option<F::Output> {
        let deadline = slot.admitted() + self.header_read_timeout;
        tokio::select! {
            biased;
            _ = slot.shed() => None,
            _ = sleep_until(deadline) => None,
            out = fut => Some(out),
        }
    }

    /// Serves HTTP/1.1 on `io` with `service`, under `slot`'s timeouts.
    pub async fn serve_http1<I, S, B>(&self, io: I, service: S, slot: ConnSlot) -> Ended
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let service = Tracked::new(service, slot.clone());
        let conn = self.http1().serve_connection(TokioIo::new(io), service);
        self.drive(conn, &slot).await
    }

    /// Serves HTTP/2 on `io` with `service`, under `slot`'s timeouts.
    pub async fn serve_http2<I, S, B>(&self, io: I, service: S, slot: ConnSlot) -> Ended
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let service = Tracked::new(service, slot.clone());
        let conn = self.http2().serve_connection(TokioIo::new(io), service);
        self.drive(conn, &slot).await
    }

    /// Drives a hyper connection (served with a [`Tracked`] service on `slot`) until it ends,
    /// closing it on the timeouts of its phase, or at once when shed.
    pub async fn drive<C>(&self, conn: C, slot: &ConnSlot) -> Ended
    where
        C: GracefulConnection<Error = hyper::Error>,
    {
        tokio::pin!(conn);
        let mut closing: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let deadline = match (closing, slot.phase()) {
                (Some(since), _) => since + self.header_read_timeout,
                (None, Phase::Pending) => slot.admitted() + self.header_read_timeout,
                (None, Phase::Idle(since)) => since + self.idle_timeout,
                // Nothing to time out; look again later (going idle sets a later deadline).
                (None, Phase::Active) => now + self.idle_timeout,
            };
            tokio::select! {
                r = conn.as_mut() => {
                    // Once closing, a peer that hangs up mid-way (broken pipe) is still a close.
                    return match closing {
                        Some(_) => Ended::Idle,
                        None => Ended::Closed(r),
                    };
                }
                _ = slot.shed() => return Ended::Shed,
                _ = sleep_until(deadline) => {
                    if closing.is_some() {
                        return Ended::CloseTimeout;
                    }
                    let now = Instant::now();
                    match slot.phase() {
                        Phase::Pending if now >= slot.admitted() + self.header_read_timeout => {
                            return Ended::HeaderTimeout;
                        }
                        Phase::Idle(since) if now >= since + self.idle_timeout => {
                            conn.as_mut().graceful_shutdown();
                            closing = Some(now);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A hyper service that marks its connection's slot active while each request is in flight
/// (until the response body is finished or dropped).
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    slot: ConnSlot,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, slot: ConnSlot) -> Self {
        Self { inner, slot }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.slot.request_started();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            Ok(rsp.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: RequestGuard,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
