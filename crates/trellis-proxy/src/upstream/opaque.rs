//! Opaque TCP upstream: a downstream connection that is not HTTP gets one connection to an
//! endpoint, chosen, limited, opened and reported exactly as an HTTP try is, so a dead endpoint
//! costs TCP callers no more than HTTP ones.
//!
//! Per connection: [`pick`](super::pick) (passive health, the caller's zone, the balancer; a
//! hash on the caller's address keeps it on one endpoint), the service's `maxConnections` (held
//! for as long as the connection is open; waiting for one is bounded like a request's), the
//! service's connect timeout and peer mTLS ([`super::connect`]), and the result reported
//! ([`super::feedback`]): a failed connect costs the endpoint its failure penalty and counts
//! toward failure accrual or outlier detection; an established one clears its record. There is
//! no retry: bytes may already be on their way from the caller.
use super::connect::{self, Dial};
use super::feedback::{self, Ended};
use super::pick::pick_in;
use super::Context;
use crate::config::Snapshot;
use crate::error::{ProxyError, Reason};
use crate::resilience::Outcome;
use crate::tls::io::PeerIo;
use crate::tls::Alpn;
use std::net::SocketAddr;
use tokio::sync::OwnedSemaphorePermit;

/// An open upstream connection, and the connection limit it holds while open.
pub struct Opened {
    pub io: PeerIo,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A connection to an endpoint of `service` in `namespace`, for a caller at `peer`.
pub async fn to_service(
    ctx: &Context<'_>,
    snapshot: &Snapshot,
    namespace: &str,
    service: &str,
    peer: SocketAddr,
) -> Result<Opened, ProxyError> {
    let svc = snapshot.service(namespace, service).ok_or_else(|| {
        ProxyError::new(
            Reason::NoRoute,
            format!("upstream service {service} is not in the mesh config"),
        )
    })?;
    let picked = pick_in(svc, &None, None, peer.ip(), None)?;
    let dial = picked.dial(ctx);
    let permit = svc
        .limit_state
        .admit_connection(&svc.limits, dial.timeout)
        .await
        .map_err(|o| {
            ProxyError::new(
                Reason::PoolOverflow,
                format!(
                    "{} is at its limit of {}",
                    svc.name,
                    o.describe(&svc.limits)
                ),
            )
        })?;
    let mut in_flight = picked.start();
    let result = connect::connect(&dial, Alpn::Opaque).await;
    let ended = match &result {
        Ok(_) => Ended::Answered(Outcome::Success),
        Err(e) => Ended::Failed(e.failure),
    };
    feedback::record(ctx.metrics, &picked, &mut in_flight, ended);
    Ok(Opened {
        io: result?,
        _permit: Some(permit),
    })
}

/// A plaintext connection to an address that is no service's endpoint (the local app on the
/// inbound side, a captured connection's destination outside the mesh): no pick, no limits.
pub async fn to_address(ctx: &Context<'_>, addr: SocketAddr) -> Result<Opened, ProxyError> {
    let io = connect::connect(&Dial::plain(addr, ctx.connect_timeout), Alpn::Opaque).await?;
    Ok(Opened { io, _permit: None })
}
