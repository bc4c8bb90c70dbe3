//! Distributed tracing end to end with software nobody here wrote: apps instrumented with the
//! OpenTelemetry Python SDK, an OTLP/gRPC receiver built from the OpenTelemetry protocol
//! package, curl. A call app → sidecar → sidecar → app that the route retries once is one trace
//! whose spans link up: the app's CLIENT span is the parent of the caller sidecar's CLIENT span
//! per attempt (two), each the parent of the callee sidecar's SERVER span, each the parent of
//! the callee app's SERVER span. A B3-only client keeps its trace (and its header style); a
//! request nobody sampled leaves no span.
mod common;

use common::mesh::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel/receiver.py");
const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel/app.py");

fn mesh(otlp: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: b}}
spec: {{ports: [{{port: 80, protocol: http}}]}}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {{name: b}}
spec:
  service: b
  rules:
    - name: all
      retries: {{attempts: 2, retryOn: [5xx], backoff: {{baseInterval: 10ms, maxInterval: 10ms}}}}
---
apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  telemetry: {{tracingSamplePercent: 0, otlpEndpoint: \"{otlp}\"}}
"
    )
}

/// The spans received so far.
fn spans(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The spans of `trace`, once there are `n` (bounded wait).
async fn spans_of(out: &Path, trace: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Value> = spans(out)
            .into_iter()
            .filter(|s| s["trace_id"] == trace)
            .collect();
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn of<'a>(spans: &'a [Value], service: &str, kind: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["service"] == service && s["kind"] == kind)
        .collect()
}

