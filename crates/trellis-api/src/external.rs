//! `ExternalService`: a destination outside the mesh that sidecars may call, by host name.
//!
//! An app in explicit mode calls its sidecar's outbound port with `Host: api.example.com`; when
//! an ExternalService lists that host (and the port, by default its first), the sidecar
//! forwards the request there itself:
//! - **resolution** `Static` dials the `addresses` given; `DNS` resolves the host name when it
//!   connects (the system resolver, no cache of its own);
//! - **tls** `{mode: Originate}` makes the sidecar open TLS to the destination (SNI and
//!   certificate name: `sni`, else the host), trusting the roots in `caFile` or, without one,
//!   the system's; the app speaks plain HTTP to its sidecar.
//!
//! Choices: hosts are exact DNS names (no wildcards); an ExternalService is mesh-wide — every
//! proxy is sent every ExternalService, whatever its namespace, since a host name names the
//! same destination for all (the namespace only scopes the resource's own name). When two
//! declare the same host, the first by namespace and name wins. Route rules, retries and
//! timeouts do not apply to external calls. Under the MeshConfig's `outboundTrafficPolicy:
//! {mode: RegistryOnly}`, a `Host` that is neither a mesh service nor an ExternalService host
//! is refused (`502`, `trellis-error: egress-denied`); under `AllowAny` it stays `404 no-route`,
//! since the explicit port has no destination to pass it through to.
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalService {
    pub metadata: ObjectMeta,
    pub spec: ExternalServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalServiceSpec {
    /// Exact DNS names (`api.example.com`), matched against the request's `Host`.
    pub hosts: Vec<String>,
    /// The destination's ports; a `Host` without a port means the first.
    pub ports: Vec<ExternalPort>,
    #[serde(default)]
    pub resolution: Resolution,
    /// For `Static` resolution: where to connect (each is tried in order until one answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalPort {
    pub port: u16,
    #[serde(default)]
    pub protocol: ExternalProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalProtocol {
    #[default]
    Http,
    Http2,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Resolution {
    /// The host name is resolved when the sidecar connects.
    #[default]
    #[serde(rename = "DNS")]
    Dns,
    /// Connect to `addresses`.
    Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalTls {
    pub mode: ExternalTlsMode,
    /// PEM roots to verify the destination's certificate with; absent: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The name sent as SNI and verified in the certificate; absent: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExternalTlsMode {
    /// The sidecar opens TLS to the destination.
    Originate,
}
