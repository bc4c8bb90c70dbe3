//! Status of Gateway API kinds, shaped as the spec's (`status.parents[].conditions[]`), computed
//! from the current resources whenever a route is read (see [`route_status`]); never stored.
//!
//! Conditions per parent:
//! - `Accepted`: `True`/`Accepted`; `False` with `NoMatchingParent` (no such Service or
//!   Gateway, or no listener of that name/port), `NotAllowedByListeners` (the listener's
//!   `allowedRoutes` refuse the route), `UnsupportedValue` (a parent Trellis cannot serve: a
//!   Service in another namespace, i.e. a consumer route; a TLSRoute on a Service),
//!   [`OVERRIDDEN`] (a Trellis `Route` steers the service: it wins) or [`CONFLICTED`] (an
//!   HTTPRoute and a GRPCRoute both attach to the service; the one first by
//!   `{namespace}/{name}` is accepted, as the GRPCRoute spec says for such conflicts).
//! - `ResolvedRefs`: `True`/`ResolvedRefs`; `False` with `InvalidKind` (a backendRef that is
//!   not a core `Service`), `RefNotPermitted` (a backend in another namespace: ReferenceGrant
//!   is not implemented) or `BackendNotFound` (no such Service). Requests a rule would send
//!   only to invalid backends get `500`.
pub use super::compile::overriding_route;
use super::compile::{backend_problem, parents_of, Parent, RouteRef};
use super::gateway::{AllowedRoutes, Gateway};
use super::{ParentReference, CONTROLLER_NAME};
use crate::parse::Resource;
use serde::{Deserialize, Serialize};

