//! `trellis validate` and `trellis apply` say so when an AuthorizationPolicy denies by default
//! only because it has ALLOW rules and no `defaultAction` (Istio's semantics), and the policy is
//! stored as written.
mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const NOTICE: &str = "notice: AuthorizationPolicy default/reviews-policy: no defaultAction and it has ALLOW rules, so requests no rule allows are denied (set defaultAction: Allow to allow them)";

const POLICIES: &str = r#"apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: reviews-policy}
spec:
  service: reviews
  rules:
    - {name: no-admin, action: Deny, to: {paths: ["/admin*"]}}
    - {name: frontend, action: Allow, from: {principals: ["spiffe://cluster.local/ns/default/sa/frontend"]}}
---
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-only}
spec:
  service: ratings
  rules: [{action: Deny, to: {methods: [DELETE]}}]
---
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: explicit}
spec:
  service: details
  defaultAction: Allow
  rules: [{action: Allow, from: {namespaces: [default]}}]
"#;

/// Runs the CLI against `control` (empty: no control plane) with the join token.
fn trellis(control: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("TRELLIS_CONTROL", control)
        .env("TRELLIS_TOKEN", TOKEN)
        .env_remove("TRELLIS_TOKEN_FILE")
        .output()
        .expect("run trellis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn notices(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("notice: "))
        .collect()
}

#[tokio::test]
async fn validate_and_apply_say_when_an_allow_list_denies_the_rest() {
    let dir = tempdir("notices");
    let file = dir.join("policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    let f = file.to_str().unwrap();

    let (ok, out, err) = trellis("", &["validate", f]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{f}: ok (3 resources)"));
    assert_eq!(notices(&err), [NOTICE], "{err}");

    let addr = free_addr();
    let control = format!("http://{addr}");
    let _cp = Proc::spawn(
        &dir,
        "control",
        &[
            "control".into(),
            format!("--listen={addr}"),
            format!("--data-dir={}", dir.join("data").display()),
        ],
    );
    let mut up = false;
    for _ in 0..400 {
        if let Ok((200, _)) = get_status(addr, "/api/v1/health").await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "control plane never answered");

    let (ok, out, err) = trellis(&control, &["apply", "-f", f]);
    assert!(ok, "{err}");
    assert!(
        out.contains("AuthorizationPolicy/default/reviews-policy created"),
        "{out}"
    );
    assert_eq!(notices(&err), [NOTICE], "{err}");
    // Said again on every apply: it stays true.
    let (ok, out, err) = trellis(&control, &["apply", "-f", f]);
    assert!(ok, "{err}");
    assert!(out.contains("reviews-policy unchanged"), "{out}");
    assert_eq!(notices(&err), [NOTICE], "{err}");

    // Stored as written: the default is not filled in.
    let (ok, out, err) = trellis(
        &control,
        &["get", "authorizationpolicy", "reviews-policy", "-o", "yaml"],
    );
    assert!(ok, "{err}");
    assert!(!out.contains("defaultAction"), "{out}");
    let (_, out, _) = trellis(
        &control,
        &["get", "authorizationpolicy", "explicit", "-o", "yaml"],
    );
    assert!(out.contains("defaultAction: Allow"), "{out}");

    // A manifest refused for a limit names it, and the CLI refuses it before sending.
    let hostile = dir.join("hostile.yaml");
    std::fs::write(&hostile, "[".repeat(100_000)).unwrap();
    let (ok, _, err) = trellis(&control, &["apply", "-f", hostile.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("exceeds limit max-depth"), "{err}");
    let (ok, _, err) = trellis("", &["validate", hostile.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("hostile.yaml:1: document 1: exceeds limit max-depth"),
        "{err}"
    );
}
