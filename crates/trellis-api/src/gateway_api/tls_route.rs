//! `TLSRoute` (`gateway.networking.k8s.io/v1alpha2`): TLS connections routed by SNI from a
//! Gateway listener of protocol `TLS`, passed through (mode `Passthrough`) or terminated at the
//! gateway with the plaintext tunnelled on (mode `Terminate`). Parsed,
//! validated, stored and distributed to every proxy; the ingress gateway serves it. A Service
//! parent is refused in status (`UnsupportedValue`): Trellis sidecars route TLS by service.
use super::status::RouteStatus;
use super::{BackendRef, ParentReference, RouteKind};
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TLSRoute {
    pub metadata: ObjectMeta,
    pub spec: TLSRouteSpec,
    /// Computed by the control plane when the route is read; dropped on parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

impl RouteKind for TLSRoute {
    const KIND: &'static str = "TLSRoute";
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn parent_refs(&self) -> &[ParentReference] {
        &self.spec.parent_refs
    }
    fn hostnames(&self) -> &[String] {
        &self.spec.hostnames
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TLSRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// SNI host names (`*.example.com` allowed as the first label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub rules: Vec<TLSRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TLSRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}