#[tokio::test]
async fn one_trace_links_apps_and_sidecars_per_attempt_and_b3_keeps_its_trace() {
    let dir = tempdir("tracing");
    let out = dir.join("spans.jsonl");
    let receiver_addr = free_addr();
    let otlp = format!("http://{receiver_addr}");
    let receiver = External::spawn(
        &dir,
        "receiver",
        "python3",
        &[
            RECEIVER,
            &receiver_addr.port().to_string(),
            out.to_str().unwrap(),
        ],
    );
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(&url, &dir, &mesh(&otlp));

    // b: an instrumented app behind its sidecar.
    let p = Ports::free();
    let _app = External::spawn(
        &dir,
        "b-app",
        "python3",
        &[APP, "serve", &p.app.port().to_string(), "b-app", &otlp],
    );
    let _b = Proc::spawn(
        &dir,
        "b-0-proxy",
        &[
            "proxy".into(),
            format!("--control={url}"),
            "--node-id=b-0".into(),
            "--service=b".into(),
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
            "--lease-ttl=2s".into(),
        ],
    );
    // a: a caller sidecar for the instrumented client.
    let a = caller_of(&dir, &url, "a");
    let (a_outbound, a_admin) = (a.outbound, a.admin);
    wait_ready(p.admin).await;
    wait_ready(a_admin).await;
    wait_listening(p.app).await;
    wait_for_workload(a_admin, "b").await;

    // The instrumented client calls b through its sidecar; b fails the first try, the route
    // retries, the second succeeds.
    let called = std::process::Command::new("python3")
        .args([
            APP,
            "call",
            &format!("http://{a_outbound}/flaky"),
            "b",
            "a-app",
            &otlp,
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&called.stdout).to_string();
    assert!(
        called.status.success() && stdout.starts_with("200"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&called.stderr)
    );
    let answer: Value = serde_json::from_str(stdout.lines().nth(1).unwrap_or("")).expect(&stdout);
    let traceparent = answer["headers"]["traceparent"].as_str().expect(&stdout);
    let trace = traceparent.split('-').nth(1).unwrap().to_string();

    let all = spans_of(&out, &trace, 7).await;
    assert_eq!(
        all.len(),
        7,
        "one trace of 7 spans: {all:#?}\nreceiver: {}",
        receiver.log_text()
    );
    let root = of(&all, "a-app", "client");
    assert_eq!(root.len(), 1, "{all:#?}");
    assert_eq!(root[0]["parent"], "", "the client's span starts the trace");
    let attempts = of(&all, "a", "client");
    assert_eq!(attempts.len(), 2, "a CLIENT span per attempt: {all:#?}");
    let mut retries: Vec<&str> = attempts
        .iter()
        .map(|s| s["attributes"]["trellis.retry"].as_str().unwrap_or("?"))
        .collect();
    retries.sort();
    assert_eq!(retries, ["0", "1"], "{attempts:#?}");
    let inbound = of(&all, "b", "server");
    let apps = of(&all, "b-app", "server");
    assert_eq!((inbound.len(), apps.len()), (2, 2), "{all:#?}");
    for attempt in &attempts {
        assert_eq!(attempt["parent"], root[0]["span_id"], "{attempt}");
        assert_eq!(attempt["attributes"]["server.address"], "b");
        assert_eq!(attempt["attributes"]["http.request.method"], "GET");
        // The callee sidecar's span of this attempt, and the app's under it.
        let server: Vec<_> = inbound
            .iter()
            .filter(|s| s["parent"] == attempt["span_id"])
            .collect();
        assert_eq!(server.len(), 1, "{attempt} -> {inbound:#?}");
        assert_eq!(
            server[0]["attributes"]["trellis.peer.identity"],
            "spiffe://cluster.local/ns/default/sa/a"
        );
        let app: Vec<_> = apps
            .iter()
            .filter(|s| s["parent"] == server[0]["span_id"])
            .collect();
        assert_eq!(app.len(), 1, "{server:?} -> {apps:#?}");
        let code = attempt["attributes"]["http.response.status_code"].clone();
        assert_eq!(server[0]["attributes"]["http.response.status_code"], code);
    }
    let codes: Vec<String> = attempts
        .iter()
        .map(|s| s["attributes"]["http.response.status_code"].to_string())
        .collect();
    assert!(
        codes.contains(&"\"503\"".to_string()) && codes.contains(&"\"200\"".to_string()),
        "{codes:?}"
    );

    // A B3-only client: its trace id goes on, in B3, to the app.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let body = curl(&[
        "-H",
        "Host: b",
        "-H",
        &format!("b3: {b3_trace}-e457b5a2e4d86bd1-1"),
        &format!("http://{a_outbound}/b3"),
    ]);
    let seen: Value = serde_json::from_str(&body).expect(&body);
    let b3 = seen["headers"]["b3"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(b3.starts_with(b3_trace), "{body}");
    assert!(seen["headers"]["traceparent"].is_null(), "{body}");
    let sidecar_spans = spans_of(&out, b3_trace, 2).await;
    let client = of(&sidecar_spans, "a", "client");
    assert_eq!(client.len(), 1, "{sidecar_spans:#?}");
    assert_eq!(client[0]["parent"], "e457b5a2e4d86bd1");
    assert_eq!(
        of(&sidecar_spans, "b", "server").len(),
        1,
        "{sidecar_spans:#?}"
    );

    // A body that comes 300 ms after its headers is inside the sidecars' spans: they end with
    // the body, not at the headers (the app's own span, closed after its last write, too).
    let slow_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    curl(&[
        "-H",
        "Host: b",
        "-H",
        &format!("traceparent: 00-{slow_trace}-00f067aa0ba902b7-01"),
        &format!("http://{a_outbound}/slow-body"),
    ]);
    let slow = spans_of(&out, slow_trace, 3).await;
    for (service, kind) in [("a", "client"), ("b", "server"), ("b-app", "server")] {
        let span = of(&slow, service, kind);
        assert_eq!(span.len(), 1, "{service} {kind}: {slow:#?}");
        let ns = |k: &str| {
            span[0][k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k}: {span:?}"))
        };
        assert!(
            ns("end_ns") - ns("start_ns") >= 300_000_000,
            "the {service} {kind} span ended before the body was sent: {span:?}"
        );
    }

    // Nobody sampled this one (no context, 0%): no span, headers as they were.
    let body = curl(&["-H", "Host: b", &format!("http://{a_outbound}/untraced")]);
    let seen: Value = serde_json::from_str(&body).expect(&body);
    assert!(seen["headers"]["traceparent"].is_null(), "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !spans(&out)
            .iter()
            .any(|s| s["attributes"]["url.path"] == "/untraced"),
        "an unsampled request made spans"
    );
}

/// The mesh of the collector test: one service and every request traced to `otlp`.
fn traced_mesh(otlp: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: web}}
spec: {{ports: [{{port: 80, protocol: http}}]}}
---
apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  telemetry: {{tracingSamplePercent: 100, otlpEndpoint: \"{otlp}\"}}
"
    )
}

/// Sends `n` requests through the caller's sidecar; every one must be answered by the app.
async fn all_answered(outbound: std::net::SocketAddr, n: usize) {
    let client = http1();
    for i in 0..n {
        let a = get(&client, outbound, Some("web"), "/", &[]).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
    }
}

