//! Endpoint choice: which endpoint of a service (or subset) gets the next try or connection.
//!
//! Every path picks here, so every path honours the same preferences, dropped one at a time
//! rather than failing: passive health (endpoints ejected by outlier detection or backed off by
//! failure accrual are left out, unless too few would remain), the caller's zone (with failover,
//! see [`crate::resilience::Locality`]), and, for a retry, an endpoint other than the one that
//! just failed. The balancer picks among what is left; a request with a hash key (ring hash,
//! Maglev) keeps to its endpoint.
//!
//! A pick copies nothing: [`Picked`] holds the service and endpoint group by `Arc` and the
//! endpoint by index, and nothing allocates unless an endpoint is ejected or backed off.
use super::connect::Dial;
use super::Context;
use crate::balance::{hash_key, Endpoint, InFlight};
use crate::config::{BackendRef, EndpointGroup, ServiceTarget, Snapshot};
use crate::error::{ProxyError, Reason};
use crate::resilience;
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// An endpoint chosen for a try, and the service whose limits, timeouts and passive health
/// govern it.
pub struct Picked {
    svc: Arc<ServiceTarget>,
    group: Arc<EndpointGroup>,
    index: usize,
}

impl Picked {
    pub fn endpoint(&self) -> &Endpoint {
        &self.group.endpoints[self.index]
    }

    pub fn service(&self) -> &Arc<ServiceTarget> {
        &self.svc
    }

    /// How to connect to this endpoint: the service's connect timeout and peer mTLS.
    pub fn dial(&self, ctx: &Context<'_>) -> Dial {
        Dial::to(&self.svc, self.endpoint(), ctx.connect_timeout, ctx.tls)
    }

    /// Counts a try as in flight to this endpoint (the balancer's load) until dropped.
    pub fn start(&self) -> InFlight {
        self.endpoint().load.start()
    }
}

/// Picks an endpoint of `backend` in `snapshot` (see the module docs). `headers` are the
/// request's, for a hash key on a header or cookie (`None` for opaque TCP); `peer` is the
/// caller, for a hash key on its address; `avoid` is the endpoint that just failed.
pub fn pick(
    snapshot: &Snapshot,
    backend: &BackendRef,
    headers: Option<&HeaderMap>,
    peer: IpAddr,
    avoid: Option<SocketAddr>,
) -> Result<Picked, ProxyError> {
    let svc = snapshot
        .service(&backend.namespace, &backend.service)
        .ok_or_else(|| {
            unavailable(format!(
                "backend service {} is not in the mesh",
                backend.service
            ))
        })?;
    pick_in(svc, &backend.subset, headers, peer, avoid)
}

/// Picks an endpoint of `svc`, of its subset `subset` when given, as [`pick`] does.
pub fn pick_in(
    svc: &Arc<ServiceTarget>,
    subset: &Option<String>,
    headers: Option<&HeaderMap>,
    peer: IpAddr,
    avoid: Option<SocketAddr>,
) -> Result<Picked, ProxyError> {
    let group = svc.groups.get(subset).ok_or_else(|| {
        unavailable(format!(
            "subset {:?} of {} is not declared in its DestinationPolicy",
            subset.as_deref().unwrap_or(""),
            svc.name
        ))
    })?;
    let key = group.hash_on.as_ref().and_then(|h| match headers {
        Some(headers) => hash_key(h, headers, Some(peer)),
        None => hash_key(h, &HeaderMap::new(), Some(peer)),
    });
    let eps = &group.endpoints;
    let passive = resilience::passive_filter(svc.outlier.as_ref(), eps);
    let healthy = |i: usize| passive.as_ref().is_none_or(|up| up[i]);
    let zone = svc.locality.as_ref().and_then(|l| l.choose(eps, healthy));
    let in_zone = |i: usize| zone.is_none_or(|z| eps[i].zone.as_deref() == Some(z));
    let b = &group.balancer;
    let index = b
        .pick(eps, key, |i| {
            healthy(i) && in_zone(i) && Some(eps[i].addr) != avoid
        })
        .or_else(|| b.pick(eps, key, |i| healthy(i) && in_zone(i)))
        .or_else(|| b.pick(eps, key, healthy))
        .or_else(|| b.pick(eps, key, |_| true))
        .ok_or_else(|| {
            unavailable(format!(
                "{}{} has no healthy endpoint",
                svc.name,
                subset
                    .as_ref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default()
            ))
        })?;
    Ok(Picked {
        svc: svc.clone(),
        group: group.clone(),
        index,
    })
}

fn unavailable(detail: String) -> ProxyError {
    ProxyError::new(Reason::NoHealthyEndpoints, detail)
}
