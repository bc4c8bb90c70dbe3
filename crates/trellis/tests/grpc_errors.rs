//! A gRPC client nobody here wrote (Python's `grpcio`, installed by `scripts/test.sh`) calls
//! through a caller sidecar: when the sidecar itself has to answer (no route, no endpoint), the
//! client sees a gRPC status and the sidecar's reason, not an HTTP-shaped error such as
//! "Received http2 header with status: 404"; and the caller's metrics classify gRPC answers by
//! `grpc-status` (an app's trailers-only `UNAVAILABLE` is a failure though its HTTP status is
//! 200).
mod common;

use common::*;
use std::path::Path;

/// A tiny grpcio client: one unary call with raw bytes (no generated code needed), printing the
/// outcome as JSON: the status code's name, its details, and the trailing metadata.
const CLIENT: &str = r#"
import json, sys
import grpc

target, authority, method = sys.argv[1], sys.argv[2], sys.argv[3]
raw = lambda b: b
channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
call = channel.unary_unary(method, request_serializer=raw, response_deserializer=raw)
try:
    reply, rpc = call.with_call(b"\x01\x02hello", timeout=10)
    out = {"code": "OK", "details": "", "reply": reply.hex(),
           "trailing": dict(rpc.trailing_metadata() or [])}
except grpc.RpcError as e:
    out = {"code": e.code().name, "details": e.details() or "",
           "trailing": dict(e.trailing_metadata() or [])}
print(json.dumps(out))
"#;

/// Runs the client; panics, naming what is missing, when Python or grpcio is not installed.
fn grpcio_call(
    dir: &Path,
    target: std::net::SocketAddr,
    authority: &str,
    method: &str,
) -> serde_json::Value {
    let script = dir.join("grpc_client.py");
    std::fs::write(&script, CLIENT).expect("write client");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([&target.to_string(), authority, method])
        .output()
        .expect("python3 is not installed: run scripts/test.sh, which installs grpcio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the grpcio client failed (is grpcio installed? scripts/test.sh installs it): {stderr}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("client output ({e}): {text} {stderr}"))
}

fn grpc_service(name: &str) -> String {
    service(name, "grpc")
}

#[tokio::test]
async fn grpc_callers_get_grpc_statuses_from_the_sidecar_and_metrics_count_them() {
    let dir = tempdir("grpc-errors");
    let config = dir.join("mesh.yaml");
    let (echo, flaky) = (Ports::free(), Ports::free());
    let mut text = String::new();
    text.push_str(&grpc_service("echo"));
    text.push_str(&workload("echo-0", "echo", "v1", echo.inbound));
    text.push_str(&grpc_service("flaky"));
    text.push_str(&workload("flaky-0", "flaky", "v1", flaky.inbound));
    // A service with no instance at all.
    text.push_str(&grpc_service("empty"));
    // echo serves only the demo.Echo service; any other method has no route.
    text.push_str(
        "---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: echo}
spec:
  service: echo
  rules:
    - name: echo-service
      matches: [{path: {type: PathPrefix, value: /demo.Echo}}]
",
    );
    write_config(&config, &text);
    let _echo = start_instance(&dir, &config, "echo", "echo-0", &[], echo);
    let _flaky = start_instance(
        &dir,
        &config,
        "flaky",
        "flaky-0",
        &["--error-rate=1.0"],
        flaky,
    );
    let caller = start_caller(&dir, &config, &[]);
    for i in [&_echo, &_flaky] {
        wait_ready(i.admin).await;
        wait_listening(i.app_addr).await;
    }
    wait_ready(caller.admin).await;
    let out = caller.outbound;

    // A working call first: the app's own answer, status in the trailers.
    let ok = grpcio_call(&dir, out, "echo", "/demo.Echo/Say");
    println!("echo: {ok}");
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["reply"], "010268656c6c6f");

    // No service in the mesh answers to this authority.
    let a = grpcio_call(&dir, out, "nosuch", "/demo.Echo/Say");
    println!("no such service: {a}");
    assert_eq!(a["code"], "UNIMPLEMENTED", "{a}");
    let details = a["details"].as_str().unwrap_or("");
    assert!(details.starts_with("no-route: "), "{a}");
    assert!(details.contains("nosuch"), "{a}");
    assert!(!details.contains("http2 header"), "not HTTP-shaped: {a}");
    assert_eq!(a["trailing"]["trellis-error"], "no-route", "{a}");

    // The service exists but no rule matches the method; the path's `%` survives the
    // percent-encoding of grpc-message and comes back to the client as written.
    let a = grpcio_call(&dir, out, "echo", "/other.Svc/Do%20It");
    println!("no rule: {a}");
    assert_eq!(a["code"], "UNIMPLEMENTED", "{a}");
    assert!(
        a["details"]
            .as_str()
            .unwrap_or("")
            .contains("no rule of service echo matches POST /other.Svc/Do%20It"),
        "{a}"
    );

    // A service with no endpoint at all.
    let a = grpcio_call(&dir, out, "empty", "/demo.Echo/Say");
    println!("no endpoints: {a}");
    assert_eq!(a["code"], "UNAVAILABLE", "{a}");
    assert!(
        a["details"]
            .as_str()
            .unwrap_or("")
            .starts_with("no-healthy-endpoints: "),
        "{a}"
    );
    assert_eq!(
        a["trailing"]["trellis-error"], "no-healthy-endpoints",
        "{a}"
    );

    // The app itself answers UNAVAILABLE (trailers-only, HTTP 200): passed through as is.
    let a = grpcio_call(&dir, out, "flaky", "/demo.Echo/Say");
    println!("app error: {a}");
    assert_eq!(a["code"], "UNAVAILABLE", "{a}");
    assert!(a["trailing"].get("trellis-error").is_none(), "{a}");

    // The caller's metrics: every one of these is HTTP 200, classified by grpc-status.
    let (status, text) = get_status(caller.admin, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let scrape = parse_metrics(&text);
    let n = |labels: &[(&str, &str)]| sample(&scrape, "trellis_requests_total", labels);
    for line in text
        .lines()
        .filter(|l| l.starts_with("trellis_requests_total"))
    {
        println!("{line}");
    }
    assert_eq!(
        n(&[
            ("service", "echo"),
            ("code", "200"),
            ("grpc_status", "0"),
            ("classification", "success")
        ]),
        1.0
    );
    assert_eq!(
        n(&[
            ("service", "echo"),
            ("code", "200"),
            ("grpc_status", "12"),
            ("reason", "no-route"),
            ("classification", "failure")
        ]),
        1.0
    );
    assert_eq!(
        n(&[
            ("code", "200"),
            ("grpc_status", "12"),
            ("reason", "no-route")
        ]),
        2.0,
        "both no-route answers"
    );
    assert_eq!(
        n(&[
            ("service", "empty"),
            ("code", "200"),
            ("grpc_status", "14"),
            ("reason", "no-healthy-endpoints"),
            ("classification", "failure")
        ]),
        1.0
    );
    assert_eq!(
        n(&[
            ("service", "flaky"),
            ("code", "200"),
            ("grpc_status", "14"),
            ("reason", ""),
            ("classification", "failure")
        ]),
        1.0
    );
    // The gRPC success rate the docs give: 1 success of the 5 calls.
    let grpc_total: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "trellis_requests_total")
        .filter(|s| s.labels.get("grpc_status").is_some_and(|g| !g.is_empty()))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(grpc_total, 5.0);
    assert_eq!(n(&[("grpc_status", "0")]), 1.0);
}
