//! The Gateway this process serves and the routes attached to its listeners, read from the
//! config snapshot (the control plane sends Gateway API resources to every proxy) and turned
//! into a [`GatewayInput`].
//!
//! HTTPRoutes and GRPCRoutes are compiled by `trellis_api::gateway_api::compile_for_gateway`
//! (the same compiler Service parents use: hostname intersection, the spec's precedence, filters
//! to Trellis rule parts); TLSRoutes by `tls_routes_for_gateway` (attachment, `allowedRoutes`,
//! SNI hostnames intersected with the listener's), their backends taken here with their weights.
use super::plan::{AttachedTls, GatewayInput, HostRules, ListenerInput, ListenerProtocol};
use crate::config::{BackendRef, Snapshot};
use trellis_api::gateway_api::compile::{
    compile_for_gateway, tls_routes_for_gateway, CompiledRules, RouteRef,
};
use trellis_api::gateway_api::gateway::{Listener, ListenerProtocol as Protocol, TLSModeType};
use trellis_api::gateway_api::TLSRoute;
use trellis_api::{Gateway, ObjectMeta, Route};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Gateway {namespace}/{name} is not in the config (apply it; the gateway serves nothing until then)")]
    Missing { namespace: String, name: String },
}

/// The Gateway `namespace/name` and its attached routes.
pub fn input(
    snapshot: &Snapshot,
    name: &str,
    namespace: &str,
) -> Result<GatewayInput, SourceError> {
    let resources = &snapshot.resources;
    let gateway = resources
        .gateways()
        .find(|g| g.metadata.name == name && g.metadata.namespace == namespace)
        .ok_or_else(|| SourceError::Missing {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    let routes = || {
        (resources.http_routes().map(RouteRef::Http))
            .chain(resources.grpc_routes().map(RouteRef::Grpc))
    };
    let exists = |ns: &str, svc: &str| snapshot.service(ns, svc).is_some();
    let listeners = gateway
        .spec
        .listeners
        .iter()
        .map(|l| {
            let protocol = protocol(l);
            let mut input = ListenerInput {
                name: l.name.clone(),
                port: l.port,
                protocol,
                hostname: l.hostname.clone(),
                certificate_refs: (l.tls.iter())
                    .flat_map(|t| t.certificate_refs.iter().map(|c| c.name.clone()))
                    .collect(),
                http: Vec::new(),
                tls: Vec::new(),
            };
            match protocol {
                ListenerProtocol::Http | ListenerProtocol::Https => {
                    let compiled = compile_for_gateway(routes(), gateway, &l.name, exists);
                    input.http = (compiled.by_host.into_iter())
                        .map(|(hostname, rules)| HostRules {
                            routes: as_routes(gateway, &rules),
                            hostname,
                        })
                        .collect();
                }
                ListenerProtocol::TlsPassthrough | ListenerProtocol::TlsTerminate => {
                    input.tls = tls_routes_for_gateway(resources.tls_routes(), gateway, &l.name)
                        .into_iter()
                        .map(|(r, hostnames)| tls_route(r, hostnames))
                        .collect();
                }
            }
            input
        })
        .collect();
    Ok(GatewayInput {
        name: gateway.metadata.name.clone(),
        listeners,
    })
}

/// `TLS` by its mode: `Terminate` (the default, as the spec has it) or `Passthrough`.
fn protocol(l: &Listener) -> ListenerProtocol {
    match l.protocol {
        Protocol::HTTP => ListenerProtocol::Http,
        Protocol::HTTPS => ListenerProtocol::Https,
        Protocol::TLS => match l.tls.as_ref().map(|t| t.mode()) {
            Some(TLSModeType::Passthrough) => ListenerProtocol::TlsPassthrough,
            _ => ListenerProtocol::TlsTerminate,
        },
    }
}

/// The rules of one hostname as Trellis Routes named after the Gateway, one per run of rules
/// from one namespace (so each rule's backends are looked up where its route lives), in order.
fn as_routes(gateway: &Gateway, compiled: &CompiledRules) -> Vec<Route> {
    let mut routes: Vec<Route> = Vec::new();
    for (rule, ns) in compiled.rules.iter().zip(&compiled.namespaces) {
        match routes.last_mut() {
            Some(r) if r.metadata.namespace == *ns => r.spec.rules.push(rule.clone()),
            _ => {
                let mut metadata = ObjectMeta::new(gateway.metadata.name.clone());
                metadata.namespace = ns.clone();
                routes.push(Route {
                    metadata,
                    spec: trellis_api::route::RouteSpec {
                        service: String::new(),
                        rules: vec![rule.clone()],
                    },
                });
            }
        }
    }
    routes
}

fn tls_route(r: &TLSRoute, hostnames: Vec<String>) -> AttachedTls {
    let ns = &r.metadata.namespace;
    let backends = (r.spec.rules.iter())
        .flat_map(|rule| rule.backend_refs.iter())
        .filter(|b| b.is_service())
        .map(|b| {
            let backend = BackendRef {
                namespace: b.namespace.clone().unwrap_or_else(|| ns.clone()),
                service: b.name.clone(),
                subset: None,
            };
            (backend, b.weight())
        })
        .collect();
    AttachedTls {
        name: r.metadata.name.clone(),
        hostnames,
        backends,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile_route;
    use trellis_api::Resource;

    /// A Gateway in `infra` that takes routes from every namespace, an HTTPRoute there for
    /// `/admin` and one in `shop` for the rest, both to a Service named `web` (each namespace
    /// has one).
    const CROSS_NAMESPACE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: trellis
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: admin, namespace: infra}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /admin}}]
    backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  rules:
  - backendRefs: [{name: web, port: 80}]
"#;

    #[test]
    fn rules_call_backends_in_their_own_routes_namespace() {
        let set = trellis_api::parse_documents("gw.yaml", CROSS_NAMESPACE).expect("parses");
        let Some(Resource::Gateway(gateway)) = set.resources.iter().find(|r| r.kind() == "Gateway")
        else {
            panic!("the Gateway")
        };
        let compiled = compile_for_gateway(
            set.resources.iter().filter_map(RouteRef::of),
            gateway,
            "http",
            |_, svc| svc == "web",
        );
        let rules = &compiled.by_host["*"];
        assert_eq!(rules.namespaces, ["infra", "shop"]);
        let routes = as_routes(gateway, rules);
        let backends: Vec<(String, String)> = (routes.iter())
            .flat_map(|r| compile_route(r).expect("compiles"))
            .map(|rule| {
                let b = &rule.backends[0].backend;
                (b.namespace.clone(), b.service.clone())
            })
            .collect();
        assert_eq!(
            backends,
            [
                ("infra".to_string(), "web".to_string()),
                ("shop".to_string(), "web".to_string())
            ],
            "/admin first (the longer prefix), each to its own namespace's web"
        );
    }
}
