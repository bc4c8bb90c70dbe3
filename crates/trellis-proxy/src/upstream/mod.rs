//! One way to pick and connect: everything between "this request (or connection) goes to that
//! service" and the bytes leaving for one of its endpoints, shared by every path that sends
//! upstream (HTTP tries, mirrors and upgrades in [`crate::http`], opaque TCP in
//! [`crate::listener`], the inbound hop to the local app).
//!
//! - [`connect`]: the connect timeout (the service's, else the proxy's), peer mTLS (whom the
//!   endpoint must prove to be) and the connection itself;
//! - [`client`]: HTTP over those connections (pooled HTTP/1, multiplexed HTTP/2, upgrades).
//!
//! Why one module: when each path worked these out for itself they drifted apart (opaque TCP
//! and upgrades ignored a service's connect timeout). This module knows services, endpoints and
//! TLS, and never the proxy's shared state or HTTP routing, so both can use it without either
//! importing the other.
pub mod client;
pub mod connect;

pub use client::{boxed_response, Upstreams, Wire};
pub use connect::{Dial, PeerTls};

use crate::error::Reason;
use crate::retry::Failure;

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
