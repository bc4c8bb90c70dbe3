//! HTTPRoutes and GRPCRoutes attached to one parent → one ordered list of Trellis
//! [`RouteRule`]s, which the proxy compiles and runs like a Trellis `Route`'s rules.
//!
//! Precedence across **all** routes attached to the parent (the spec's order): every
//! (rule, match) pair becomes one rule with that single match, and the pairs are sorted by
//! 1. an `Exact` path match; then a `PathPrefix` match, the longest prefix first; then a
//!    `RegularExpression` path (implementation-specific in the spec; after prefixes here);
//! 2. a `method` match;
//! 3. the most header matches;
//! 4. the most query parameter matches;
//! 5. the route, by `{namespace}/{name}` (the spec says "oldest creation timestamp" first;
//!    Trellis stores none, so it falls through to the spec's next criterion, the name);
//! 6. the rule's, then the match's, order in the route.
//!
//! For GRPCRoutes the method match takes the place of the path (an exact service and method
//! is an `Exact` path `/{service}/{method}`, anything else a regular expression, more
//! characters of service and method first), then headers.
//!
//! What each Gateway API part becomes in a Trellis rule: `RequestHeaderModifier` →
//! `requestHeaders`; `ResponseHeaderModifier` → `responseHeaders`; `RequestMirror` → `mirror`
//! (percent or fraction → `percent`; only the first mirror filter of a rule is applied);
//! `RequestRedirect` → `redirect`; `URLRewrite` → `rewrite` (`ReplaceFullPath` → `fullPath`,
//! `ReplacePrefixMatch` → `path`); `timeouts.request` and `timeouts.backendRequest` → `timeout`
//! (the smaller: a request has one try); backendRefs → `backends`. A rule with no valid
//! backendRef (none, all invalid, or all weight 0) and no redirect answers `500`
//! (`directResponse`); with some valid and some invalid, the invalid ones' share of the weight
//! is answered `500` (`directResponse.weight`), as the spec asks.
use super::grpc_route::{GRPCRoute, GRPCRouteFilterType, GRPCRouteMatch, GRPCRouteRule};
use super::http_route::{
    HTTPPathModifier, HTTPPathModifierType, HTTPRoute, HTTPRouteFilterType, HTTPRouteMatch,
    HTTPRouteRule,
};
use super::tls_route::TLSRoute;
use super::{
    BackendRef, HTTPHeaderFilter, HTTPRequestMirrorFilter, HeaderMatch, ParentReference, RouteKind,
    StringMatchType,
};
use crate::meta::ObjectMeta;
use crate::parse::Resource;
use crate::route::{
    Backend, DirectResponse, HeaderModifier, Mirror, PathMatch, PathMatchType, Redirect, Rewrite,
    RouteMatch, RouteRule, ValueMatch, ValueMatchType,
};
use std::collections::BTreeMap;

