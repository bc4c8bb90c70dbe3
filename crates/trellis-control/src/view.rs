//! What each proxy is sent: only the services it may call (with their workloads, routes and
//! destination policies, following route backends and mirrors to other services), plus the
//! policy for its own inbound side and the mesh settings. Proxy memory then follows what a
//! workload calls, not the size of the mesh.
//!
//! "May call" is read from AuthorizationPolicies: a service whose policies could never allow
//! this caller (deny by default, and no allow rule whose `from` matches its identity or
//! namespace) is left out. Anything a rule could allow stays in: the inbound side still decides
//! each request, so this filter may over-include but never wrongly excludes.
//!
//! A Service that lists what its proxies call (`spec.egress`, see [`crate::egress`]) narrows
//! this to the services of that list; an on-demand proxy gets only those it named, and of a
//! scoped service only those in its scope.
use crate::egress::Egress;
use crate::model::Model;
use crate::store::Stored;
use std::collections::{BTreeSet, VecDeque};
use trellis_api::security::{AuthorizationPolicy, AuthzAction, AuthzSource};
use trellis_api::{Resource, Service};

/// Who a proxy is, as it says when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub service: String,
    pub namespace: String,
}

impl NodeInfo {
    /// The SPIFFE identity this proxy's workload holds.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service
        )
    }
}

/// The resources `node` should hold, in key order.
pub fn view<'m>(model: &'m Model, node: &NodeInfo) -> Vec<&'m Stored> {
    view_of(model, node, None)
}

/// What an on-demand `node` that named the services in `scope` should hold: the named services
/// it may call, closed over route backends and mirrors, plus its own — the reference for the
/// incremental engine's scoped views.
pub fn view_scoped<'m>(
    model: &'m Model,
    node: &NodeInfo,
    scope: &BTreeSet<(String, String)>,
) -> Vec<&'m Stored> {
    view_of(model, node, Some(scope))
}

fn view_of<'m>(
    model: &'m Model,
    node: &NodeInfo,
    scope: Option<&BTreeSet<(String, String)>>,
) -> Vec<&'m Stored> {
    let trust_domain = model
        .resources()
        .find_map(|r| match r {
            Resource::MeshConfig(m) => Some(m.spec.trust_domain.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "cluster.local".into());
    let principal = node.principal(&trust_domain);
    let mut services = reachable_services(model, node, &principal, scope);
    services.insert((node.namespace.clone(), node.service.clone()));
    let selected: Vec<&Service> = model
        .resources()
        .filter_map(|r| match r {
            Resource::Service(s)
                if services.contains(&(s.metadata.namespace.clone(), s.metadata.name.clone())) =>
            {
                Some(s)
            }
            _ => None,
        })
        .collect();
    let wanted = Wanted {
        node,
        services: &services,
        selected: &selected,
    };
    model
        .items
        .values()
        .filter(|s| wanted.resource(&s.resource))
        .collect()
}

struct Wanted<'a> {
    node: &'a NodeInfo,
    /// Services the node may call, plus its own.
    services: &'a BTreeSet<(String, String)>,
    selected: &'a [&'a Service],
}