/// `Accepted=False` reason when a Trellis `Route` steers the same service.
pub const OVERRIDDEN: &str = "OverriddenByTrellisRoute";
/// `Accepted=False` reason when an HTTPRoute and a GRPCRoute attach to the same service.
pub const CONFLICTED: &str = "ConflictedWithOtherRouteKind";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(kind: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            kind: kind.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: u32,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The status of `route` against `resources` (the whole current config).
pub fn route_status(route: RouteRef<'_>, resources: &[Resource]) -> RouteStatus {
    let mut parents = Vec::new();
    for parent_ref in route.parent_refs() {
        let accepted = accepted(route, parent_ref, resources);
        let resolved = resolved_refs(route, resources);
        parents.push(RouteParentStatus {
            parent_ref: parent_ref.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions: vec![accepted, resolved],
        });
    }
    RouteStatus { parents }
}

fn accepted(route: RouteRef<'_>, p: &ParentReference, resources: &[Resource]) -> Condition {
    let ns = route.metadata().namespace.as_str();
    let pns = p.namespace_or(ns);
    let no = |reason: &str, message: String| Condition::new("Accepted", false, reason, message);
    if p.is_service() {
        if matches!(route, RouteRef::Tls(_)) {
            return no(
                "UnsupportedValue",
                "a TLSRoute attaches to a Gateway listener; a Service parent is not supported"
                    .into(),
            );
        }
        if pns != ns {
            return no(
                "UnsupportedValue",
                format!("consumer routes (a Service parent in namespace {pns:?}, not the route's {ns:?}) are not supported"),
            );
        }
        let exists = resources.iter().any(|r| {
            matches!(r, Resource::Service(s) if s.metadata.namespace == pns && s.metadata.name == p.name)
        });
        if !exists {
            return no(
                "NoMatchingParent",
                format!("no Service {:?} in namespace {pns:?}", p.name),
            );
        }
        if let Some(port) = p.port {
            let has_port = resources.iter().any(|r| matches!(r, Resource::Service(s) if s.metadata.namespace == pns && s.metadata.name == p.name && s.spec.ports.iter().any(|sp| sp.port == port)));
            if !has_port {
                return no(
                    "NoMatchingParent",
                    format!("Service {:?} has no port {port}", p.name),
                );
            }
        }
        if let Some(route_name) = overriding_route(resources, pns, &p.name) {
            return no(
                OVERRIDDEN,
                format!("Trellis Route {route_name:?} steers service {:?}; it wins over Gateway API routes, so this route is not applied", p.name),
            );
        }
        if let Some(winner) = kind_conflict(route, resources, pns, &p.name) {
            return no(
                CONFLICTED,
                format!("{winner} also attaches to service {:?} and comes first by namespace/name; an HTTPRoute and a GRPCRoute cannot share a parent", p.name),
            );
        }
        return Condition::new("Accepted", true, "Accepted", "attached to the service");
    }
    if p.is_gateway() {
        let gateway = resources.iter().find_map(|r| match r {
            Resource::Gateway(g) if g.metadata.namespace == pns && g.metadata.name == p.name => {
                Some(g)
            }
            _ => None,
        });
        let Some(gateway) = gateway else {
            return no(
                "NoMatchingParent",
                format!("no Gateway {:?} in namespace {pns:?}", p.name),
            );
        };
        return gateway_accepts(route, p, gateway);
    }
    no(
        "InvalidKind",
        format!(
            "parent {}/{} is neither a core Service nor a Gateway",
            p.group(),
            p.kind()
        ),
    )
}

fn gateway_accepts(route: RouteRef<'_>, p: &ParentReference, gateway: &Gateway) -> Condition {
    let ns = route.metadata().namespace.as_str();
    let listeners: Vec<_> = gateway
        .spec
        .listeners
        .iter()
        .filter(|l| p.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| p.port.is_none_or(|port| port == l.port))
        .collect();
    if listeners.is_empty() {
        return Condition::new(
            "Accepted",
            false,
            "NoMatchingParent",
            "no listener of the Gateway matches sectionName/port",
        );
    }
    let allowed = listeners.iter().any(|l| {
        AllowedRoutes::allows(
            l.allowed_routes.as_ref(),
            l.protocol,
            route.kind(),
            ns,
            &gateway.metadata.namespace,
        )
    });
    if !allowed {
        return Condition::new(
            "Accepted",
            false,
            "NotAllowedByListeners",
            "no matching listener allows this route's kind and namespace",
        );
    }
    Condition::new("Accepted", true, "Accepted", "attached to the Gateway")
}

fn resolved_refs(route: RouteRef<'_>, resources: &[Resource]) -> Condition {
    let ns = route.metadata().namespace.as_str();
    for b in route.backend_refs() {
        if let Some((reason, message)) = backend_problem(b, ns, |bns, name| {
            resources.iter().any(|r| matches!(r, Resource::Service(s) if s.metadata.namespace == bns && s.metadata.name == name))
        }) {
            return Condition::new("ResolvedRefs", false, reason, message);
        }
    }
    Condition::new(
        "ResolvedRefs",
        true,
        "ResolvedRefs",
        "every backendRef resolves",
    )
}

/// When an HTTPRoute and a GRPCRoute both attach to `ns/service`, the kind of the route first
/// by `{namespace}/{name}` wins; for a route of the other kind, that winner's `Kind ns/name`.
fn kind_conflict(
    route: RouteRef<'_>,
    resources: &[Resource],
    ns: &str,
    service: &str,
) -> Option<String> {
    let parent = Parent::Service {
        namespace: ns.to_string(),
        name: service.to_string(),
    };
    let first = resources
        .iter()
        .filter_map(RouteRef::of)
        .filter(|r| !matches!(r, RouteRef::Tls(_)))
        .filter(|r| parents_of(*r).contains(&parent))
        .min_by(|a, b| a.sort_key().cmp(&b.sort_key()))?;
    if first.kind() == route.kind() {
        return None;
    }
    Some(format!(
        "{} {}/{}",
        first.kind(),
        first.metadata().namespace,
        first.metadata().name
    ))
}

/// Whether `route` applies to `ns/service` (a Service parent): accepted there.
pub fn applies_to_service(
    route: RouteRef<'_>,
    resources: &[Resource],
    ns: &str,
    service: &str,
) -> bool {
    route.parent_refs().iter().any(|p| {
        p.is_service()
            && p.namespace_or(&route.metadata().namespace) == ns
            && p.name == service
            && accepted(route, p, resources).status == "True"
    })
}

/// The status of a Gateway: `Accepted` and `Programmed` (Trellis accepts every Gateway that
/// validates) and, per listener, the number of routes attached.
pub fn gateway_status(gateway: &Gateway, resources: &[Resource]) -> GatewayStatus {
    let mut listeners = Vec::new();
    for l in &gateway.spec.listeners {
        let attached = resources
            .iter()
            .filter_map(RouteRef::of)
            .filter(|r| {
                r.parent_refs().iter().any(|p| {
                    p.is_gateway()
                        && p.namespace_or(&r.metadata().namespace) == gateway.metadata.namespace
                        && p.name == gateway.metadata.name
                        && p.section_name.as_ref().is_none_or(|s| *s == l.name)
                        && p.port.is_none_or(|port| port == l.port)
                        && AllowedRoutes::allows(
                            l.allowed_routes.as_ref(),
                            l.protocol,
                            r.kind(),
                            &r.metadata().namespace,
                            &gateway.metadata.namespace,
                        )
                })
            })
            .count();
        listeners.push(ListenerStatus {
            name: l.name.clone(),
            attached_routes: u32::try_from(attached).unwrap_or(u32::MAX),
            conditions: vec![
                Condition::new("Accepted", true, "Accepted", "listener accepted"),
                Condition::new("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
            ],
        });
    }
    GatewayStatus {
        conditions: vec![Condition::new(
            "Accepted",
            true,
            "Accepted",
            "accepted by Trellis",
        )],
        listeners,
    }
}

/// `resource` with its status filled in from `resources` (Gateway API kinds only; others are
/// returned as they are).
pub fn with_status(resource: &Resource, resources: &[Resource]) -> Resource {
    let route = RouteRef::of(resource).map(|r| route_status(r, resources));
    let gateway = match resource {
        Resource::Gateway(g) => Some(gateway_status(g, resources)),
        _ => None,
    };
    let mut out = resource.clone();
    match &mut out {
        Resource::HTTPRoute(r) => r.status = route,
        Resource::GRPCRoute(r) => r.status = route,
        Resource::TLSRoute(r) => r.status = route,
        Resource::Gateway(g) => g.status = gateway,
        _ => {}
    }
    out
}