/// Any Gateway API route, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum RouteRef<'a> {
    Http(&'a HTTPRoute),
    Grpc(&'a GRPCRoute),
    Tls(&'a TLSRoute),
}

impl<'a> RouteRef<'a> {
    /// The route a resource is, if it is one.
    pub fn of(r: &'a Resource) -> Option<Self> {
        match r {
            Resource::HTTPRoute(x) => Some(RouteRef::Http(x)),
            Resource::GRPCRoute(x) => Some(RouteRef::Grpc(x)),
            Resource::TLSRoute(x) => Some(RouteRef::Tls(x)),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RouteRef::Http(_) => HTTPRoute::KIND,
            RouteRef::Grpc(_) => GRPCRoute::KIND,
            RouteRef::Tls(_) => TLSRoute::KIND,
        }
    }

    pub fn metadata(&self) -> &'a ObjectMeta {
        match self {
            RouteRef::Http(x) => &x.metadata,
            RouteRef::Grpc(x) => &x.metadata,
            RouteRef::Tls(x) => &x.metadata,
        }
    }

    pub fn parent_refs(&self) -> &'a [ParentReference] {
        match self {
            RouteRef::Http(x) => &x.spec.parent_refs,
            RouteRef::Grpc(x) => &x.spec.parent_refs,
            RouteRef::Tls(x) => &x.spec.parent_refs,
        }
    }

    pub fn hostnames(&self) -> &'a [String] {
        match self {
            RouteRef::Http(x) => &x.spec.hostnames,
            RouteRef::Grpc(x) => &x.spec.hostnames,
            RouteRef::Tls(x) => &x.spec.hostnames,
        }
    }

    /// Every backendRef of every rule (mirrors included).
    pub fn backend_refs(&self) -> Vec<&'a BackendRef> {
        match self {
            RouteRef::Http(x) => x
                .spec
                .rules
                .iter()
                .flat_map(|r| {
                    r.backend_refs.iter().chain(
                        r.filters
                            .iter()
                            .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref)),
                    )
                })
                .collect(),
            RouteRef::Grpc(x) => x
                .spec
                .rules
                .iter()
                .flat_map(|r| {
                    r.backend_refs.iter().chain(
                        r.filters
                            .iter()
                            .filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref)),
                    )
                })
                .collect(),
            RouteRef::Tls(x) => x.spec.rules.iter().flat_map(|r| &r.backend_refs).collect(),
        }
    }

    /// `{namespace}/{name}`: the tie-breaker between routes.
    pub fn sort_key(&self) -> (String, String) {
        let m = self.metadata();
        (m.namespace.clone(), m.name.clone())
    }
}

/// A parent a route attaches to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Parent {
    /// A mesh service (GAMMA).
    Service { namespace: String, name: String },
    /// An ingress Gateway, optionally one listener of it.
    Gateway {
        namespace: String,
        name: String,
        section: Option<String>,
    },
}

/// The parents a route names (parentRefs of other kinds are left out).
pub fn parents_of(route: RouteRef<'_>) -> Vec<Parent> {
    let ns = route.metadata().namespace.as_str();
    route
        .parent_refs()
        .iter()
        .filter_map(|p| {
            let namespace = p.namespace_or(ns).to_string();
            if p.is_service() {
                Some(Parent::Service {
                    namespace,
                    name: p.name.clone(),
                })
            } else if p.is_gateway() {
                Some(Parent::Gateway {
                    namespace,
                    name: p.name.clone(),
                    section: p.section_name.clone(),
                })
            } else {
                None
            }
        })
        .collect()
}