impl Wanted<'_> {
    fn has(&self, ns: &str, svc: &str) -> bool {
        self.services.contains(&(ns.to_string(), svc.to_string()))
    }

    fn own(&self, ns: &str, svc: &str) -> bool {
        ns == self.node.namespace && svc == self.node.service
    }

    fn resource(&self, r: &Resource) -> bool {
        let ns = r.metadata().namespace.as_str();
        match r {
            // Mesh-wide: a host name names the same destination for every proxy.
            Resource::MeshConfig(_) | Resource::TrustBundle(_) | Resource::ExternalService(_) => {
                true
            }
            // Mesh-wide too: a route's parent service and backends are resolved by the proxy
            // that compiles it, and an ingress gateway reads Gateways and TLSRoutes.
            Resource::HTTPRoute(_)
            | Resource::GRPCRoute(_)
            | Resource::TLSRoute(_)
            | Resource::Gateway(_) => true,
            Resource::Service(s) => self.has(ns, &s.metadata.name),
            // A VIP goes with its service: the sidecar's DNS and capture know what it may call.
            Resource::ServiceAddress(a) => self.has(ns, &a.metadata.name),
            Resource::Route(x) => self.has(ns, &x.spec.service),
            Resource::DestinationPolicy(p) => self.has(ns, &p.spec.service),
            Resource::Workload(w) => self.selected.iter().any(|s| s.selects(w)),
            Resource::AuthorizationPolicy(p) => self.own(ns, &p.spec.service),
            Resource::RequestAuthentication(p) => self.own(ns, &p.spec.service),
            // Enforced by the service's own sidecars on their inbound side only.
            Resource::RateLimitPolicy(p) => self.own(ns, &p.spec.service),
            Resource::Deployment(_) | Resource::CertificateAuthority(_) => false,
        }
    }
}

/// Services this node may call (of its Service's egress scope, when it declares one, and of
/// `scope`, when it names some), closed over route backends and mirrors; its own is added by
/// the caller.
fn reachable_services(
    model: &Model,
    node: &NodeInfo,
    principal: &str,
    scope: Option<&BTreeSet<(String, String)>>,
) -> BTreeSet<(String, String)> {
    let own = (node.namespace.clone(), node.service.clone());
    let candidates: Vec<(String, String)> = match Egress::of(model, &own) {
        Some(egress) => egress.services(model).collect(),
        None => model
            .resources()
            .filter_map(|r| match r {
                Resource::Service(s) => {
                    Some((s.metadata.namespace.clone(), s.metadata.name.clone()))
                }
                _ => None,
            })
            .collect(),
    };
    let mut out = BTreeSet::new();
    let mut queue: VecDeque<(String, String)> = candidates
        .into_iter()
        .filter(|key| scope.is_none_or(|s| s.contains(key)))
        .filter(|(ns, name)| may_call(model, ns, name, node, principal))
        .collect();
    if scope.is_some() {
        // Routes of the own service count too (the engine seeds reach with it).
        queue.push_back(own);
    }
    while let Some(key) = queue.pop_front() {
        if !out.insert(key.clone()) {
            continue;
        }
        for r in model.resources() {
            if trellis_api::gateway_api::service_parents(r).contains(&key) {
                queue.extend(trellis_api::gateway_api::service_backends(r));
            }
            if let Resource::Route(route) = r {
                if route.metadata.namespace != key.0 || route.spec.service != key.1 {
                    continue;
                }
                for rule in &route.spec.rules {
                    let targets = rule
                        .backends
                        .iter()
                        .map(|b| b.service.clone())
                        .chain(rule.mirror.iter().map(|m| m.service.clone()));
                    for t in targets {
                        queue.push_back((key.0.clone(), t));
                    }
                }
            }
        }
    }
    out
}

/// False only when the service's policies can never allow this caller.
fn may_call(model: &Model, ns: &str, service: &str, node: &NodeInfo, principal: &str) -> bool {
    let policies: Vec<&AuthorizationPolicy> = model
        .resources()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(p)
                if p.metadata.namespace == ns && p.spec.service == service =>
            {
                Some(p)
            }
            _ => None,
        })
        .collect();
    if policies.is_empty() {
        return true;
    }
    policies
        .iter()
        .any(|p| policy_may_allow(p, node, principal))
}

/// Whether one AuthorizationPolicy could allow this caller: it allows by default, or one of its
/// allow rules could match it (the one rule, for the reference and the engine alike).
pub(crate) fn policy_may_allow(p: &AuthorizationPolicy, node: &NodeInfo, principal: &str) -> bool {
    p.spec.effective_default_action() == AuthzAction::Allow
        || p.spec.rules.iter().any(|rule| {
            rule.action == AuthzAction::Allow
                && rule
                    .from
                    .as_ref()
                    .is_none_or(|f| source_may_match(f, node, principal))
        })
}

