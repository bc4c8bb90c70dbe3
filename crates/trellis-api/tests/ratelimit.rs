//! `rateLimit` on Route rules and the `RateLimitPolicy` kind: what parses, what is refused and
//! at which field, and that nothing of a refused source is kept.
use trellis_api::ratelimit::RateLimitMode;
use trellis_api::{parse_documents, ConfigError};

fn route(limit: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: web}}\nspec:\n  service: web\n  rules:\n    - name: all\n      rateLimit: {limit}\n"
    )
}

fn policy(spec: &str) -> String {
    format!("apiVersion: trellis.dev/v1\nkind: RateLimitPolicy\nmetadata: {{name: web-limit}}\nspec: {spec}\n")
}

#[track_caller]
fn refused(text: &str, path: &str, fragment: &str) -> ConfigError {
    let e = parse_documents("t.yaml", text).expect_err("refused");
    assert!(
        e.errors
            .iter()
            .any(|f| f.path == path && f.message.contains(fragment)),
        "want {path}: …{fragment}…, got {e}"
    );
    e
}

#[test]
fn a_route_limit_parses_with_defaults() {
    let set = parse_documents("t.yaml", &route("{requestsPerSecond: 20, burst: 5}")).unwrap();
    let l = set.routes().next().unwrap().spec.rules[0]
        .rate_limit
        .unwrap();
    assert_eq!((l.requests_per_second, l.effective_burst()), (20, 5));
    assert_eq!(l.mode, RateLimitMode::Enforce);
    let set = parse_documents("t.yaml", &route("{requestsPerSecond: 7, mode: Shadow}")).unwrap();
    let l = set.routes().next().unwrap().spec.rules[0]
        .rate_limit
        .unwrap();
    assert_eq!(
        l.effective_burst(),
        7,
        "burst defaults to one second's worth"
    );
    assert_eq!(l.mode, RateLimitMode::Shadow);
    // Written back, it reads the same.
    let again = parse_documents("t.yaml", &set.to_yaml()).unwrap();
    assert_eq!(again, set);
}

#[test]
fn bad_route_limits_name_their_field() {
    let at = "spec.rules[0].rateLimit";
    refused(
        &route("{requestsPerSecond: 0}"),
        &format!("{at}.requestsPerSecond"),
        "must be 1..=",
    );
    refused(
        &route("{requestsPerSecond: 5, burst: 0}"),
        &format!("{at}.burst"),
        "must be 1..=",
    );
    refused(
        &route("{requestsPerSecond: 2000000}"),
        &format!("{at}.requestsPerSecond"),
        "1..=1000000",
    );
    refused(
        &route("{requestsPerSecond: 5, mode: Sometimes}"),
        &format!("{at}.mode"),
        "unknown variant",
    );
    refused(
        &route("{requestsPerSecond: -1}"),
        &format!("{at}.requestsPerSecond"),
        "",
    );
    refused(
        &route("{requestsPerSecond: 5, brust: 3}"),
        &format!("{at}.brust"),
        "unknown field `brust`",
    );
}

#[test]
fn a_rate_limit_policy_parses() {
    let text = policy(
        "{service: web, mode: Shadow, total: {requestsPerSecond: 100, burst: 20}, identity: {requestsPerSecond: 10}, overrides: [{identities: ['spiffe://cluster.local/ns/default/sa/batch'], requestsPerSecond: 50}]}",
    );
    let set = parse_documents("t.yaml", &text).unwrap();
    let p = set.rate_limit_policies().next().unwrap();
    assert_eq!(p.spec.service, "web");
    assert_eq!(p.spec.total.unwrap().effective_burst(), 20);
    assert_eq!(p.spec.identity.unwrap().effective_burst(), 10);
    assert_eq!(p.spec.overrides[0].requests_per_second, 50);
    assert_eq!(p.spec.mode, RateLimitMode::Shadow);
    assert_eq!(parse_documents("t.yaml", &set.to_yaml()).unwrap(), set);
}

#[test]
fn bad_policies_name_their_field_and_nothing_is_kept() {
    refused(
        &policy("{service: web}"),
        "spec",
        "needs `total`, `identity` or `overrides`",
    );
    refused(
        &policy("{service: web, total: {requestsPerSecond: 0}}"),
        "spec.total.requestsPerSecond",
        "must be 1..=",
    );
    refused(
        &policy("{service: web, identity: {requestsPerSecond: 3, burst: 0}}"),
        "spec.identity.burst",
        "must be 1..=",
    );
    refused(
        &policy("{service: web, overrides: [{identities: [], requestsPerSecond: 3}]}"),
        "spec.overrides[0].identities",
        "at least one",
    );
    refused(
        &policy("{service: web, overrides: [{identities: [batch], requestsPerSecond: 3}]}"),
        "spec.overrides[0].identities[0]",
        "not a SPIFFE ID",
    );
    refused(
        &policy("{service: web, overrides: [{identities: ['spiffe://a/b'], requestsPerSecond: 3}, {identities: ['spiffe://a/b'], requestsPerSecond: 4}]}"),
        "spec.overrides[1].identities[0]",
        "another override",
    );
    refused(
        &policy("{service: Web, total: {requestsPerSecond: 1}}"),
        "spec.service",
        "",
    );
    refused(
        &policy("{service: web, mode: Off, total: {requestsPerSecond: 1}}"),
        "spec.mode",
        "unknown variant",
    );
    // One bad document refuses the source: the good route beside it is not kept either.
    let text = format!(
        "{}---\n{}",
        route("{requestsPerSecond: 5}"),
        policy("{service: web, total: {requestsPerSecond: 0}}")
    );
    let e = refused(&text, "spec.total.requestsPerSecond", "must be 1..=");
    assert_eq!(e.errors.len(), 1, "{e}");
}
