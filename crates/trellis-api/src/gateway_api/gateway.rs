//! `Gateway` (`gateway.networking.k8s.io/v1`): an ingress point with listeners. Trellis parses,
//! validates, stores and distributes it to every proxy; the ingress gateway serves it and
//! compiles its routes with [`super::compile_for_gateway`].
use super::status::GatewayStatus;
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
    /// Computed by the control plane when the Gateway is read; dropped on parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<GatewayStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` (default) or `Hostname`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listener {
    /// Unique within the Gateway; what a route's `parentRefs[].sectionName` names.
    pub name: String,
    /// Requests (or SNI) for this host only; `*.example.com` allowed. None: any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: ListenerProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTLSConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerProtocol {
    HTTP,
    HTTPS,
    TLS,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayTLSConfig {
    /// Default `Terminate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TLSModeType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Implementation-specific options.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
}

impl GatewayTLSConfig {
    pub fn mode(&self) -> TLSModeType {
        self.mode.unwrap_or(TLSModeType::Terminate)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TLSModeType {
    Terminate,
    Passthrough,
}

/// `SecretObjectReference`: default group `""`, kind `Secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretObjectReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<FromNamespaces>,
    /// Namespace labels, for `Selector` (Trellis namespaces carry no labels: matches none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromNamespaces {
    All,
    Same,
    Selector,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub match_labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// Default `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

impl AllowedRoutes {
    /// Whether a route of `kind` in `route_ns` may attach to a listener of a Gateway in
    /// `gateway_ns` with these rules and `protocol`.
    pub fn allows(
        this: Option<&AllowedRoutes>,
        protocol: ListenerProtocol,
        kind: &str,
        route_ns: &str,
        gateway_ns: &str,
    ) -> bool {
        let kinds_ok = match this.map(|a| a.kinds.as_slice()).unwrap_or_default() {
            [] => match protocol {
                ListenerProtocol::HTTP | ListenerProtocol::HTTPS => {
                    kind == "HTTPRoute" || kind == "GRPCRoute"
                }
                ListenerProtocol::TLS => kind == "TLSRoute",
            },
            kinds => kinds.iter().any(|k| {
                k.kind == kind && k.group.as_deref().unwrap_or(super::GROUP) == super::GROUP
            }),
        };
        let from = this
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from)
            .unwrap_or(FromNamespaces::Same);
        let ns_ok = match from {
            FromNamespaces::All => true,
            FromNamespaces::Same => route_ns == gateway_ns,
            FromNamespaces::Selector => false,
        };
        kinds_ok && ns_ok
    }
}
