//! `AuthorizationPolicy.spec.defaultAction`: optional, absent stays absent on a round trip, and
//! a policy that denies only because it has ALLOW rules gets a notice.
use trellis_api::security::AuthzAction;
use trellis_api::{notices, parse_documents, Resource};

fn policy(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n  service: reviews\n{extra}"
    )
}

const ALLOW: &str = "  rules: [{action: Allow, from: {namespaces: [default]}}]\n";
const DENY: &str = "  rules: [{action: Deny, to: {paths: [/admin]}}]\n";

#[test]
fn effective_default_action() {
    let cases = [
        ("", ALLOW, None, AuthzAction::Deny),
        ("", DENY, None, AuthzAction::Allow),
        ("", "", None, AuthzAction::Allow),
        (
            "  defaultAction: Allow\n",
            ALLOW,
            Some(AuthzAction::Allow),
            AuthzAction::Allow,
        ),
        (
            "  defaultAction: Deny\n",
            DENY,
            Some(AuthzAction::Deny),
            AuthzAction::Deny,
        ),
        (
            "  defaultAction: Deny\n",
            "",
            Some(AuthzAction::Deny),
            AuthzAction::Deny,
        ),
    ];
    for (default, rules, written, effective) in cases {
        let text = policy("p", &format!("{default}{rules}"));
        let set = parse_documents("p.yaml", &text).unwrap();
        let p = set.authorization_policies().next().unwrap();
        assert_eq!(p.spec.default_action, written, "{text}");
        assert_eq!(p.spec.effective_default_action(), effective, "{text}");
        // Absent stays absent, written stays written.
        let yaml = set.to_yaml();
        assert_eq!(yaml.contains("defaultAction"), written.is_some(), "{yaml}");
        assert_eq!(parse_documents("again.yaml", &yaml).unwrap(), set);
        let json = serde_json::to_value(&set.resources[0]).unwrap();
        assert_eq!(
            json["spec"].get("defaultAction").is_some(),
            written.is_some()
        );
    }
}

#[test]
fn notice_for_each_implicit_deny() {
    let text = [
        policy("reviews-policy", ALLOW),
        policy("deny-only", DENY),
        policy("explicit", &format!("  defaultAction: Deny\n{ALLOW}")),
        policy(
            "explicit-allow",
            &format!("  defaultAction: Allow\n{ALLOW}"),
        ),
        policy("shop-policy, namespace: shop", ALLOW),
    ]
    .join("---\n");
    let set = parse_documents("p.yaml", &text).unwrap();
    let shown: Vec<String> = set.notices().iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "AuthorizationPolicy default/reviews-policy: no defaultAction and it has ALLOW rules, so requests no rule allows are denied (set defaultAction: Allow to allow them)",
            "AuthorizationPolicy shop/shop-policy: no defaultAction and it has ALLOW rules, so requests no rule allows are denied (set defaultAction: Allow to allow them)",
        ]
    );
    let n = &notices(&set.resources)[0];
    assert_eq!(
        (n.kind.as_str(), n.namespace.as_str(), n.name.as_str()),
        ("AuthorizationPolicy", "default", "reviews-policy")
    );
    // Other kinds never get one.
    assert!(notices(&[Resource::Service(trellis_api::Service {
        metadata: trellis_api::ObjectMeta::new("svc"),
        spec: serde_json::from_value(serde_json::json!({"ports": [{"port": 80}]})).unwrap(),
    })])
    .is_empty());
}
