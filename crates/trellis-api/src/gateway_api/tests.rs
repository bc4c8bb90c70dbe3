use super::status::{route_status, with_status, OVERRIDDEN};
use super::*;
use crate::parse::{parse_documents, Resource};
use crate::route::PathMatchType;

const SERVICES: &str = r#"
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: echo}
spec: {ports: [{port: 8080, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: echo-v1}
spec: {ports: [{port: 8080, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: echo-v2}
spec: {ports: [{port: 8080, protocol: http}]}
"#;

fn parse(text: &str) -> Vec<Resource> {
    parse_documents("t.yaml", &format!("{SERVICES}---\n{text}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .resources
}

fn parse_err(text: &str) -> String {
    parse_documents("t.yaml", text)
        .expect_err("refused")
        .to_string()
}

/// conformance/tests/httproute-matching-across-routes.yaml, with a Service parent.
const ACROSS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matching-part1}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matching-part2}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 8080}]
"#;

#[test]
fn precedence_spans_every_route_of_the_parent() {
    let rs = parse(ACROSS);
    let c = compile_for_service_in(&rs, "default", "echo");
    assert_eq!(c.kind, Some("HTTPRoute"));
    let order: Vec<(String, String)> = c
        .rules
        .iter()
        .map(|r| {
            let m = &r.matches[0];
            (
                m.path.as_ref().map(|p| p.value.clone()).unwrap_or_default(),
                r.backends[0].service.clone(),
            )
        })
        .collect();
    // /v2 (longest prefix) first; then the two `/` matches, the one with a header first.
    assert_eq!(order[0], ("/v2".into(), "echo-v2".into()));
    assert_eq!(c.rules[1].matches[0].headers.len(), 1);
    assert_eq!(c.rules[3].matches[0].headers.len(), 0);
    assert_eq!(c.rules.len(), 4);
    assert_eq!(c.rules[0].name.as_deref(), Some("matching-part2/0"));
}

#[test]
fn exact_beats_prefix_and_method_beats_headers() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /exact/longer/prefix}}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{headers: [{name: x, value: y}, {name: z, value: w}]}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{method: GET}]
    backendRefs: [{name: echo-v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: echo-v2, port: 8080}]
"#,
    );
    let c = compile_for_service_in(&rs, "default", "echo");
    let names: Vec<_> = c
        .rules
        .iter()
        .map(|r| r.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["b/0", "a/0", "a/2", "a/1"]);
    assert_eq!(
        c.rules[0].matches[0].path.as_ref().map(|p| p.kind),
        Some(PathMatchType::Exact)
    );
}

#[test]
fn missing_or_foreign_backends_answer_500_and_status_says_why() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - backendRefs: [{group: unknown.example.com, kind: NotService, name: echo-v1, port: 8080}]
  - matches: [{path: {value: /gone}}]
    backendRefs: [{name: nowhere, port: 8080}]
"#,
    );
    let c = compile_for_service_in(&rs, "default", "echo");
    assert!(c
        .rules
        .iter()
        .all(|r| r.direct_response.as_ref().map(|d| d.status) == Some(500)));
    let Some(route) = rs.iter().find_map(RouteRef::of) else {
        panic!("a route")
    };
    let st = route_status(route, &rs);
    let conds = &st.parents[0].conditions;
    assert_eq!(
        (conds[0].kind.as_str(), conds[0].status.as_str()),
        ("Accepted", "True")
    );
    assert_eq!(conds[1].kind, "ResolvedRefs");
    assert_eq!(conds[1].status, "False");
    assert_eq!(conds[1].reason, "InvalidKind");
}

#[test]
fn a_trellis_route_wins_and_status_names_it() {
    let rs = parse(
        r#"
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: echo-canary}
spec:
  service: echo
  rules: [{backends: [{service: echo-v1}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: portable}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo-v2, port: 8080}]}]
"#,
    );
    assert!(compile_for_service_in(&rs, "default", "echo").is_empty());
    let Some(r) = rs.iter().find(|r| r.kind() == "HTTPRoute") else {
        panic!("route")
    };
    let Resource::HTTPRoute(shown) = with_status(r, &rs) else {
        panic!("kind")
    };
    let st = shown.status.expect("status");
    let accepted = &st.parents[0].conditions[0];
    assert_eq!(accepted.status, "False");
    assert_eq!(accepted.reason, OVERRIDDEN);
    assert!(
        accepted.message.contains("echo-canary"),
        "{}",
        accepted.message
    );
}

#[test]
fn grpc_methods_become_paths_and_the_first_kind_wins_a_shared_parent() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: a-grpc}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: grpc.health.v1.Health}}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{method: {service: grpc.health.v1.Health, method: Check}}]
    backendRefs: [{name: echo-v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-http}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo-v2, port: 8080}]}]
