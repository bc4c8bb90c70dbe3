//! One way to pick and connect: everything between "this request (or connection) goes to that
//! service" and the bytes leaving for one of its endpoints, shared by every path that sends
//! upstream (HTTP tries, mirrors and upgrades in [`crate::http`], opaque TCP in
//! [`crate::listener`], a captured connection passed through, the inbound hop to the app).
//!
//! - [`mod@pick`]: which endpoint (passive health, zone, the balancer, another endpoint for a
//!   retry);
//! - [`connect`]: the connect timeout (the service's, else the proxy's), peer mTLS (whom the
//!   endpoint must prove to be) and the connection itself;
//! - [`feedback`]: what a try teaches the balancer and passive health (latency or the failure
//!   penalty; failure accrual or outlier detection);
//! - [`client`]: HTTP over those connections (pooled HTTP/1, multiplexed HTTP/2, upgrades);
//! - [`opaque`]: one TCP connection to a service, picked, limited and reported like an HTTP try.
//!
//! Why one module: when each path worked these out for itself they drifted apart (opaque TCP
//! picked with no passive health, zone or limits and taught nothing when a connect failed;
//! upgrades ignored a service's connect timeout). This module knows services, endpoints and
//! TLS, and never the proxy's shared state or HTTP routing, so both can use it without either
//! importing the other.
pub mod client;
pub mod connect;
pub mod feedback;
pub mod opaque;
pub mod pick;

pub use client::{boxed_response, Upstreams, Wire};
pub use connect::{Dial, PeerTls};
pub use feedback::Ended;
pub use pick::{pick, pick_in, Picked};

use crate::body::Body;
use crate::config::ServiceTarget;
use crate::error::{ProxyError, Reason};
use crate::metrics::Metrics;
use crate::resilience::Overflow;
use crate::retry::Failure;
use crate::tls::MeshTls;
use http::{Request, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Sends one request to one endpoint: its response, or how the try failed. The forwarding core
/// (tries, timeouts, retries, passive health) reaches upstreams only through this, so it runs
/// in-process against a fake in tests, on a paused clock, as linkerd2-proxy tests its stacks
/// with mock services. [`Upstreams`] is the real one; generic, not `dyn`, so the request path
/// pays no allocation for the indirection.
pub trait Upstream: Send + Sync + 'static {
    fn send(
        &self,
        dial: &Dial,
        wire: Wire,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, AttemptError>> + Send;
}

impl Upstream for Upstreams {
    fn send(
        &self,
        dial: &Dial,
        wire: Wire,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, AttemptError>> + Send {
        Upstreams::send(self, dial, wire, req)
    }
}

/// What the proxy lends every path that connects upstream: its certificate (for peer mTLS), its
/// connect timeout for services that set none (`--connect-timeout`), and the metrics passive
/// health counts in. References only: made for each request at no cost.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub metrics: &'a Metrics,
    pub tls: Option<&'a Arc<MeshTls>>,
    pub connect_timeout: Duration,
    /// This sidecar's Workload name as the `trellis-source-workload` header, sent to peers over
    /// mTLS (see [`crate::metrics::workloads`]).
    pub workload: Option<&'a http::HeaderValue>,
}

/// A failed attempt: how it failed (for retry policy) and what to tell a human.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct AttemptError {
    pub failure: Failure,
    pub detail: String,
}

impl AttemptError {
    /// The reason the proxy answers with when this was the only (or last) try.
    pub fn reason(&self) -> Reason {
        match self.failure {
            Failure::ConnectFailed => Reason::ConnectFailed,
            Failure::Reset => Reason::UpstreamReset,
            Failure::PerTryTimeout => Reason::Timeout,
        }
    }
}

/// The proxy's answer when this was the only try: the reason, and what failed.
impl From<AttemptError> for ProxyError {
    fn from(e: AttemptError) -> Self {
        ProxyError::new(e.reason(), e.detail)
    }
}

/// The proxy's answer when `svc`'s limits refuse a try or a connection.
pub fn overflow(svc: &ServiceTarget, o: Overflow) -> ProxyError {
    ProxyError::new(
        Reason::PoolOverflow,
        format!(
            "{} is at its limit of {}",
            svc.name,
            o.describe(&svc.limits)
        ),
    )
}
