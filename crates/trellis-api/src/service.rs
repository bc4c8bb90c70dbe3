//! `Service` (a name callers use, its ports and protocols, and which workloads serve it) and
//! `Workload` (one instance of a service: where it listens, its labels, zone and health).
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

impl Service {
    /// Whether `w` is one of this service's workloads: same namespace, and its labels contain the
    /// selector, or (with no selector) its `spec.service` names this service. The one rule the
    /// control plane's views, the proxy's snapshot and its DNS directory share.
    pub fn selects(&self, w: &Workload) -> bool {
        if self.metadata.namespace != w.metadata.namespace {
            return false;
        }
        if self.spec.selector.is_empty() {
            w.spec.service.as_deref() == Some(self.metadata.name.as_str())
        } else {
            self.spec
                .selector
                .iter()
                .all(|(k, v)| w.metadata.labels.get(k) == Some(v))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// At least one port. Callers name the port in `Host: svc:PORT`; the first port is the default.
    pub ports: Vec<ServicePort>,
    /// Workloads whose labels contain all of these belong to the service. When empty, workloads
    /// whose `spec.service` names this service belong to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Overrides the mesh-wide mTLS mode for inbound traffic to this port (Istio's port-level
    /// PeerAuthentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<crate::mesh::MtlsMode>,
    /// HTTP/1.1 upgrade protocols (`Upgrade` tokens) requests to this port may switch to;
    /// absent means `[websocket]`. `h2c` is never permitted: an upgrade to it is stripped, as
    /// Envoy does, because it would turn the connection into a pipe for requests nobody
    /// authorized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrades: Option<Vec<String>>,
}

/// The upgrade protocols a port permits when it names none.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];

impl ServicePort {
    /// Whether a request to this port may upgrade to `token` (case-insensitive).
    pub fn permits_upgrade(&self, token: &str) -> bool {
        permits_upgrade(self.upgrades.as_deref(), token)
    }
}

/// Whether `token` is among `permitted` (the default set when `None`); `h2c` never is.
pub fn permits_upgrade(permitted: Option<&[String]>, token: &str) -> bool {
    if token.eq_ignore_ascii_case("h2c") {
        return false;
    }
    match permitted {
        Some(list) => list.iter().any(|p| p.eq_ignore_ascii_case(token)),
        None => DEFAULT_UPGRADES
            .iter()
            .any(|p| p.eq_ignore_ascii_case(token)),
    }
}

/// What travels on a port. `Detect` sniffs the first bytes (bounded, with a timeout); the others
/// skip detection, which server-first protocols (databases, SMTP) need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Detect,
    Http,
    Http2,
    Grpc,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub metadata: ObjectMeta,
    pub spec: WorkloadSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The service this instance serves, when the service has no selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// IP address callers connect to (IPv4 or IPv6 literal).
    pub address: String,
    /// The port callers connect to: the sidecar's inbound port when the instance has one.
    pub port: u16,
    /// The port the application itself listens on, behind its sidecar (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
    /// Locality, for zone-aware balancing and failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Expected SPIFFE identity of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default)]
    pub health: WorkloadHealth,
    /// Relative weight of this instance among its peers (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WorkloadHealth {
    #[default]
    Healthy,
    Unhealthy,
}