/// Whether a rule's `from` could match this node.
fn source_may_match(from: &AuthzSource, node: &NodeInfo, principal: &str) -> bool {
    let principal_ok = from.principals.is_empty()
        || from.principals.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => principal.starts_with(prefix),
            None => p == principal,
        });
    let namespace_ok = from.namespaces.is_empty() || from.namespaces.contains(&node.namespace);
    principal_ok && namespace_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::model;

    fn names(v: &[&Stored]) -> Vec<String> {
        v.iter().map(|s| s.key().to_string()).collect()
    }

    const MESH: &str = "
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: b}
spec: {selector: {app: b}, ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: c}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: secret}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: b-0, labels: {app: b}}
spec: {address: 10.0.0.2, port: 80}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: c-0}
spec: {service: c, address: 10.0.0.3, port: 80}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: s-0}
spec: {service: secret, address: 10.0.0.4, port: 80}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: b}
spec:
  service: b
  rules: [{mirror: {service: c}}]
---
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: secret}
spec:
  service: secret
  defaultAction: Deny
  rules:
    - action: Allow
      from: {principals: ['spiffe://cluster.local/ns/default/sa/admin']}
---
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: a}
spec:
  service: a
  defaultAction: Deny
  rules: [{action: Allow, from: {namespaces: [default]}}]
---
apiVersion: trellis.dev/v1
kind: RateLimitPolicy
metadata: {name: b-limit}
spec:
  service: b
  identity: {requestsPerSecond: 10}
---
apiVersion: trellis.dev/v1
kind: ExternalService
metadata: {name: api, namespace: other}
spec: {hosts: [api.example.com], ports: [{port: 443}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-split, namespace: other}
spec:
  parentRefs: [{group: \"\", kind: Service, name: z}]
  rules: [{backendRefs: [{name: z, port: 80}]}]
";

    #[test]
    fn callers_get_what_they_may_call_and_their_own_policy() {
        let m = model(MESH);
        let a = NodeInfo {
            service: "a".into(),
            namespace: "default".into(),
        };
        let got = names(&view(&m, &a));
        assert!(got.contains(&"Service/default/b".to_string()));
        assert!(
            got.contains(&"Workload/default/b-0".to_string()),
            "selected by label"
        );
        assert!(
            got.contains(&"Workload/default/c-0".to_string()),
            "mirror target followed"
        );
        assert!(
            got.contains(&"AuthorizationPolicy/default/a".to_string()),
            "own inbound policy"
        );
        assert!(
            !got.contains(&"RateLimitPolicy/default/b-limit".to_string()),
            "a caller of b does not get b's rate limit policy: {got:?}"
        );
        let b = NodeInfo {
            service: "b".into(),
            namespace: "default".into(),
        };
        assert!(
            names(&view(&m, &b)).contains(&"RateLimitPolicy/default/b-limit".to_string()),
            "b's own sidecars get it"
        );
        for node in [&a, &b] {
            assert!(
                names(&view(&m, node)).contains(&"ExternalService/other/api".to_string()),
                "every proxy gets every ExternalService, whatever its namespace"
            );
            assert!(
                names(&view(&m, node)).contains(&"HTTPRoute/other/b-split".to_string()),
                "every proxy gets every HTTPRoute (mesh-wide, like ExternalService)"
            );
        }
        assert!(
            !got.iter().any(|k| k.contains("secret")),
            "not allowed to call secret: {got:?}"
        );
        let admin = NodeInfo {
            service: "admin".into(),
            namespace: "default".into(),
        };
        let got = names(&view(&m, &admin));
        assert!(got.contains(&"Workload/default/s-0".to_string()));
        assert!(!got.contains(&"AuthorizationPolicy/default/secret".to_string()));
    }
}
