//! Config as the hot path sees it: an immutable [`Snapshot`] compiled from resources (regexes
//! compiled, header names parsed, endpoint sets and balancers built), swapped atomically.
//!
//! Building a snapshot is the only place config is interpreted; it either succeeds whole or
//! fails with a [`BuildError`] and the previous snapshot stays in force. A snapshot built from
//! the previous one and an update recompiles only the services the update touched
//! ([`index`] finds them) and shares everything else with its predecessor.
mod build;
mod directory;
mod external;
mod inbound;
#[cfg(test)]
mod incremental_tests;
mod index;
mod matcher;
mod modifier;
mod rule;
mod snapshot;

pub use build::{Carried, Live};
pub use directory::{Directory, NameAnswer};
pub use external::{ExternalTable, ExternalTarget, OriginateTls};
pub use inbound::InboundPolicy;
pub use matcher::{PathMatcher, RouteMatcher, ValueMatcher};
pub use modifier::HeaderModifier;
pub use snapshot::{host_service, split_host_port, Snapshot};

use crate::balance::{Balancer, Endpoint};
use crate::resilience::{LimitState, Limits, Locality, OutlierPolicy};
use crate::retry::{RetryBudget, RetryPolicy};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use trellis_api::service::ServicePort;

/// Why a resource set could not become a snapshot.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{resource}: {field}: {message}")]
pub struct BuildError {
    pub resource: String,
    pub field: String,
    pub message: String,
}

/// `(namespace, name)` of a service.
pub type ServiceKey = (String, String);

/// A service's `(namespace, name)` as a map key can be looked up by, so the per-request lookup
/// ([`Snapshot::service`]) borrows the two names instead of building a [`ServiceKey`] (two
/// `String`s) each time. Hashes and compares exactly as the tuple does, as `Borrow` requires.
pub trait ServiceName {
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
}

impl ServiceName for ServiceKey {
    fn namespace(&self) -> &str {
        &self.0
    }
    fn name(&self) -> &str {
        &self.1
    }
}

impl ServiceName for (&str, &str) {
    fn namespace(&self) -> &str {
        self.0
    }
    fn name(&self) -> &str {
        self.1
    }
}

impl<'a> std::borrow::Borrow<dyn ServiceName + 'a> for ServiceKey {
    fn borrow(&self) -> &(dyn ServiceName + 'a) {
        self
    }
}

impl std::hash::Hash for dyn ServiceName + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // What `(String, String)`'s derived `Hash` does.
        self.namespace().hash(state);
        self.name().hash(state);
    }
}

impl PartialEq for dyn ServiceName + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.namespace() == other.namespace() && self.name() == other.name()
    }
}

impl Eq for dyn ServiceName + '_ {}

/// Every service of a snapshot, by namespace and name (persistent: an update copies a path).
pub type Services = imbl::HashMap<ServiceKey, Arc<ServiceTarget>>;

/// Compiles the rules of a Route: a service's, or one that steers no service of the mesh (a
/// gateway listener's route table, see [`crate::gateway`]).
pub fn compile_route(route: &trellis_api::Route) -> Result<Vec<Rule>, BuildError> {
    (route.spec.rules.iter().enumerate())
        .map(|(i, r)| rule::compile(route, i, r))
        .collect()
}

/// A service as callers see it: ports, ordered routing rules and endpoint groups by subset.
#[derive(Debug)]
pub struct ServiceTarget {
    /// Shared with every request's metric labels (no copy per request).
    pub name: Arc<str>,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    pub rules: Vec<Rule>,
    /// `None` is every endpoint of the service; `Some(subset)` a named subset.
    pub groups: HashMap<Option<String>, Arc<EndpointGroup>>,
    /// From the DestinationPolicy; the proxy's `--connect-timeout` when unset.
    pub connect_timeout: Option<Duration>,
    pub outlier: Option<OutlierPolicy>,
    pub limits: Limits,
    /// Live limit counters, shared across snapshots.
    pub limit_state: Arc<LimitState>,
    /// Zone preference, when the caller has a zone.
    pub locality: Option<Locality>,
    /// Whether calls to endpoints with an identity use mTLS (mesh mode and DestinationPolicy tls).
    pub mtls: bool,
}

impl ServiceTarget {
    /// The port a caller asked for, or the first one.
    pub fn port(&self, port: Option<u16>) -> Option<&ServicePort> {
        match port {
            Some(p) => self.ports.iter().find(|sp| sp.port == p),
            None => self.ports.first(),
        }
    }
}