/// The mesh services `(namespace, name)` an HTTPRoute or GRPCRoute names as parents in its
/// own namespace (what [`compile_for_service`] attaches it to), sorted; empty for other kinds.
pub fn service_parents(r: &Resource) -> Vec<(String, String)> {
    let route = match r {
        Resource::HTTPRoute(_) | Resource::GRPCRoute(_) => RouteRef::of(r),
        _ => None,
    };
    let Some(route) = route else {
        return Vec::new();
    };
    let ns = &route.metadata().namespace;
    let mut out: Vec<(String, String)> = parents_of(route)
        .into_iter()
        .filter_map(|p| match p {
            Parent::Service { namespace, name } if namespace == *ns => Some((namespace, name)),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The services `(namespace, name)` an HTTPRoute or GRPCRoute sends or mirrors to (core
/// Services in its own namespace; others are never used); empty for other kinds.
pub fn service_backends(r: &Resource) -> Vec<(String, String)> {
    let route = match r {
        Resource::HTTPRoute(_) | Resource::GRPCRoute(_) => RouteRef::of(r),
        _ => None,
    };
    let Some(route) = route else {
        return Vec::new();
    };
    let ns = &route.metadata().namespace;
    route
        .backend_refs()
        .into_iter()
        .filter(|b| b.is_service() && b.namespace.as_ref().is_none_or(|n| n == ns))
        .map(|b| (ns.clone(), b.name.clone()))
        .collect()
}

/// Why a backendRef is not usable: `(ResolvedRefs reason, message)`, or `None` when it is a
/// Service that exists (`service_exists(namespace, name)`).
pub fn backend_problem(
    b: &BackendRef,
    route_namespace: &str,
    service_exists: impl Fn(&str, &str) -> bool,
) -> Option<(&'static str, String)> {
    if !b.is_service() {
        return Some((
            "InvalidKind",
            format!(
                "backendRef {:?} is of group {:?} kind {:?}; only core Services are supported",
                b.name,
                b.group(),
                b.kind()
            ),
        ));
    }
    let ns = b.namespace.as_deref().unwrap_or(route_namespace);
    if ns != route_namespace {
        return Some((
            "RefNotPermitted",
            format!(
                "backendRef {:?} is in namespace {ns:?}; references across namespaces (ReferenceGrant) are not supported",
                b.name
            ),
        ));
    }
    if !service_exists(ns, &b.name) {
        return Some((
            "BackendNotFound",
            format!(
                "backendRef {:?}: no Service {:?} in namespace {ns:?}",
                b.name, b.name
            ),
        ));
    }
    None
}

/// The rules compiled for one parent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompiledRules {
    /// In precedence order: the first whose match fits wins.
    pub rules: Vec<RouteRule>,
    /// The namespace of each rule's route (its backends are Services there), as `rules`.
    /// Routes of several namespaces meet only on a Gateway listener that allows them.
    pub namespaces: Vec<String>,
    /// `Kind namespace/name` of every route whose rules are in `rules`.
    pub routes: Vec<String>,
    /// `HTTPRoute` or `GRPCRoute`: the kind applied (see the conflict rule in
    /// [`super::status`]); `None` when no route attaches.
    pub kind: Option<&'static str>,
}

impl CompiledRules {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Rules for a mesh service `namespace/service` from every HTTPRoute and GRPCRoute in
/// `routes` that names it as a parent (a parentRef with `group: ""`, `kind: Service`, in the
/// route's own namespace). TLSRoutes are ignored. When both kinds attach, only the kind of the
/// route first by `{namespace}/{name}` is applied. `service_exists(namespace, name)` tells
/// valid backends from missing ones.
///
/// The caller decides whether these rules apply at all: a Trellis `Route` for the same
/// service wins (see [`compile_for_service_in`], which does both).
pub fn compile_for_service<'a>(
    routes: impl IntoIterator<Item = RouteRef<'a>>,
    namespace: &str,
    service: &str,
    service_exists: impl Fn(&str, &str) -> bool,
) -> CompiledRules {
    let parent = Parent::Service {
        namespace: namespace.to_string(),
        name: service.to_string(),
    };
    let mut attached: Vec<RouteRef<'a>> = routes
        .into_iter()
        .filter(|r| !matches!(r, RouteRef::Tls(_)))
        .filter(|r| r.metadata().namespace == namespace)
        .filter(|r| parents_of(*r).contains(&parent))
        .collect();
    attached.sort_by_key(|r| r.sort_key());
    let Some(first) = attached.first() else {
        return CompiledRules::default();
    };
    let kind = first.kind();
    attached.retain(|r| r.kind() == kind);
    let mut compiled = compile_routes(&attached, &service_exists, Some(kind));
    // A parentRef's `port` scopes the route to that port of the service (every parentRef of
    // the route to this service must name one; else the route applies to every port).
    for rule in &mut compiled.rules {
        let Some(route) = attached.iter().find(|r| {
            rule.name
                .as_deref()
                .and_then(|n| n.rsplit_once('/'))
                .is_some_and(|(route, _)| route == r.metadata().name)
        }) else {
            continue;
        };
        rule.ports = service_ports(*route, namespace, service);
    }
    compiled
}

/// The ports `route`'s parentRefs to `namespace/service` name: empty (every port) when one of
/// them names none.
fn service_ports(route: RouteRef<'_>, namespace: &str, service: &str) -> Vec<u16> {
    let ns = route.metadata().namespace.as_str();
    let refs: Vec<&ParentReference> = route
        .parent_refs()
        .iter()
        .filter(|p| p.is_service() && p.namespace_or(ns) == namespace && p.name == service)
        .collect();
    if refs.iter().any(|p| p.port.is_none()) {
        return Vec::new();
    }
    let mut ports: Vec<u16> = refs.iter().filter_map(|p| p.port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// [`compile_for_service`] over a whole resource list, with the Trellis-Route precedence: when
/// a Trellis `Route` steers `namespace/service`, nothing (the Route wins).
pub fn compile_for_service_in(
    resources: &[Resource],
    namespace: &str,
    service: &str,
) -> CompiledRules {
    if overriding_route(resources, namespace, service).is_some() {
        return CompiledRules::default();
    }
    compile_for_service(
        resources.iter().filter_map(RouteRef::of),
        namespace,
        service,
        |ns, name| {
            resources.iter().any(|r| {
                matches!(r, Resource::Service(s) if s.metadata.namespace == ns && s.metadata.name == name)
            })
        },
    )
}

/// The first Trellis Route (by name) steering `ns/service`, if any.
pub fn overriding_route<'a>(resources: &'a [Resource], ns: &str, service: &str) -> Option<&'a str> {
    resources
        .iter()
        .filter_map(|r| match r {
            Resource::Route(rt) if rt.metadata.namespace == ns && rt.spec.service == service => {
                Some(rt.metadata.name.as_str())
            }
            _ => None,
        })
        .min()
}

/// Rules per host name for one listener of a Gateway.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GatewayRoutes {
    /// Host name (exact, or `*.example.com`, or `*` for any host) → the rules for requests to
    /// it, in precedence order. A request's host is looked up exact first, then by its
    /// wildcard, then `*`.
    pub by_host: BTreeMap<String, CompiledRules>,
}

/// Rules for listener `listener` of Gateway `gateway_namespace/gateway_name`, from every
/// HTTPRoute and GRPCRoute in `routes` attached to it (parentRef of kind `Gateway`, naming the
/// listener by `sectionName` or naming none, with `port` unset or the listener's) and allowed
/// by the listener's `allowedRoutes`. Host names are the intersection of the listener's
/// `hostname` and each route's `hostnames`. HTTPRoutes and GRPCRoutes may share a listener
/// here; they share the precedence order. Returns an empty result when the Gateway or the
/// listener is not in `gateways`.
pub fn compile_for_gateway<'a>(
    routes: impl IntoIterator<Item = RouteRef<'a>>,
    gateway: &super::Gateway,
    listener: &str,
    service_exists: impl Fn(&str, &str) -> bool,
) -> GatewayRoutes {
    let Some(l) = gateway.spec.listeners.iter().find(|l| l.name == listener) else {
        return GatewayRoutes::default();
    };
    let gns = gateway.metadata.namespace.as_str();
    let mut by_host: BTreeMap<String, Vec<RouteRef<'a>>> = BTreeMap::new();
    for r in routes {
        if matches!(r, RouteRef::Tls(_)) {
            continue;
        }
        let rns = r.metadata().namespace.as_str();
        let attached = r.parent_refs().iter().any(|p| {
            p.is_gateway()
                && p.namespace_or(rns) == gns
                && p.name == gateway.metadata.name
                && p.section_name.as_ref().is_none_or(|s| *s == l.name)
                && p.port.is_none_or(|port| port == l.port)
        });
        if !attached
            || !super::gateway::AllowedRoutes::allows(
                l.allowed_routes.as_ref(),
                l.protocol,
                r.kind(),
                rns,
                gns,
            )
        {
            continue;
        }
        for host in hosts(l.hostname.as_deref(), r.hostnames()) {
            by_host.entry(host).or_default().push(r);
        }
    }
    GatewayRoutes {
        by_host: by_host
            .into_iter()
            .map(|(host, mut rs)| {
                rs.sort_by_key(|r| r.sort_key());
                (host, compile_routes(&rs, &service_exists, None))
            })
            .collect(),
    }
}

/// [`compile_for_gateway`] over a whole resource list: the Gateway `namespace/name` is looked
/// up in `resources`, backends are checked against its Services. Empty when there is no such
/// Gateway or listener.
pub fn compile_for_gateway_in(
    resources: &[Resource],
    namespace: &str,
    name: &str,
    listener: &str,
) -> GatewayRoutes {
    let gateway = resources.iter().find_map(|r| match r {
        Resource::Gateway(g) if g.metadata.namespace == namespace && g.metadata.name == name => {
            Some(g)
        }
        _ => None,
    });
    let Some(gateway) = gateway else {
        return GatewayRoutes::default();
    };
    compile_for_gateway(
        resources.iter().filter_map(RouteRef::of),
        gateway,
        listener,
        |ns, svc| {
            resources.iter().any(|r| {
                matches!(r, Resource::Service(s) if s.metadata.namespace == ns && s.metadata.name == svc)
            })
        },
    )
}

/// The TLSRoutes attached to listener `listener` of `gateway` (and allowed by it), in
/// `{namespace}/{name}` order, with the SNI host names each serves there (the intersection of
/// the listener's `hostname` and the route's `hostnames`; `*` for any).
pub fn tls_routes_for_gateway<'a>(
    routes: impl IntoIterator<Item = &'a TLSRoute>,
    gateway: &super::Gateway,
    listener: &str,
) -> Vec<(&'a TLSRoute, Vec<String>)> {
    let Some(l) = gateway.spec.listeners.iter().find(|l| l.name == listener) else {
        return Vec::new();
    };
    let gns = gateway.metadata.namespace.as_str();
    let mut out: Vec<(&'a TLSRoute, Vec<String>)> = routes
        .into_iter()
        .filter(|r| {
            let rns = r.metadata.namespace.as_str();
            r.spec.parent_refs.iter().any(|p| {
                p.is_gateway()
                    && p.namespace_or(rns) == gns
                    && p.name == gateway.metadata.name
                    && p.section_name.as_ref().is_none_or(|s| *s == l.name)
                    && p.port.is_none_or(|port| port == l.port)
            }) && super::gateway::AllowedRoutes::allows(
                l.allowed_routes.as_ref(),
                l.protocol,
                TLSRoute::KIND,
                rns,
                gns,
            )
        })
        .map(|r| (r, hosts(l.hostname.as_deref(), &r.spec.hostnames)))
        .filter(|(_, h)| !h.is_empty())
        .collect();
    out.sort_by(|a, b| {
        (&a.0.metadata.namespace, &a.0.metadata.name)
            .cmp(&(&b.0.metadata.namespace, &b.0.metadata.name))
    });
    out
}

/// The host names a route serves on a listener: the intersection of the two.
fn hosts(listener: Option<&str>, route: &[String]) -> Vec<String> {
    match (listener, route) {
        (None, []) => vec!["*".into()],
        (Some(l), []) => vec![l.to_string()],
        (None, r) => r.to_vec(),
        (Some(l), r) => r.iter().filter_map(|h| intersect(l, h)).collect(),
    }
}

fn intersect(a: &str, b: &str) -> Option<String> {
    if a == b {
        return Some(a.to_string());
    }
    let covers = |wild: &str, host: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| host.ends_with(suffix) && host.len() > suffix.len())
    };
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// One (rule, match) pair before sorting.
struct Entry {
    key: SortKey,
    rule: RouteRule,
    /// The namespace of the route the rule came from: where its backends are.
    namespace: String,
}

