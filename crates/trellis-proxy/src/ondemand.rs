//! On-demand discovery on the request path (`trellis proxy --on-demand`): a proxy that holds
//! config only for the services its app calls. A request for a service the config does not have
//! subscribes to it and waits — bounded by `--discovery-timeout` — until the control plane sends
//! it (endpoints, routes and policies first, so the request finds them in place) or says there
//! is no such service for this proxy. Later requests find it in the config and never wait.
//!
//! The answers a caller can get are the same as with the whole config: a service that does not
//! exist (or that this proxy may not call) is `404 no-route`, as before; only when the control
//! plane does not answer in time is the answer new: `503 discovery-timeout`, which says what to
//! look at. What a proxy on the whole config would forward, this one forwards too, and what the
//! whole config would refuse, it refuses: the control plane decides what a proxy may see either
//! way.
use crate::config::Snapshot;
use crate::error::{ProxyError, Reason};
use arc_swap::ArcSwapOption;
use std::sync::Arc;
use std::time::Duration;
use trellis_xds::{Discovery, Resolution};

/// The proxy's side of on-demand discovery.
#[derive(Debug, Clone)]
pub struct OnDemand {
    pub discovery: Discovery,
    /// How long a first call waits.
    pub timeout: Duration,
}

impl OnDemand {
    pub fn new(timeout: Duration) -> Self {
        OnDemand {
            discovery: Discovery::new(),
            timeout,
        }
    }
}

/// The config to serve `namespace/name` from, after discovering it: `config` is the proxy's
/// config in force (which the discovery updates). `Ok(None)` means there is no such service
/// (the caller answers as it always did); `Err` means the control plane did not answer in time.
pub async fn discover(
    on_demand: &OnDemand,
    config: &ArcSwapOption<Snapshot>,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Snapshot>>, ProxyError> {
    discover_within(on_demand, config, namespace, name, on_demand.timeout).await
}

/// [`discover`], waiting at most `timeout` (the DNS answerer waits less than a request may).
pub async fn discover_within(
    on_demand: &OnDemand,
    config: &ArcSwapOption<Snapshot>,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<Arc<Snapshot>>, ProxyError> {
    let key = format!("{namespace}/{name}");
    let known = || {
        config
            .load()
            .as_ref()
            .is_some_and(|s| s.service(namespace, name).is_some())
    };
    match on_demand
        .discovery
        .resolve(&key, timeout, known)
        .await
    {
        Resolution::Found => Ok(config.load_full()),
        Resolution::Absent => Ok(None),
        Resolution::Full => {
            tracing::warn!(service = %key, "on-demand discovery: the subscription is full; not discovering");
            Ok(None)
        }
        Resolution::TimedOut => Err(ProxyError::new(
            Reason::DiscoveryTimeout,
            format!(
                "the control plane did not answer for service {key} within {timeout:?} (on-demand discovery)"
            ),
        )),
    }
}
