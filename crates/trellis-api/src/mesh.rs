//! `MeshConfig` (mesh-wide settings: trust domain, mTLS mode, certificates, telemetry) and
//! `Deployment` (what `trellis up` starts on one machine: a service's local instances).
use crate::access_log::AccessLogConfig;
use crate::duration::Duration;
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MeshConfigSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub mtls: MtlsConfig,
    #[serde(default = "default_cert_lifetime")]
    pub certificate_lifetime: Duration,
    #[serde(default)]
    pub telemetry: Telemetry,
    /// IPv4 CIDR the control plane allocates service VIPs from (`ServiceAddress`). Changing it
    /// moves every VIP outside the new range into it.
    #[serde(default = "default_service_address_range")]
    pub service_address_range: String,
    /// DNS domain of mesh names: the sidecar answers `svc.ns.svc.<dnsDomain>`.
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,
    /// What a capturing sidecar does with a connection to a destination the mesh does not know.
    #[serde(default, skip_serializing_if = "OutboundTrafficPolicy::is_default")]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// What a sidecar does with captured traffic to a destination that is neither a service's VIP
/// nor a known workload (Istio's `outboundTrafficPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundMode,
}

impl OutboundTrafficPolicy {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OutboundMode {
    /// Passed through to where the app meant it to go, unchanged.
    #[default]
    AllowAny,
    /// Refused: HTTP is answered `502` with `trellis-error: egress-denied`, anything else is
    /// closed; both are counted.
    RegistryOnly,
}

impl Default for MeshConfigSpec {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            mtls: MtlsConfig::default(),
            certificate_lifetime: default_cert_lifetime(),
            telemetry: Telemetry::default(),
            service_address_range: default_service_address_range(),
            dns_domain: default_dns_domain(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
        }
    }
}

impl MeshConfigSpec {
    /// The VIP range; the default one if the text is invalid (validation refuses that).
    pub fn service_address_cidr(&self) -> crate::address::Ipv4Cidr {
        self.service_address_range
            .parse()
            .unwrap_or(crate::address::DEFAULT_RANGE)
    }
}

fn default_service_address_range() -> String {
    crate::address::DEFAULT_SERVICE_ADDRESS_RANGE.into()
}

fn default_dns_domain() -> String {
    "cluster.local".into()
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn default_cert_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtlsConfig {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MtlsMode {
    Strict,
    #[default]
    Permissive,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Telemetry {
    /// Off unless asked for (see [`crate::access_log`]).
    #[serde(default, deserialize_with = "crate::access_log::deserialize")]
    pub access_log: AccessLogConfig,
    #[serde(default = "yes")]
    pub prometheus: bool,
    /// Share of requests that start a trace, 0.0..=100.0 (a caller's own decision is honoured).
    #[serde(default)]
    pub tracing_sample_percent: f64,
    /// Where sidecars send spans: an OTLP/gRPC collector, `http://host:4317`. No tracing
    /// without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            access_log: AccessLogConfig::default(),
            prometheus: true,
            tracing_sample_percent: 0.0,
            otlp_endpoint: None,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Deployment {
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
}

/// Local instances of a service for `trellis up`: each replica is a process with its sidecar, and
/// gets a Workload carrying these labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    pub service: String,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The built-in demo application; the only kind of app `trellis up` starts today.
    #[serde(default)]
    pub demo_app: DemoApp,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DemoApp {
    /// Reported as `version` in answers; defaults to the `version` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Duration>,
    /// Share of requests answered 500, 0.0..=1.0.
    #[serde(default)]
    pub error_rate: f64,
}
