//! The proxy's end of xDS: [`AdsClient`] keeps one ADS stream open to one of several
//! control-plane replicas and hands every accepted change to the proxy as the complete set of
//! [`Resources`] (shared, cheap to clone) plus what changed.
//!
//! The proxy must keep serving whatever happens to the control plane, so the client's rules are:
//! the proxy's config changes only through `apply`, and only to a set `apply` accepted (a
//! rejection is NACKed with its text and the previous set stays); while disconnected nothing is
//! applied at all; reconnecting uses exponential backoff with full jitter (so a thousand proxies
//! do not return in step when a replica restarts) and moves to the next replica after every
//! failure; on reconnect the client says what it holds (delta: every resource's version; SotW:
//! each type's version), so the server sends only what changed meanwhile.
mod cache;
mod discovery;
mod resources;
mod session;

pub use discovery::{Discovery, Resolution};
pub use resources::{Held, Resources, TypeResources};

use crate::node::NodeInfo;
use crate::server::registry::Mode;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Uri;

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// Control-plane replicas; any one of them will do.
    pub endpoints: Vec<Uri>,
    pub node: NodeInfo,
    pub mode: Mode,
    /// Sent as `authorization: Bearer <token>` (the join token).
    pub token: Option<String>,
    pub backoff: Backoff,
    /// The types to subscribe to (default: every `trellis.v1` type).
    pub type_urls: Vec<String>,
    /// Bounds the TCP connect and the opening of the stream (default 5 s).
    pub connect_timeout: Duration,
    /// HTTP/2 PINGs that find a control plane gone silent (default every 15 s, 10 s to answer).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Largest message accepted or sent (default 16 MiB).
    pub max_message_bytes: usize,
    /// On-demand discovery (delta only): name Services as they are called instead of
    /// subscribing to every Service this proxy may call. `None` (default) subscribes to all.
    pub discovery: Option<Discovery>,
}

impl ClientConfig {
    /// Delta mode, every Trellis type, default timings.
    pub fn new(endpoints: Vec<Uri>, node: NodeInfo) -> Self {
        ClientConfig {
            endpoints,
            node,
            mode: Mode::Delta,
            token: None,
            backoff: Backoff::default(),
            type_urls: crate::TYPE_URLS.iter().map(|t| t.to_string()).collect(),
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
            discovery: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("node", &self.node)
            .field("mode", &self.mode)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("backoff", &self.backoff)
            .field("type_urls", &self.type_urls)
            .finish_non_exhaustive()
    }
}

/// Exponential backoff with full jitter: the n-th consecutive failure waits a uniformly random
/// time in `0..=min(max, base * 2^n)`. After a session that received config, n starts again at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            // Short enough that every proxy is back in sync within a few seconds of the control
            // plane's return; with full jitter 1000 proxies still arrive ~200 a second.
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    pub fn delay(&self, failures: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << failures.min(20))
            .min(self.max);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// What the proxy is asked to apply: the complete resource set after the change, and the change.
#[derive(Debug, Clone)]
pub struct Update {
    /// Every resource the proxy should hold (shared with the client's cache: no copy).
    pub resources: Resources,
    /// Type URL → version, as they will be once this update is accepted.
    pub versions: BTreeMap<String, String>,
    /// What changed, per type (several types on the first update).
    pub changes: Vec<TypeChange>,
    /// The control-plane replica it came from.
    pub endpoint: String,
}

/// The resources of one type that an update adds or changes, and removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeChange {
    pub type_url: String,
    pub version: String,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
}

/// What the client knows, for the proxy's `/config`.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    pub mode: Mode,
    /// The replica the stream is open to; `None` while disconnected.
    pub endpoint: Option<String>,
    pub connected_since_unix_ms: Option<u64>,
    /// A first complete config was applied (it stays true while disconnected).
    pub ready: bool,
    /// Type URL → version of the config in force.
    pub versions: BTreeMap<String, String>,
    pub resources: usize,
    pub updates_applied: u64,
    pub last_applied_unix_ms: Option<u64>,
    /// Streams opened so far (1 + reconnects).
    pub connects: u64,
    /// The last connection failure or rejected config.
    pub last_error: Option<String>,
    pub last_nack: Option<ClientNack>,
}

impl ClientStatus {
    /// A client that has not connected yet.
    fn new(mode: Mode) -> Self {
        ClientStatus {
            mode,
            endpoint: None,
            connected_since_unix_ms: None,
            ready: false,
            versions: BTreeMap::new(),
            resources: 0,
            updates_applied: 0,
            last_applied_unix_ms: None,
            connects: 0,
            last_error: None,
            last_nack: None,
        }
    }
}

/// A config this proxy refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientNack {
    pub type_url: String,
    pub error: String,
    pub at_unix_ms: u64,
}

/// Why a client could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no control-plane endpoint given")]
    NoEndpoints,
    #[error("no resource type to subscribe to")]
    NoTypes,
    #[error(
        "at most {} resource types per stream",
        crate::server::MAX_TYPES_PER_STREAM
    )]
    TooManyTypes,
    #[error("the token cannot be sent as a gRPC header (it must be visible ASCII)")]
    InvalidToken,
    #[error("the xDS client stopped")]
    Stopped,
    #[error("on-demand discovery needs the delta protocol (named subscriptions)")]
    OnDemandNeedsDelta,
}

