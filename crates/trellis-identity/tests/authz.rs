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

    // Deny rules only and no defaultAction: the rest is allowed.
    let deny_only = policies(
        r#"
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: open}
spec:
  service: reviews
  rules:
    - {name: no-delete, action: Deny, to: {methods: [DELETE]}}
"#,
    );
    let authz = Authorizer::for_service("reviews", &deny_only);
    run(
        &authz,
        &[
            case("default allow", None, "GET", "/", true, "open"),
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
    let mut two = deny_only.clone();
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

/// `defaultAction` as Istio users expect it: absent, a policy with ALLOW rules is an allow-list
/// (denies the rest) and one with only DENY rules a block-list (allows the rest); written, it
/// always wins.
#[test]
fn absent_default_action_follows_the_rules() {
    let policy = |name: &str, default: &str, rules: &str| {
        policies(&format!(
            "apiVersion: trellis.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n  service: reviews\n{default}  rules: {rules}\n"
        ))
    };
    let allow_web = r#"[{name: web, action: Allow, from: {principals: ["spiffe://cluster.local/ns/shop/sa/web"]}}]"#;
    let deny_delete = "[{name: no-delete, action: Deny, to: {methods: [DELETE]}}]";
    let both = r#"[{name: no-delete, action: Deny, to: {methods: [DELETE]}}, {name: web, action: Allow, from: {principals: ["spiffe://cluster.local/ns/shop/sa/web"]}}]"#;
    let cases: &[(&str, &str, &str, bool)] = &[
        // (policy, defaultAction line, rules, an unmatched request allowed?)
        ("allow-list", "", allow_web, false),
        ("allow-and-deny", "", both, false),
        ("deny-list", "", deny_delete, true),
        ("no-rules", "", "[]", true),
        (
            "explicit-allow",
            "  defaultAction: Allow\n",
            allow_web,
            true,
        ),
        (
            "explicit-allow-both",
            "  defaultAction: Allow\n",
            both,
            true,
        ),
        (
            "explicit-deny",
            "  defaultAction: Deny\n",
            deny_delete,
            false,
        ),
        (
            "explicit-deny-no-rules",
            "  defaultAction: Deny\n",
            "[]",
            false,
        ),
    ];
    for (name, default, rules, allowed) in cases {
        let ps = policy(name, default, rules);
        let authz = Authorizer::for_service("reviews", &ps);
        let d = authz.decide(&RequestAttrs {
            source: Some(OPS),
            method: "GET",
            path: "/",
            port: 8080,
            ..Default::default()
        });
        assert_eq!(d.allowed, *allowed, "{name}: {d}");
        assert_eq!(d.reason, DecisionReason::DefaultAction, "{name}: {d}");
        assert_eq!(d.decided_by(), *name, "{name}: {d}");
        // The same default decides an opaque TCP connection no rule matched; a deny rule on
        // methods matches every connection (see `tcp_connections`).
        let c = authz.decide_connection(Some(OPS), 8080);
        if rules.contains("no-delete") {
            assert_eq!(
                (c.allowed, c.decided_by()),
                (false, format!("{name}/no-delete"))
            );
        } else {
            assert_eq!(c, d, "{name}: connection");
        }
        // Rules still decide first, whatever the default.
        if rules.contains("web") {
            let d = authz.decide(&RequestAttrs {
                source: Some(WEB),
                method: "GET",
                path: "/",
                port: 8080,
                ..Default::default()
            });
            assert_eq!((d.allowed, d.decided_by()), (true, format!("{name}/web")));
        }
        if rules.contains("no-delete") {
            let d = authz.decide(&RequestAttrs {
                source: Some(WEB),
                method: "DELETE",
                path: "/",
                port: 8080,
                ..Default::default()
            });
            assert_eq!(
                (d.allowed, d.decided_by()),
                (false, format!("{name}/no-delete"))
            );
        }
    }
    // An allow-list next to a block-list: the allow-list's implicit Deny is the default.
    let mut two = policy("deny-list", "", deny_delete);
    two.extend(policy("allow-list", "", allow_web));
    let authz = Authorizer::for_service("reviews", &two);
    run(
        &authz,
        &[
            case("unmatched", Some(OPS), "GET", "/", false, "allow-list"),
            case("allowed", Some(WEB), "GET", "/", true, "allow-list/web"),
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

/// `(source, port, allowed, decided by)` for `decide_connection`.
type Conn = (Option<&'static str>, u16, bool, &'static str);

#[track_caller]
fn connections(authz: &Authorizer, cases: &[Conn]) {
    for (source, port, allowed, by) in cases {
        let d = authz.decide_connection(*source, *port);
        assert_eq!(
            (d.allowed, d.decided_by().as_str()),
            (*allowed, *by),
            "{source:?} on {port}: {d}"
        );
    }
}

fn tcp_policy(name: &str, spec: &str) -> Authorizer {
    Authorizer::for_service(
        "db",
        &policies(&format!(
            "apiVersion: trellis.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n  service: db\n{spec}"
        )),
    )
}

/// Opaque TCP: only the peer's identity and the port are known. Allow rules that need a
/// request never match; deny rules match as if their request conditions held (Istio).
#[test]
fn tcp_connections() {
    // No policy: allowed.
    let d = Authorizer::for_service("db", &[]).decide_connection(Some(WEB), 5432);
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoPolicy);

    // Allow by principal allows TCP from that principal; anyone else falls to the implicit
    // Deny of an allow-list.
    let authz = tcp_policy(
        "by-principal",
        "  rules:\n    - {name: web, action: Allow, from: {principals: [\"spiffe://cluster.local/ns/shop/sa/web\"]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(WEB), 5432, true, "by-principal/web"),
            (Some(OPS), 5432, false, "by-principal"),
            (None, 5432, false, "by-principal"),
        ],
    );
    let d = authz.decide_connection(Some(WEB), 5432);
    assert_eq!(
        (d.policy.as_str(), d.rule.as_deref(), d.reason),
        ("by-principal", Some("web"), DecisionReason::AllowRule)
    );

    // Allow with paths (or methods) never allows TCP, even from the right principal.
    let authz = tcp_policy(
        "paths",
        "  rules:\n    - {name: web-api, action: Allow, from: {principals: [\"spiffe://cluster.local/ns/shop/sa/web\"]}, to: {paths: [\"/api/*\"]}}\n    - {name: gets, action: Allow, to: {methods: [GET]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(WEB), 5432, false, "paths"),
            (None, 5432, false, "paths"),
        ],
    );
    // ... and with defaultAction: Allow it is the default that allows.
    let authz = tcp_policy(
        "paths-open",
        "  defaultAction: Allow\n  rules:\n    - {name: web-api, action: Allow, to: {paths: [\"/api/*\"]}}\n",
    );
    connections(&authz, &[(Some(WEB), 5432, true, "paths-open")]);
    let d = authz.decide_connection(Some(WEB), 5432);
    assert_eq!(d.reason, DecisionReason::DefaultAction);

    // Deny with paths denies every TCP connection, plaintext included.
    let authz = tcp_policy(
        "no-admin",
        "  rules:\n    - {name: admin, action: Deny, to: {paths: [\"/admin\"]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(WEB), 5432, false, "no-admin/admin"),
            (None, 5432, false, "no-admin/admin"),
        ],
    );
    // The same policy lets HTTP requests to other paths through (deny-only: default Allow).
    let d = authz.decide(&RequestAttrs {
        source: Some(WEB),
        method: "GET",
        path: "/x",
        port: 5432,
        ..Default::default()
    });
    assert!(d.allowed, "{d}");

    // Deny with paths and a principal denies TCP from that principal only.
    let authz = tcp_policy(
        "no-ops-admin",
        "  rules:\n    - {name: ops-admin, action: Deny, from: {principals: [\"spiffe://cluster.local/ns/ops/*\"]}, to: {paths: [\"/admin\"]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(OPS), 5432, false, "no-ops-admin/ops-admin"),
            (Some(WEB), 5432, true, "no-ops-admin"),
            (None, 5432, true, "no-ops-admin"),
        ],
    );
    // By namespace, the same.
    let authz = tcp_policy(
        "no-ops",
        "  rules:\n    - {name: ops, action: Deny, from: {namespaces: [ops]}, to: {methods: [POST]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(OPS), 5432, false, "no-ops/ops"),
            (Some(WEB), 5432, true, "no-ops"),
        ],
    );
}