"#,
    );
    let c = compile_for_service_in(&rs, "default", "echo");
    assert_eq!(c.kind, Some("GRPCRoute"));
    assert_eq!(c.routes, ["GRPCRoute default/a-grpc"]);
    let first = c.rules[0].matches[0].path.clone().expect("path");
    assert_eq!(first.value, "/grpc.health.v1.Health/Check");
    assert_eq!(first.kind, PathMatchType::Exact);
    let second = c.rules[1].matches[0].path.clone().expect("path");
    assert_eq!(second.value, r"/grpc\.health\.v1\.Health/[^/]+");
    let Some(http) = rs.iter().find(|r| r.kind() == "HTTPRoute") else {
        panic!("route")
    };
    let st = route_status(RouteRef::of(http).expect("route"), &rs);
    assert_eq!(st.parents[0].conditions[0].reason, status::CONFLICTED);
}

#[test]
fn filters_compile_to_trellis_fields() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: f}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 8080}, fraction: {numerator: 1, denominator: 4}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Set, value: v}], add: [{name: X-Add, value: a}], remove: [X-Gone]}
    backendRefs: [{name: echo-v1, port: 8080, weight: 3}]
    timeouts: {request: 2s, backendRequest: 1s}
  - matches: [{path: {type: Exact, value: /redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: example.org, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /new}}
"#,
    );
    let c = compile_for_service_in(&rs, "default", "echo");
    let redirect = c.rules[0].redirect.clone().expect("redirect first (Exact)");
    assert_eq!(redirect.status_code, 301);
    assert_eq!(redirect.full_path.as_deref(), Some("/new"));
    assert!(c.rules[0].direct_response.is_none());
    let r = &c.rules[1];
    assert_eq!(
        r.rewrite.as_ref().and_then(|w| w.path.as_deref()),
        Some("/one")
    );
    assert_eq!(r.mirror.as_ref().map(|m| m.percent), Some(25.0));
    let rh = r.request_headers.as_ref().expect("headers");
    assert_eq!(rh.set.get("X-Set").map(String::as_str), Some("v"));
    assert_eq!(rh.remove, ["X-Gone"]);
    assert_eq!(r.backends[0].weight, 3);
    // One try: the smaller of request (2s) and backendRequest (1s).
    assert_eq!(r.timeout.map(|t| t.as_std().as_secs()), Some(1));
    assert!(r.retries.is_none());
}

#[test]
fn the_api_version_must_match_the_kinds_group() {
    let e =
        parse_err("apiVersion: trellis.dev/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec: {}\n");
    assert!(e.contains("apiVersion"), "{e}");
    assert!(e.contains("gateway.networking.k8s.io/v1"), "{e}");
    let e = parse_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Route\nmetadata: {name: x}\nspec: {service: a, rules: [{}]}\n",
    );
    assert!(e.contains("Trellis kind"), "{e}");
    let e = parse_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {name: x}\nspec: {rules: []}\n",
    );
    assert!(e.contains("v1alpha2"), "{e}");
}

#[test]
fn unknown_fields_and_bad_values_name_their_path() {
    let e = parse_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec:\n  rules:\n  - matches: [{path: {type: Exact, value: /a, extra: 1}}]\n",
    );
    assert!(e.contains("spec.rules[0].matches[0].path"), "{e}");
    let e = parse_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec:\n  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 404}}]\n",
    );
    assert!(
        e.contains("spec.rules[0].filters[0].requestRedirect.statusCode"),
        "{e}"
    );
    let e = parse_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x}\nspec:\n  rules:\n  - backendRefs: [{name: a}]\n",
    );
    assert!(e.contains("spec.rules[0].backendRefs[0].port"), "{e}");
    let e = parse_err(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  gatewayClassName: trellis\n  listeners: [{name: https, port: 443, protocol: HTTPS}]\n",
    );
    assert!(e.contains("spec.listeners[0].tls"), "{e}");
}

#[test]
fn status_is_dropped_on_parse_and_written_back_with_the_right_api_version() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: s}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo-v1, port: 8080}]}]
status:
  parents: []
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: t}
spec:
  parentRefs: [{name: gw, sectionName: tls}]
  hostnames: [secure.example.com]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: trellis
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - name: tls
    port: 443
    protocol: TLS
    tls: {mode: Passthrough}
    allowedRoutes: {kinds: [{kind: TLSRoute}]}