/// A running client; dropping it stops the stream (the proxy keeps its config).
#[derive(Debug)]
pub struct AdsClient {
    status: watch::Receiver<ClientStatus>,
    task: JoinHandle<()>,
}

impl AdsClient {
    /// Starts the client on the current tokio runtime. `apply` gets each complete config that
    /// changed; `Ok` means it is in force (ACK), `Err(text)` means it was refused (NACK with that
    /// text; the previous config stays).
    pub fn spawn<F>(mut config: ClientConfig, apply: F) -> Result<AdsClient, ClientError>
    where
        F: Fn(Update) -> Result<(), String> + Send + Sync + 'static,
    {
        if let Some(discovery) = &config.discovery {
            if config.mode != Mode::Delta {
                return Err(ClientError::OnDemandNeedsDelta);
            }
            // The node's own service is always named: its inbound side needs its ports, and a
            // first Service request naming nothing would be a wildcard.
            config.node.set_on_demand();
            discovery.pin(&format!(
                "{}/{}",
                config.node.namespace, config.node.service
            ));
        }
        if config.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        if config.type_urls.is_empty() {
            return Err(ClientError::NoTypes);
        }
        if config.type_urls.len() > crate::server::MAX_TYPES_PER_STREAM {
            return Err(ClientError::TooManyTypes);
        }
        if let Some(token) = &config.token {
            let header: Result<tonic::metadata::MetadataValue<_>, _> =
                format!("Bearer {token}").parse();
            header.map_err(|_| ClientError::InvalidToken)?;
        }
        let status = ClientStatus::new(config.mode);
        let (status_tx, status_rx) = watch::channel(status);
        let applier = cache::Applier::new(config.type_urls.clone(), Arc::new(apply), status_tx);
        let task = tokio::spawn(run(config, applier));
        Ok(AdsClient {
            status: status_rx,
            task,
        })
    }

    pub fn status(&self) -> ClientStatus {
        self.status.borrow().clone()
    }

    /// Changes of [`ClientStatus`], to wait on.
    pub fn watch_status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Resolves once a first complete config is in force (wrap it in a timeout).
    pub async fn ready(&self) -> Result<(), ClientError> {
        let mut status = self.status.clone();
        status
            .wait_for(|s| s.ready)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Stopped)
    }

    /// Stops the client now.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for AdsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The client's cache without a stream: responses are handed in as a session hands them in
/// (decoded, judged, applied through `apply`), so what a proxy does with each update can be
/// measured and tested without a control plane.
pub struct Feed {
    applier: cache::Applier,
    endpoint: String,
}

impl Feed {
    pub fn new<F>(type_urls: Vec<String>, apply: F) -> Feed
    where
        F: Fn(Update) -> Result<(), String> + Send + Sync + 'static,
    {
        let status = ClientStatus::new(Mode::Delta);
        let (status, _) = watch::channel(status);
        Feed {
            applier: cache::Applier::new(type_urls, Arc::new(apply), status),
            endpoint: "feed".into(),
        }
    }

    /// A delta response; `Err` is the NACK's text.
    pub fn delta(
        &mut self,
        response: crate::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
    ) -> Result<(), String> {
        let (t, nonce, candidate) = session::delta_candidate(response, &self.applier);
        self.judge(t, nonce, candidate)
    }

    /// A state-of-the-world response; `Err` is the NACK's text.
    pub fn sotw(
        &mut self,
        response: crate::pb::envoy::service::discovery::v3::DiscoveryResponse,
    ) -> Result<(), String> {
        let (t, nonce, candidate) = session::sotw_candidate(response, &self.applier);
        self.judge(t, nonce, candidate)
    }

    fn judge(
        &mut self,
        t: String,
        nonce: String,
        candidate: Result<cache::Candidate, String>,
    ) -> Result<(), String> {
        let verdicts = self.applier.receive(t, nonce, candidate, &self.endpoint);
        for v in verdicts {
            if let cache::Verdict::Nack { error, .. } = v {
                return Err(error);
            }
        }
        Ok(())
    }
}

/// Connect, serve a session, back off, move to the next replica; forever.
async fn run(config: ClientConfig, mut applier: cache::Applier) {
    let n = config.endpoints.len();
    let mut next = rand::rng().random_range(0..n);
    let mut failures: u32 = 0;
    loop {
        let uri = &config.endpoints[next % n];
        let end = session::run(uri, &config, &mut applier).await;
        failures = if end.received {
            0
        } else {
            failures.saturating_add(1)
        };
        let delay = config.backoff.delay(failures);
        if applier.status().borrow().ready {
            tracing::warn!(error = %end.error, retry_in = ?delay, "control plane stream ended; keeping the last good config");
        } else {
            tracing::warn!(error = %end.error, retry_in = ?delay, "control plane stream ended before any config arrived; the proxy forwards nothing inbound until one does");
        }
        applier.status().send_modify(|s| {
            s.endpoint = None;
            s.connected_since_unix_ms = None;
            s.last_error = Some(end.error.clone());
        });
        next = (next + 1) % n;
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for failures in 0..40 {
            let cap = Duration::from_millis(100 * (1u64 << failures.min(20))).min(b.max);
            for _ in 0..20 {
                assert!(b.delay(failures) <= cap);
            }
        }
    }
}