/// Endpoints of a service (or subset) and the balancer that picks among them.
#[derive(Debug)]
pub struct EndpointGroup {
    pub endpoints: Vec<Endpoint>,
    pub balancer: Balancer,
    pub hash_on: Option<trellis_api::policy::HashOn>,
}

/// Where a rule sends traffic: a service (by namespace and name), optionally a subset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendRef {
    pub namespace: String,
    pub service: String,
    pub subset: Option<String>,
}

#[derive(Debug)]
pub struct WeightedBackend {
    pub backend: BackendRef,
    pub weight: u32,
    /// The subset as the `destination_subset` metric label (`""` for the whole service), shared.
    pub subset_label: Arc<str>,
}

/// One compiled routing rule.
#[derive(Debug)]
pub struct Rule {
    /// Label for metrics and logs: the Route's name, plus `/rule` when the rule is named;
    /// shared with every request's metric labels (no copy per request).
    pub name: Arc<str>,
    /// Empty matches every request.
    pub matches: Vec<RouteMatcher>,
    /// Only requests to these service ports; empty: every port.
    pub ports: Vec<u16>,
    pub backends: Vec<WeightedBackend>,
    pub total_weight: u64,
    pub timeout: Option<Duration>,
    pub retry: Option<Arc<RetryPolicy>>,
    pub budget: Arc<RetryBudget>,
    pub fault: Option<Fault>,
    pub mirror: Option<MirrorTarget>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub rewrite: Option<Rewrite>,
    /// The rule's token bucket in this sidecar; `None` (one branch) when the rule has no limit.
    pub rate_limit: Option<Arc<crate::ratelimit::RouteLimit>>,
    /// Answered by the sidecar with a redirect, never forwarded.
    pub redirect: Option<trellis_api::route::Redirect>,
    /// Answered by the sidecar with this status and body, never forwarded.
    pub direct_response: Option<DirectResponse>,
}

/// A fixed answer (see [`trellis_api::route::DirectResponse`]).
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
    /// A share beside the rule's backends' weights; `None`: every request.
    pub weight: Option<u64>,
}

impl DirectResponse {
    /// Whether this request is answered directly: always without a weight, else with the
    /// chance of the weight's share beside the backends' `total_weight`.
    pub fn applies(&self, total_weight: u64) -> bool {
        match self.weight {
            None => true,
            Some(weight) => {
                let share = total_weight + weight;
                share > 0 && rand::random_range(0..share) >= total_weight
            }
        }
    }
}

impl Rule {
    /// Whether the rule applies to requests to service port `port` (`None`: the service's
    /// first port, `first`).
    pub fn serves_port(&self, port: Option<u16>, first: Option<u16>) -> bool {
        self.ports.is_empty() || port.or(first).is_some_and(|p| self.ports.contains(&p))
    }

    /// The prefix of match `matched` when it is a `PathPrefix` match (prefix rewrites and
    /// redirects replace it).
    pub fn matched_prefix(&self, matched: usize) -> Option<&str> {
        self.matches.get(matched).and_then(|m| match &m.path {
            Some(matcher::PathMatcher::Prefix(p)) => Some(p.as_str()),
            _ => None,
        })
    }

    /// The index of the first match that fits, or `Some(usize::MAX)` for a rule with none.
    pub fn matching<B>(&self, req: &http::Request<B>) -> Option<usize> {
        if self.matches.is_empty() {
            return Some(usize::MAX);
        }
        self.matches.iter().position(|m| m.matches(req))
    }

    /// Picks a backend by weight, with `roll` uniform in `0..total_weight`.
    pub fn backend(&self, roll: u64) -> Option<&BackendRef> {
        self.backend_index(roll).map(|i| &self.backends[i].backend)
    }

    /// The index in `backends` of the backend `roll` (0..total_weight) lands on.
    pub fn backend_index(&self, roll: u64) -> Option<usize> {
        let mut acc = 0u64;
        for (i, b) in self.backends.iter().enumerate() {
            acc += u64::from(b.weight);
            if roll < acc {
                return Some(i);
            }
        }
        None
    }
}

#[derive(Debug)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<FaultAbort>,
    pub headers: Vec<ValueMatcher>,
}

#[derive(Debug, Clone, Copy)]
pub enum FaultAbort {
    Http {
        status: http::StatusCode,
        percent: f64,
    },
    Grpc {
        code: u32,
        percent: f64,
    },
}

#[derive(Debug)]
pub struct MirrorTarget {
    pub backend: BackendRef,
    pub percent: f64,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    /// Replaces a PathPrefix match's prefix, or the whole path after other matches.
    pub path: Option<String>,
    /// Replaces the whole path.
    pub full_path: Option<String>,
    pub host: Option<http::HeaderValue>,
}