/// Smaller sorts first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    /// 0 Exact, 1 PathPrefix, 2 RegularExpression, 3 none (GRPC "any").
    path_class: u8,
    /// Longer prefix (or more gRPC service+method characters) first.
    path_len: std::cmp::Reverse<usize>,
    /// 0 with a method match.
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    route: (String, String),
    rule: usize,
    matched: usize,
}

fn compile_routes(
    routes: &[RouteRef<'_>],
    service_exists: &dyn Fn(&str, &str) -> bool,
    kind: Option<&'static str>,
) -> CompiledRules {
    let mut entries = Vec::new();
    for route in routes {
        match route {
            RouteRef::Http(r) => http_entries(r, service_exists, &mut entries),
            RouteRef::Grpc(r) => grpc_entries(r, service_exists, &mut entries),
            RouteRef::Tls(_) => {}
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let (rules, namespaces) = entries.into_iter().map(|e| (e.rule, e.namespace)).unzip();
    CompiledRules {
        rules,
        namespaces,
        routes: routes
            .iter()
            .map(|r| {
                format!(
                    "{} {}/{}",
                    r.kind(),
                    r.metadata().namespace,
                    r.metadata().name
                )
            })
            .collect(),
        kind: kind.or_else(|| routes.first().map(|r| r.kind())),
    }
}

/// `route/rule`: the rule's name, or its index.
fn rule_name(route: &ObjectMeta, index: usize, name: Option<&String>) -> String {
    match name {
        Some(n) => format!("{}/{n}", route.name),
        None => format!("{}/{index}", route.name),
    }
}

fn http_entries(
    route: &HTTPRoute,
    service_exists: &dyn Fn(&str, &str) -> bool,
    out: &mut Vec<Entry>,
) {
    let default_match = [HTTPRouteMatch::default()];
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let base = http_rule(route, i, rule, service_exists);
        let matches: &[HTTPRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        for (j, m) in matches.iter().enumerate() {
            let path = m.path.clone().map_or(
                PathMatch {
                    kind: PathMatchType::PathPrefix,
                    value: "/".into(),
                },
                |p| PathMatch {
                    kind: p.kind,
                    value: p.value,
                },
            );
            let (path_class, path_len) = match path.kind {
                PathMatchType::Exact => (0, path.value.len()),
                PathMatchType::PathPrefix => (1, path.value.trim_end_matches('/').len()),
                PathMatchType::RegularExpression => (2, path.value.len()),
            };
            let key = SortKey {
                path_class,
                path_len: std::cmp::Reverse(path_len),
                no_method: m.method.is_none(),
                headers: std::cmp::Reverse(m.headers.len()),
                query: std::cmp::Reverse(m.query_params.len()),
                route: (
                    route.metadata.namespace.clone(),
                    route.metadata.name.clone(),
                ),
                rule: i,
                matched: j,
            };
            let mut rule = base.clone();
            rule.matches = vec![RouteMatch {
                path: Some(path),
                method: m.method.clone(),
                headers: m.headers.iter().map(value_match).collect(),
                query_params: m
                    .query_params
                    .iter()
                    .map(|q| ValueMatch {
                        name: q.name.clone(),
                        kind: string_match(q.kind),
                        value: Some(q.value.clone()),
                    })
                    .collect(),
            }];
            out.push(Entry {
                key,
                rule,
                namespace: route.metadata.namespace.clone(),
            });
        }
    }
}

fn string_match(k: StringMatchType) -> ValueMatchType {
    match k {
        StringMatchType::Exact => ValueMatchType::Exact,
        StringMatchType::RegularExpression => ValueMatchType::RegularExpression,
    }
}

fn value_match(h: &HeaderMatch) -> ValueMatch {
    ValueMatch {
        name: h.name.clone(),
        kind: string_match(h.kind),
        value: Some(h.value.clone()),
    }
}

fn header_modifier(f: &HTTPHeaderFilter) -> HeaderModifier {
    HeaderModifier {
        set: f
            .set
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        add: f
            .add
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        remove: f.remove.clone(),
    }
}

/// The valid backends of a rule, as Trellis backends.
fn backends(
    refs: &[BackendRef],
    route_ns: &str,
    service_exists: &dyn Fn(&str, &str) -> bool,
) -> Vec<Backend> {
    refs.iter()
        .filter(|b| backend_problem(b, route_ns, service_exists).is_none())
        .filter(|b| b.weight() > 0)
        .map(|b| Backend {
            service: b.name.clone(),
            subset: None,
            weight: b.weight(),
            port: b.port,
        })
        .collect()
}

/// The `500` a rule answers for its invalid backendRefs: every request when no valid backend
/// is left, else the invalid ones' share of the weight; `None` when every backendRef is valid.
fn invalid_share(
    valid: &[Backend],
    refs: &[BackendRef],
    route_ns: &str,
    service_exists: &dyn Fn(&str, &str) -> bool,
) -> Option<DirectResponse> {
    let invalid: u64 = refs
        .iter()
        .filter(|b| backend_problem(b, route_ns, service_exists).is_some())
        .map(|b| u64::from(b.weight()))
        .sum();
    let body = Some("no valid backendRef\n".to_string());
    if valid.is_empty() {
        return Some(DirectResponse {
            status: 500,
            body,
            weight: None,
        });
    }
    (invalid > 0).then(|| DirectResponse {
        status: 500,
        body,
        weight: Some(u32::try_from(invalid).unwrap_or(u32::MAX)),
    })
}

fn mirror(
    m: &HTTPRequestMirrorFilter,
    route_ns: &str,
    service_exists: &dyn Fn(&str, &str) -> bool,
) -> Option<Mirror> {
    if backend_problem(&m.backend_ref, route_ns, service_exists).is_some() {
        return None;
    }
    Some(Mirror {
        service: m.backend_ref.name.clone(),
        subset: None,
        percent: m.percent(),
    })
}

fn path_modifier(p: &HTTPPathModifier) -> (Option<String>, Option<String>) {
    match p.kind {
        HTTPPathModifierType::ReplaceFullPath => (p.replace_full_path.clone(), None),
        HTTPPathModifierType::ReplacePrefixMatch => (None, p.replace_prefix_match.clone()),
    }
}

/// A filter kind HTTPRoute and GRPCRoute share: a header modifier either way, or a mirror (only
/// a rule's first mirror is applied). Validation lets a filter set only its type's field.
fn shared_filter(
    out: &mut RouteRule,
    request_headers: Option<&HTTPHeaderFilter>,
    response_headers: Option<&HTTPHeaderFilter>,
    request_mirror: Option<&HTTPRequestMirrorFilter>,
    ns: &str,
    service_exists: &dyn Fn(&str, &str) -> bool,
) {
    if let Some(h) = request_headers {
        out.request_headers = Some(header_modifier(h));
    }
    if let Some(h) = response_headers {
        out.response_headers = Some(header_modifier(h));
    }
    if let (Some(m), None) = (request_mirror, &out.mirror) {
        out.mirror = mirror(m, ns, service_exists);
    }
}

/// The rule's filters, backends and timeouts (its matches are added per match).
fn http_rule(
    route: &HTTPRoute,
    index: usize,
    rule: &HTTPRouteRule,
    service_exists: &dyn Fn(&str, &str) -> bool,
) -> RouteRule {
    let ns = route.metadata.namespace.as_str();
    let mut out = RouteRule {
        name: Some(rule_name(&route.metadata, index, rule.name.as_ref())),
        ..Default::default()
    };
    for f in &rule.filters {
        match f.kind {
            HTTPRouteFilterType::RequestHeaderModifier
            | HTTPRouteFilterType::ResponseHeaderModifier
            | HTTPRouteFilterType::RequestMirror => shared_filter(
                &mut out,
                f.request_header_modifier.as_ref(),
                f.response_header_modifier.as_ref(),
                f.request_mirror.as_ref(),
                ns,
                service_exists,
            ),
            HTTPRouteFilterType::RequestRedirect => {
                if let Some(r) = &f.request_redirect {
                    let (full_path, prefix_path) =
                        r.path.as_ref().map(path_modifier).unwrap_or_default();
                    out.redirect = Some(Redirect {
                        scheme: r.scheme.clone(),
                        hostname: r.hostname.clone(),
                        port: r.port,
                        full_path,
                        prefix_path,
                        status_code: r.status_code.unwrap_or(302),
                    });
                }
            }
            HTTPRouteFilterType::URLRewrite => {
                if let Some(r) = &f.url_rewrite {
                    let (full_path, path) = r.path.as_ref().map(path_modifier).unwrap_or_default();
                    out.rewrite = Some(Rewrite {
                        path,
                        full_path,
                        host: r.hostname.clone(),
                    });
                }
            }
            // Refused by validation.
            HTTPRouteFilterType::ExtensionRef => {}
        }
    }
    out.backends = backends(&rule.backend_refs, ns, service_exists);
    if out.redirect.is_none() {
        out.direct_response = invalid_share(&out.backends, &rule.backend_refs, ns, service_exists);
    }
    if let Some(t) = &rule.timeouts {
        // One try per request (Gateway API v1 has no retries), so the try's bound is the
        // request's too: the smaller of the two.
        let request = t.request.filter(|d| !d.is_zero());
        let backend = t.backend_request.filter(|d| !d.is_zero());
        out.timeout = match (request, backend) {
            (Some(r), Some(b)) => Some(r.min(b)),
            (r, b) => r.or(b),
        };
    }
    out
}

fn grpc_entries(
    route: &GRPCRoute,
    service_exists: &dyn Fn(&str, &str) -> bool,
    out: &mut Vec<Entry>,
) {
    let default_match = [GRPCRouteMatch::default()];
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let base = grpc_rule(route, i, rule, service_exists);
        let matches: &[GRPCRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        for (j, m) in matches.iter().enumerate() {
            let (path, class, len) = grpc_path(m);
            let key = SortKey {
                path_class: class,
                path_len: std::cmp::Reverse(len),
                no_method: true,
                headers: std::cmp::Reverse(m.headers.len()),
                query: std::cmp::Reverse(0),
                route: (
                    route.metadata.namespace.clone(),
                    route.metadata.name.clone(),
                ),
                rule: i,
                matched: j,
            };
            let mut rule = base.clone();
            rule.matches = vec![RouteMatch {
                path,
                method: None,
                headers: m.headers.iter().map(value_match).collect(),
                query_params: Vec::new(),
            }];
            out.push(Entry {
                key,
                rule,
                namespace: route.metadata.namespace.clone(),
            });
        }
    }
}

/// The path match of a gRPC method match, its precedence class and its length.
fn grpc_path(m: &GRPCRouteMatch) -> (Option<PathMatch>, u8, usize) {
    let Some(method) = &m.method else {
        return (None, 3, 0);
    };
    let len = method.service.as_deref().map_or(0, str::len)
        + method.method.as_deref().map_or(0, str::len);
    match (method.kind, &method.service, &method.method) {
        (StringMatchType::Exact, Some(s), Some(me)) => (
            Some(PathMatch {
                kind: PathMatchType::Exact,
                value: format!("/{s}/{me}"),
            }),
            0,
            len,
        ),
        (kind, s, me) => {
            let part = |v: &Option<String>| match (kind, v) {
                (_, None) => "[^/]+".to_string(),
                (StringMatchType::Exact, Some(v)) => regex::escape(v),
                (StringMatchType::RegularExpression, Some(v)) => format!("(?:{v})"),
            };
            (
                Some(PathMatch {
                    kind: PathMatchType::RegularExpression,
                    value: format!("/{}/{}", part(s), part(me)),
                }),
                2,
                len,
            )
        }
    }
}

fn grpc_rule(
    route: &GRPCRoute,
    index: usize,
    rule: &GRPCRouteRule,
    service_exists: &dyn Fn(&str, &str) -> bool,
) -> RouteRule {
    let ns = route.metadata.namespace.as_str();
    let mut out = RouteRule {
        name: Some(rule_name(&route.metadata, index, rule.name.as_ref())),
        ..Default::default()
    };
    for f in &rule.filters {
        // ExtensionRef is refused by validation; every other kind is one HTTPRoute has too.
        if f.kind != GRPCRouteFilterType::ExtensionRef {
            shared_filter(
                &mut out,
                f.request_header_modifier.as_ref(),
                f.response_header_modifier.as_ref(),
                f.request_mirror.as_ref(),
                ns,
                service_exists,
            );
        }
    }
    out.backends = backends(&rule.backend_refs, ns, service_exists);
    out.direct_response = invalid_share(&out.backends, &rule.backend_refs, ns, service_exists);
    out
}