/// Waits (30 s at most) until `metric` on `admin` is above `above`; its value.
async fn grows(admin: std::net::SocketAddr, metric: &str, above: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = counter(admin, metric, &[]).await;
        if v > above {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{metric} stayed at {v} (expected above {above})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Points the mesh's traces at `otlp` and waits until the caller's sidecar uses it.
async fn use_collector(url: &str, dir: &Path, caller: std::net::SocketAddr, otlp: &str) {
    apply(url, dir, &traced_mesh(otlp));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !config_of(caller).await.to_string().contains(otlp) {
        assert!(
            Instant::now() < deadline,
            "the caller never took the MeshConfig for {otlp}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A collector killed in the middle of a run (then down), back on its address, and one that
/// accepts connections and never answers: every request is still answered, spans that cannot
/// go are dropped and counted, and export resumes when the collector is back.
#[tokio::test]
async fn a_collector_killed_down_or_hung_never_costs_a_request() {
    let dir = tempdir("tracing-collector");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    let out = dir.join("spans.jsonl");
    let addr = free_addr();
    let otlp = format!("http://{addr}");
    let start_receiver = |name: &str| {
        External::spawn(
            &dir,
            name,
            "python3",
            &[RECEIVER, &addr.port().to_string(), out.to_str().unwrap()],
        )
    };
    let receiver = start_receiver("receiver");
    wait_listening(addr).await;
    apply(&url, &dir, &traced_mesh(&otlp));
    let (_app, _web, web_admin) = instance(&dir, &url, "web-0", "v1");
    let caller = caller_of(&dir, &url, "a");
    wait_ready(web_admin).await;
    wait_ready(caller.admin).await;
    wait_endpoints(caller.admin, 1).await;
    use_collector(&url, &dir, caller.admin, &otlp).await;

    let exported = "trellis_trace_spans_exported_total";
    let dropped = "trellis_trace_spans_dropped_total";
    all_answered(caller.outbound, 100).await;
    let sent = grows(caller.admin, exported, 0.0).await;
    // kill -9 of the collector; then it is down (connections refused).
    drop(receiver);
    all_answered(caller.outbound, 200).await;
    let lost = grows(caller.admin, dropped, 0.0).await;
    // Back on the same address: export resumes.
    let _receiver = start_receiver("receiver-again");
    wait_listening(addr).await;
    all_answered(caller.outbound, 100).await;
    grows(caller.admin, exported, sent).await;
    assert!(!spans(&out).is_empty(), "the collector received spans");

    // Hung: accepts TCP and never says a word (no HTTP/2 handshake, no answer).
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_otlp = format!("http://{}", hung.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            conns.push(s);
        }
    });
    use_collector(&url, &dir, caller.admin, &hung_otlp).await;
    all_answered(caller.outbound, 1000).await;
    grows(caller.admin, dropped, lost).await;
    held.abort();
}

/// A mirrored copy of a traced request is visible in its trace: the caller's sidecar makes a
/// CLIENT span for the copy (marked `trellis.mirror`), and the mirror's sidecar a SERVER span
/// under it, beside the CLIENT → SERVER pair of the request itself.
#[tokio::test]
async fn a_mirrored_copy_has_its_own_span_in_the_trace() {
    let dir = tempdir("tracing-mirror");
    let out = dir.join("spans.jsonl");
    let addr = free_addr();
    let otlp = format!("http://{addr}");
    let _receiver = External::spawn(
        &dir,
        "receiver",
        "python3",
        &[RECEIVER, &addr.port().to_string(), out.to_str().unwrap()],
    );
    wait_listening(addr).await;
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    let mirrored = format!(
        "{}---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {{name: web}}
spec:
  service: web
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {{name: web}}
spec:
  service: web
  rules:
    - name: main
      backends: [{{service: web, subset: v1}}]
      mirror: {{service: web, subset: v2, percent: 100}}
",
        traced_mesh(&otlp)
    );
    apply(&url, &dir, &mirrored);
    let (_a1, _s1, v1_admin) = instance(&dir, &url, "web-v1", "v1");
    let (_a2, _s2, v2_admin) = instance(&dir, &url, "web-v2", "v2");
    let caller = caller_of(&dir, &url, "a");
    for admin in [v1_admin, v2_admin, caller.admin] {
        wait_ready(admin).await;
    }
    wait_endpoints(caller.admin, 2).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace}-00f067aa0ba902b7-01");
    let a = get(
        &http1(),
        caller.outbound,
        Some("web"),
        "/",
        &[("traceparent", &parent)],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let spans = spans_of(&out, trace, 4).await;
    let clients = of(&spans, "a", "client");
    assert_eq!(
        clients.len(),
        2,
        "the request's try and the mirrored copy: {spans:#?}"
    );
    let copy = clients
        .iter()
        .find(|s| s["attributes"]["trellis.mirror"] == "1")
        .unwrap_or_else(|| panic!("no mirror span: {spans:#?}"));
    let request = clients
        .iter()
        .find(|s| s["span_id"] != copy["span_id"])
        .unwrap();
    for c in [copy, request] {
        assert_eq!(
            c["parent"], "00f067aa0ba902b7",
            "both under the caller's span: {c}"
        );
    }
    let servers = of(&spans, "web", "server");
    assert_eq!(servers.len(), 2, "{spans:#?}");
    let parents: Vec<&Value> = servers.iter().map(|s| &s["parent"]).collect();
    assert!(
        parents.contains(&&copy["span_id"]),
        "the mirror's server span is under the copy's: {spans:#?}"
    );
    assert!(parents.contains(&&request["span_id"]), "{spans:#?}");
}
