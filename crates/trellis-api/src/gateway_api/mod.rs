//! Gateway API kinds (`gateway.networking.k8s.io`): `HTTPRoute`, `GRPCRoute` and `Gateway`
//! (`/v1`) and `TLSRoute` (`/v1alpha2`), with the field names and shapes of Gateway API v1.2, so
//! a manifest written for any Gateway API implementation reads here unchanged.
//!
//! - **Parents**: a parentRef with `group: ""` and `kind: Service` attaches a route to a mesh
//!   service (the GAMMA profile): every sidecar steers calls to that service by the route. A
//!   parentRef of `kind: Gateway` (the default) attaches it to an ingress [`gateway::Gateway`].
//! - **Compilation** ([`compile`]): all HTTPRoutes and GRPCRoutes attached to one parent become
//!   one ordered list of Trellis [`crate::route::RouteRule`]s, in the spec's precedence across
//!   every attached route; the proxy runs those exactly as it runs a Trellis `Route`'s rules.
//! - **Status** ([`status`]): `Accepted` and `ResolvedRefs` per parent, computed from the
//!   current store whenever a route is read, never stored.
//!
//! Choices: Trellis stores no creation timestamp, so where the spec breaks ties by "the oldest
//! route", Trellis breaks them by `{namespace}/{name}` (the spec's next criterion). A route's
//! `status`, when a manifest carries one, is dropped on parse: status is written by the
//! implementation, never by users. Unknown fields are errors, as for every Trellis kind.
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

pub mod compile;
pub mod gateway;
pub mod grpc_route;
pub mod http_route;
pub mod status;
pub mod tls_route;

#[cfg(test)]
mod tests;

pub use compile::{
    compile_for_gateway, compile_for_gateway_in, compile_for_service, compile_for_service_in,
    parents_of, service_backends, service_parents, tls_routes_for_gateway, CompiledRules,
    GatewayRoutes, Parent, RouteRef,
};
pub use gateway::Gateway;
pub use grpc_route::GRPCRoute;
pub use http_route::HTTPRoute;
pub use tls_route::TLSRoute;

/// The API group of every Gateway API kind.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// `apiVersion` of HTTPRoute, GRPCRoute and Gateway.
pub const API_VERSION_V1: &str = "gateway.networking.k8s.io/v1";
/// `apiVersion` of TLSRoute (still alpha in Gateway API v1.2).
pub const API_VERSION_V1ALPHA2: &str = "gateway.networking.k8s.io/v1alpha2";
/// The `controllerName` Trellis writes in route status.
pub const CONTROLLER_NAME: &str = "trellis.dev/mesh";

/// The `apiVersion` a Gateway API kind is served at, or `None` for a Trellis kind.
pub fn api_version_of(kind: &str) -> Option<&'static str> {
    match kind {
        "HTTPRoute" | "GRPCRoute" | "Gateway" => Some(API_VERSION_V1),
        "TLSRoute" => Some(API_VERSION_V1ALPHA2),
        _ => None,
    }
}

/// `ParentReference`: the Gateway (default) or the Service (GAMMA: `group: ""`,
/// `kind: Service`) a route attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentReference {
    /// Default `gateway.networking.k8s.io`; `""` (the core group) with `kind: Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Default: the route's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// A Gateway listener's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A Service port (mesh) or a listener port (Gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ParentReference {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(GROUP)
    }

    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Gateway")
    }

    /// A mesh parent: the core group's `Service`.
    pub fn is_service(&self) -> bool {
        self.group() == "" && self.kind() == "Service"
    }

    /// An ingress parent: `gateway.networking.k8s.io` `Gateway`.
    pub fn is_gateway(&self) -> bool {
        self.group() == GROUP && self.kind() == "Gateway"
    }

    /// The parent's namespace, given the route's.
    pub fn namespace_or<'a>(&'a self, route_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(route_namespace)
    }
}

/// `BackendObjectReference` (and `BackendRef`, with `weight`): a Service to send requests to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// Default `""` (core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Default `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    /// Default: the route's namespace. Another namespace needs a ReferenceGrant, which Trellis
    /// does not implement: such a backend is `RefNotPermitted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Required for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative weight, 0..=1000000 (default 1). Absent on a mirror's `backendRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Per-backend filters: accepted by the schema, refused by validation (not supported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<serde_yaml_ng::Value>,
}

impl BackendRef {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Service")
    }

    pub fn is_service(&self) -> bool {
        self.group() == "" && self.kind() == "Service"
    }

    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

/// Gateway API's largest backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// `HTTPHeader`: one name and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPHeader {
    pub name: String,
    pub value: String,
}

/// `HTTPHeaderFilter`: `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPHeaderFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HTTPHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HTTPHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `HTTPRequestMirrorFilter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HTTPRequestMirrorFilter {
    pub backend_ref: BackendRef,
    /// 0..=100; exclusive with `fraction`. Neither: every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

impl HTTPRequestMirrorFilter {
    /// The share of requests mirrored, 0.0..=100.0.
    pub fn percent(&self) -> f64 {
        match (&self.percent, &self.fraction) {
            (Some(p), _) => f64::from(*p),
            (None, Some(f)) if f.denominator() > 0 => {
                f64::from(f.numerator) * 100.0 / f64::from(f.denominator())
            }
            (None, Some(_)) => 0.0,
            (None, None) => 100.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fraction {
    pub numerator: u32,
    /// Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<u32>,
}

impl Fraction {
    pub fn denominator(&self) -> u32 {
        self.denominator.unwrap_or(100)
    }
}

/// `LocalObjectReference` (`extensionRef`): accepted by the schema, refused by validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalObjectReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// A header match (`HTTPHeaderMatch`, `GRPCHeaderMatch`): `Exact` (default) or
/// `RegularExpression`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StringMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// Fields every route kind has.
pub trait RouteKind {
    const KIND: &'static str;
    fn metadata(&self) -> &ObjectMeta;
    fn parent_refs(&self) -> &[ParentReference];
    fn hostnames(&self) -> &[String];
}