#[test]
fn tcp_connections_and_jwt_conditions() {
    // requestPrincipals and `when` need a request: an allow rule with them never matches...
    let authz = tcp_policy(
        "jwt",
        "  rules:\n    - {name: token, action: Allow, from: {requestPrincipals: [\"*\"]}}\n    - {name: readers, action: Allow, when: [{claim: groups, values: [readers]}]}\n    - {name: web-token, action: Allow, from: {principals: [\"spiffe://cluster.local/ns/shop/sa/web\"], requestPrincipals: [\"*\"]}}\n",
    );
    connections(
        &authz,
        &[(Some(WEB), 5432, false, "jwt"), (None, 5432, false, "jwt")],
    );
    // ... a deny rule with them matches as if they held.
    let authz = tcp_policy(
        "jwt-deny",
        "  rules:\n    - {name: interns, action: Deny, from: {principals: [\"spiffe://cluster.local/ns/team-a/*\"]}, when: [{claim: role, values: [intern]}]}\n    - {name: tokens, action: Deny, from: {namespaces: [ops], requestPrincipals: [\"https://auth.example/*\"]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(TEAM), 5432, false, "jwt-deny/interns"),
            (Some(OPS), 5432, false, "jwt-deny/tokens"),
            (Some(WEB), 5432, true, "jwt-deny"),
        ],
    );
    // For HTTP requests, the same rules still need a token.
    let d = authz.decide(&RequestAttrs {
        source: Some(TEAM),
        method: "GET",
        path: "/",
        port: 5432,
        ..Default::default()
    });
    assert!(d.allowed, "{d}");
}

#[test]
fn tcp_connections_and_ports() {
    let authz = tcp_policy(
        "ports",
        "  rules:\n    - {name: no-ssh, action: Deny, to: {ports: [22]}}\n    - {name: web-db, action: Allow, from: {principals: [\"spiffe://cluster.local/ns/shop/sa/web\"]}, to: {ports: [5432]}}\n    - {name: any-metrics, action: Allow, to: {ports: [9090]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(WEB), 22, false, "ports/no-ssh"),
            (Some(WEB), 5432, true, "ports/web-db"),
            (Some(OPS), 5432, false, "ports"),
            (Some(WEB), 6000, false, "ports"),
            (None, 9090, true, "ports/any-metrics"),
        ],
    );
    // A deny rule with paths on one port denies TCP on that port only.
    let authz = tcp_policy(
        "admin-port",
        "  rules:\n    - {name: admin, action: Deny, to: {ports: [8443], paths: [\"/admin\"]}}\n",
    );
    connections(
        &authz,
        &[
            (Some(WEB), 8443, false, "admin-port/admin"),
            (Some(WEB), 8080, true, "admin-port"),
        ],
    );
}
