//! AuthorizationPolicy decisions, table-driven, from policies written as users write them.
use serde_json::{json, Value};
use trellis_identity::authz::{Authorizer, DecisionReason, RequestAttrs};

fn policies(yaml: &str) -> Vec<trellis_api::AuthorizationPolicy> {
    let set = trellis_api::parse_documents("test.yaml", yaml).expect("valid policies");
    set.authorization_policies().cloned().collect()
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const OPS: &str = "spiffe://cluster.local/ns/ops/sa/debugger";
const TEAM: &str = "spiffe://cluster.local/ns/team-a/sa/batch";

struct Case {
    name: &'static str,
    source: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    port: u16,
    jwt: Option<(&'static str, Value)>,
    allowed: bool,
    by: &'static str,
}

fn case(
    name: &'static str,
    source: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    allowed: bool,
    by: &'static str,
) -> Case {
    Case {
        name,
        source,
        method,
        path,
        port: 8080,
        jwt: None,
        allowed,
        by,
    }
}

fn run(authz: &Authorizer, cases: &[Case]) {
    for c in cases {
        let (rp, claims) = match &c.jwt {
            Some((rp, claims)) => (Some(*rp), Some(claims)),
            None => (None, None),
        };
        let d = authz.decide(&RequestAttrs {
            source: c.source,
            method: c.method,
            path: c.path,
            port: c.port,
            request_principal: rp,
            claims,
        });
        assert_eq!(d.allowed, c.allowed, "{}: {d}", c.name);
        assert_eq!(d.decided_by(), c.by, "{}: {d}", c.name);
    }
}

const SHOP: &str = r#"
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: shop}
spec:
  service: reviews
  defaultAction: Deny
  rules:
    - name: block-admin
      action: Deny
      to: {paths: ["/admin/*"]}
    - name: frontend-reads
      action: Allow
      from:
        principals: ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/ops/*"]
      to: {methods: [GET, HEAD], paths: ["/api/*", /healthz], ports: [8080]}
    - action: Allow
      from: {namespaces: ["team-*"]}
      to: {methods: [POST], paths: [/batch]}
"#;

#[test]
fn deny_first_then_allow_then_the_default() {
    let authz = Authorizer::for_service("reviews", &policies(SHOP));
    run(
        &authz,
        &[
            case(
                "allowed read",
                Some(WEB),
                "GET",
                "/api/items",
                true,
                "reviews/frontend-reads",
            ),
            case(
                "exact path",
                Some(WEB),
                "HEAD",
                "/healthz",
                true,
                "reviews/frontend-reads",
            ),
            case(
                "principal prefix",
                Some(OPS),
                "GET",
                "/api/x",
                true,
                "reviews/frontend-reads",
            ),
            case(
                "deny wins over allow",
                Some(WEB),
                "GET",
                "/admin/users",
                false,
                "reviews/block-admin",
            ),
            case(
                "deny after normalization",
                Some(WEB),
                "GET",
                "/api/../admin/users",
                false,
                "reviews/block-admin",
            ),
            case(
                "escaped dots",
                Some(WEB),
                "GET",
                "/api/%2e%2e/admin/x",
                false,
                "reviews/block-admin",
            ),
            case(
                "query ignored",
                Some(WEB),
                "GET",
                "/api/items?debug=1",
                true,
                "reviews/frontend-reads",
            ),
            case(
                "method not allowed",
                Some(WEB),
                "DELETE",
                "/api/items",
                false,
                "reviews",
            ),
            case(
                "method is case-sensitive",
                Some(WEB),
                "get",
                "/api/items",
                false,
                "reviews",
            ),
            case(
                "path not allowed",
                Some(WEB),
                "GET",
                "/other",
                false,
                "reviews",
            ),
            case(
                "prefix is not a sibling",
                Some(WEB),
                "GET",
                "/apix",
                false,
                "reviews",
            ),
            case(
                "unknown principal",
                Some("spiffe://cluster.local/ns/shop/sa/mallory"),
                "GET",
                "/api/x",
                false,
                "reviews",
            ),
            case(
                "plaintext has no principal",
                None,
                "GET",
                "/api/x",
                false,
                "reviews",
            ),
            case(
                "namespace wildcard",
                Some(TEAM),
                "POST",
                "/batch",
                true,
                "reviews/rules[2]",
            ),
            case(
                "namespace wildcard, wrong method",
                Some(TEAM),
                "GET",
                "/batch",
                false,
                "reviews",
            ),
            case(
                "raw non-SPIFFE principal has no namespace",
                Some("team-a"),
                "POST",
                "/batch",
                false,
                "reviews",
            ),
        ],
    );
    let mut wrong_port = case(
        "port not allowed",
        Some(WEB),
        "GET",
        "/api/x",
        false,
        "reviews",
    );
    wrong_port.port = 9090;
    run(&authz, &[wrong_port]);
    // Policies of other services do not apply.
    assert!(Authorizer::for_service("ratings", &policies(SHOP)).is_empty());
}

#[test]
fn default_actions_and_no_policy() {
    let none = Authorizer::for_service("reviews", &[]);
    let d = none.decide(&RequestAttrs {
        method: "GET",
        path: "/",
        ..Default::default()
    });
    assert!(d.allowed);
    assert_eq!(
        (d.policy.as_str(), d.reason),
        ("default", DecisionReason::NoPolicy)
    );

    let allow_default = policies(
        r#"
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: open}
spec:
  service: reviews
  rules:
    - {name: no-delete, action: Deny, to: {methods: [DELETE]}}
    - {name: web, action: Allow, from: {principals: ["spiffe://cluster.local/ns/shop/sa/web"]}}
"#,
    );
    let authz = Authorizer::for_service("reviews", &allow_default);
    run(
        &authz,
        &[
            case("default allow", None, "GET", "/", true, "open"),
            case("matching allow", Some(WEB), "GET", "/", true, "open/web"),
            case(
                "deny rule",
                Some(WEB),
                "DELETE",
                "/",
                false,
                "open/no-delete",
            ),
        ],
    );

    // Two policies: any Deny default wins when nothing matched; an allow of either admits.
    let mut two = allow_default.clone();
    two.extend(policies(
        r#"
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: strict}
spec:
  service: reviews
  defaultAction: Deny
  rules:
    - {name: ops, action: Allow, from: {namespaces: [ops]}}
"#,
    ));
    let authz = Authorizer::for_service("reviews", &two);
    run(
        &authz,
        &[
            case("strict default", None, "GET", "/", false, "strict"),
            case(
                "allowed by the open policy",
                Some(WEB),
                "GET",
                "/",
                true,
                "open/web",
            ),
            case(
                "allowed by the strict policy",
                Some(OPS),
                "GET",
                "/",
                true,
                "strict/ops",
            ),
            case(
                "deny of the other policy",
                Some(OPS),
                "DELETE",
                "/",
                false,
                "open/no-delete",
            ),
        ],
    );
}

#[test]
fn wildcards_request_principals_and_claims() {
    let authz = Authorizer::for_service(
        "reviews",
        &policies(
            r#"
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: api}
spec:
  service: reviews
  defaultAction: Deny
  rules:
    - name: no-interns
      action: Deny
      when: [{claim: role, values: [intern]}]
    - name: any-mesh-peer-health
      action: Allow
      from: {principals: ["*"]}
      to: {paths: [/health]}
    - name: readers
      action: Allow
      from: {requestPrincipals: ["https://auth.example/*"]}
      when:
        - {claim: groups, values: [readers, admins]}
        - {claim: org.tier, values: ["gold*"]}
    - name: scoped
      action: Allow
      from: {requestPrincipals: ["*"]}
      when: [{claim: scope, values: [write]}]
    - name: istio-style-principal
      action: Allow
      from: {principals: ["cluster.local/ns/legacy/*"]}
"#,
        ),
    );
    let rp = "https://auth.example/alice";
    let jwt = |claims: Value| Some((rp, claims));
    let mut cases = vec![
        case(
            "any authenticated peer",
            Some(WEB),
            "GET",
            "/health",
            true,
            "api/any-mesh-peer-health",
        ),
        case("* needs a principal", None, "GET", "/health", false, "api"),
        case(
            "no token, no claims",
            Some(WEB),
            "GET",
            "/data",
            false,
            "api",
        ),
        case(
            "istio-style principal",
            Some("spiffe://cluster.local/ns/legacy/sa/old"),
            "GET",
            "/data",
            true,
            "api/istio-style-principal",
        ),
    ];
    let with = |name, claims: Value, allowed, by| Case {
        jwt: jwt(claims),
        ..case(name, None, "GET", "/data", allowed, by)
    };
    cases.push(with(
        "array claim and nested claim",
        json!({"groups": ["x", "readers"], "org": {"tier": "gold-plus"}}),
        true,
        "api/readers",
    ));
    cases.push(with(
        "string claim",
        json!({"groups": "admins", "org": {"tier": "gold"}}),
        true,
        "api/readers",
    ));
    cases.push(with(
        "nested claim mismatch",
        json!({"groups": ["readers"], "org": {"tier": "silver"}}),
        false,
        "api",
    ));
    cases.push(with(
        "missing claim",
        json!({"groups": ["readers"]}),
        false,
        "api",
    ));
    cases.push(with(
        "deny on claim",
        json!({"groups": ["readers"], "org": {"tier": "gold"}, "role": "intern"}),
        false,
        "api/no-interns",
    ));
    cases.push(with(
        "space-separated scope",
        json!({"scope": "read write"}),
        true,
        "api/scoped",
    ));
    cases.push(with(
        "numbers compare as text",
        json!({"groups": [7], "org": {"tier": "gold"}}),
        false,
        "api",
    ));
    let other_issuer = Case {
        jwt: Some((
            "https://other.example/alice",
            json!({"groups": ["readers"], "org": {"tier": "gold"}}),
        )),
        ..case(
            "request principal prefix",
            None,
            "GET",
            "/data",
            false,
            "api",
        )
    };
    cases.push(other_issuer);
    run(&authz, &cases);
}

#[test]
fn decisions_render_for_logs() {
    let authz = Authorizer::for_service("reviews", &policies(SHOP));
    let d = authz.decide(&RequestAttrs {
        source: Some(WEB),
        method: "GET",
        path: "/admin/x",
        port: 8080,
        ..Default::default()
    });
    assert_eq!(d.to_string(), "denied by reviews/block-admin (deny-rule)");
}
