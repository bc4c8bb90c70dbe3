//! Endpoint load balancing: which endpoint of a service (or subset) serves the next request.
//!
//! A [`Balancer`] is compiled once per endpoint set when a config snapshot is built (ring and
//! Maglev tables, round-robin schedule, cumulative weights) and then shared read-only by every
//! request, so a pick is a random number, an atomic increment or a table read, never a lock.
//! The live signals the load-aware algorithms read, requests in flight and latency, live in
//! [`EndpointLoad`], which the config layer carries across snapshots by address.
//!
//! The default, as in linkerd2-proxy, is power of two choices over peak-EWMA latency measured to
//! the first response byte: it reacts to a slow endpoint within one response and costs two
//! random draws. Round robin, random, least-request and consistent hashing (ring hash, Maglev)
//! are there for users who ask for them.
//!
//! This module never decides health: callers pass `available(i)` to every pick, so outlier
//! ejection, health checks and circuit breakers compose without rebuilding the balancer. It must
//! never panic, whatever the endpoint set, weights or hash key.
mod hash;
mod labels;
mod load;
mod maglev;
mod ring;
mod weighted;

#[cfg(test)]
mod tests;

pub use hash::hash_key;
pub use labels::Labels;
pub use load::{EndpointLoad, InFlight, DEFAULT_DECAY, DEFAULT_RTT, FAILURE_PENALTY};

use maglev::Maglev;
use ring::Ring;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use trellis_api::policy::{HashOn, LbAlgorithm, LoadBalancer};
use weighted::{pick_p2c, pick_random, RoundRobin, Weights};

/// One instance of a service as the balancer sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Relative share of traffic for the weighted algorithms; 0 counts as 1.
    pub weight: u32,
    pub zone: Option<String>,
    pub labels: Labels,
    /// Live load, shared across config snapshots.
    pub load: Arc<EndpointLoad>,
    /// Passive health (consecutive failures, ejection), shared across config snapshots.
    pub outlier: Arc<crate::resilience::OutlierState>,
    /// The SPIFFE identity this endpoint's certificate must carry; `None` for an endpoint
    /// outside the mesh (no sidecar), which is called in plaintext.
    pub identity: Option<Arc<trellis_identity::SpiffeId>>,
    /// The Workload's name, as the `destination_workload` metric label (`""` for an endpoint
    /// that is not a Workload).
    pub workload: Arc<str>,
}

impl Endpoint {
    /// An endpoint of weight 1 with no zone or labels and fresh load state.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            zone: None,
            labels: Labels::default(),
            load: Arc::new(EndpointLoad::new()),
            outlier: Arc::new(crate::resilience::OutlierState::new()),
            identity: None,
            workload: crate::metrics::no_label(),
        }
    }
}

impl crate::resilience::Tracked for Endpoint {
    fn record(&self) -> &crate::resilience::OutlierState {
        &self.outlier
    }

    fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }
}

/// A load balancer compiled for one endpoint set.
pub struct Balancer {
    algorithm: LbAlgorithm,
    hash_on: Option<HashOn>,
    weights: Weights,
    kind: Kind,
}

enum Kind {
    RoundRobin(RoundRobin),
    Random,
    LeastRequest,
    PeakEwma,
    RingHash(Ring),
    Maglev(Maglev),
}

impl Balancer {
    /// Precomputes whatever `config.algorithm` needs for `endpoints`; pass the same slice, in
    /// the same order, to [`Balancer::pick`].
    pub fn new(config: &LoadBalancer, endpoints: &[Endpoint]) -> Self {
        let kind = match config.algorithm {
            LbAlgorithm::RoundRobin => Kind::RoundRobin(RoundRobin::new(endpoints)),
            LbAlgorithm::Random => Kind::Random,
            LbAlgorithm::LeastRequest => Kind::LeastRequest,
            LbAlgorithm::PeakEwma => Kind::PeakEwma,
            LbAlgorithm::RingHash => Kind::RingHash(Ring::new(endpoints)),
            LbAlgorithm::Maglev => Kind::Maglev(Maglev::new(endpoints)),
        };
        Self {
            algorithm: config.algorithm,
            hash_on: config.hash_on.clone(),
            weights: Weights::new(endpoints),
            kind,
        }
    }

    pub fn algorithm(&self) -> LbAlgorithm {
        self.algorithm
    }

    /// Whether picks use a hash key (ring hash and Maglev), so callers can skip computing one.
    pub fn uses_hash_key(&self) -> bool {
        matches!(self.kind, Kind::RingHash(_) | Kind::Maglev(_))
    }

    /// The request's hash key per the configured `hashOn`, or `None` when the algorithm does not
    /// hash or the request lacks the header / cookie / peer address.
    pub fn hash_key(&self, headers: &http::HeaderMap, peer: Option<IpAddr>) -> Option<u64> {
        match &self.hash_on {
            Some(on) if self.uses_hash_key() => hash_key(on, headers, peer),
            _ => None,
        }
    }

    /// The index in `endpoints` of the endpoint to use, among those for which `available(i)`
    /// holds; `None` when none is available (or the set is empty).
    ///
    /// `hash_key` is used by ring hash and Maglev (which pick at random without one) and
    /// ignored by the others. Indices beyond the set the balancer was built for are never
    /// returned, even if a caller passes a different slice.
    pub fn pick(
        &self,
        endpoints: &[Endpoint],
        hash_key: Option<u64>,
        available: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.weights.len().min(endpoints.len());
        let available = |i: usize| i < n && available(i);
        let load = |i: usize| endpoints.get(i).map(|e| &e.load);
        match (&self.kind, hash_key) {
            (Kind::RoundRobin(rr), _) => rr.pick(&self.weights, &available),
            (Kind::LeastRequest, _) => pick_p2c(&self.weights, &available, |i| {
                load(i).map_or(f64::INFINITY, |l| l.in_flight() as f64)
            }),
            (Kind::PeakEwma, _) => pick_p2c(&self.weights, &available, |i| {
                load(i).map_or(f64::INFINITY, |l| l.cost())
            }),
            (Kind::RingHash(ring), Some(key)) => ring.pick(key, &available),
            (Kind::Maglev(table), Some(key)) => table.pick(key, &available),
            (Kind::Random | Kind::RingHash(_) | Kind::Maglev(_), _) => {
                pick_random(&self.weights, &available)
            }
        }
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Balancer");
        d.field("algorithm", &self.algorithm)
            .field("endpoints", &self.weights.len());
        match &self.kind {
            Kind::RingHash(ring) => d.field("ring_points", &ring.len()),
            Kind::Maglev(table) => d.field("maglev_table", &table.len()),
            _ => &mut d,
        };
        d.finish()
    }
}