"#,
    );
    let Some(Resource::HTTPRoute(r)) = rs.iter().find(|r| r.kind() == "HTTPRoute") else {
        panic!("route")
    };
    assert!(r.status.is_none());
    let set = crate::ResourceSet {
        resources: rs.clone(),
    };
    let yaml = set.to_yaml();
    assert!(
        yaml.contains("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute"),
        "{yaml}"
    );
    let back = parse_documents("back.yaml", &yaml).expect("round trip");
    assert_eq!(back.resources, rs);
    let Some(gw) = rs.iter().find(|r| r.kind() == "Gateway") else {
        panic!("gateway")
    };
    let Resource::Gateway(g) = with_status(gw, &rs) else {
        panic!("kind")
    };
    let st = g.status.clone().expect("status");
    assert_eq!(st.listeners[1].attached_routes, 1, "the TLSRoute");
    assert_eq!(st.listeners[0].attached_routes, 0);
    let tls = tls_routes_for_gateway(
        rs.iter().filter_map(|r| match r {
            Resource::TLSRoute(t) => Some(&**t),
            _ => None,
        }),
        &g,
        "tls",
    );
    assert_eq!(tls.len(), 1);
    assert_eq!(tls[0].1, ["secure.example.com"]);
    assert!(tls_routes_for_gateway(std::iter::empty(), &g, "http").is_empty());
}

#[test]
fn gateway_rules_are_per_intersected_host() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: trellis
  listeners: [{name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  hostnames: [a.example.com, other.org]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
"#,
    );
    let Some(Resource::Gateway(g)) = rs.iter().find(|r| r.kind() == "Gateway") else {
        panic!("gateway")
    };
    let out = compile_for_gateway(rs.iter().filter_map(RouteRef::of), g, "http", |_, n| {
        n == "echo"
    });
    assert_eq!(out, compile_for_gateway_in(&rs, "default", "gw", "http"));
    let hosts: Vec<_> = out.by_host.keys().cloned().collect();
    assert_eq!(hosts, ["a.example.com"]);
    assert_eq!(
        out.by_host["a.example.com"].rules[0].backends[0].service,
        "echo"
    );
}

#[test]
fn consumer_routes_and_missing_parents_are_not_accepted() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: client-ns}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, namespace: default}
  - {group: "", kind: Service, name: nowhere}
  - {group: "", kind: Service, name: echo, namespace: client-ns}
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
"#,
    );
    let Some(route) = rs.iter().find_map(RouteRef::of) else {
        panic!("route")
    };
    let st = route_status(route, &rs);
    let reasons: Vec<&str> = st
        .parents
        .iter()
        .map(|p| p.conditions[0].reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        ["UnsupportedValue", "NoMatchingParent", "NoMatchingParent"]
    );
    // And nothing is compiled for the producer's service from a consumer namespace.
    assert!(compile_for_service_in(&rs, "default", "echo").is_empty());
}

#[test]
fn validate_and_apply_say_when_a_trellis_route_overrides() {
    let rs = parse(
        r#"
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: steer}
spec: {service: echo, rules: [{backends: [{service: echo-v1}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: portable}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo-v2, port: 8080}]}]
"#,
    );
    let notices = crate::notice::notices(&rs);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].kind, "HTTPRoute");
    assert!(notices[0].message.contains("\"steer\""), "{}", notices[0]);
}

#[test]
fn invalid_backends_keep_their_share_as_500() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: partial}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 8080, weight: 3}
    - {name: nowhere, port: 8080, weight: 1}
"#,
    );
    let c = compile_for_service_in(&rs, "default", "echo");
    let r = &c.rules[0];
    assert_eq!(r.backends.len(), 1);
    let d = r.direct_response.as_ref().expect("a share answered 500");
    assert_eq!((d.status, d.weight), (500, Some(1)));
    // A Trellis Route may say the same; without backends a weight means nothing.
    let e = parse_err(
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {name: x}\nspec: {service: a, rules: [{directResponse: {status: 500, weight: 1}}]}\n",
    );
    assert!(e.contains("spec.rules[0].directResponse.weight"), "{e}");
}

#[test]
fn a_parent_port_scopes_the_routes_rules() {
    let rs = parse(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-8080}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules: [{backendRefs: [{name: echo-v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: every-port}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{matches: [{path: {type: Exact, value: /x}}], backendRefs: [{name: echo-v2, port: 8080}]}]
"#,
    );
    let c = compile_for_service_in(&rs, "default", "echo");
    let by_name: Vec<(String, Vec<u16>)> = c
        .rules
        .iter()
        .map(|r| (r.name.clone().unwrap_or_default(), r.ports.clone()))
        .collect();
    assert_eq!(
        by_name,
        [
            ("every-port/0".to_string(), vec![]),
            ("on-8080/0".to_string(), vec![8080])
        ]
    );
}
