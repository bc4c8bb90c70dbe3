//! Access logs end to end, with curl as the client: off until the MeshConfig turns them on, then
//! one JSON line per request on each sidecar it passes (caller's outbound, callee's inbound),
//! carrying the trace id the client sent (W3C `traceparent` or B3), one `x-request-id` made by
//! the first sidecar and seen by the app, the caller's mTLS identity on the inbound side, the
//! body bytes each way, and the proxy's reason when it answered itself.
mod common;

use common::mesh::*;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, protocol: http}]}
";

fn logging(path: &Path) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec:\n  telemetry:\n    accessLog: {{enabled: true, output: {}}}\n",
        path.display()
    )
}

/// The lines of the log so far, each parsed (a line that is not JSON fails the test).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The lines about requests for `path`, once there are `n` of them (bounded wait).
async fn lines_for(log: &Path, path: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = lines(log)
            .into_iter()
            .filter(|l| l["path"] == path)
            .collect();
        if found.len() >= n || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn side<'a>(found: &'a [Value], direction: &str) -> &'a Value {
    found
        .iter()
        .find(|l| l["direction"] == direction)
        .unwrap_or_else(|| panic!("no {direction} line in {found:?}"))
}

#[tokio::test]
async fn lines_carry_trace_request_id_identity_and_bytes_once_turned_on() {
    let dir = tempdir("access-log");
    let log = dir.join("access.log");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(&url, &dir, MESH);
    let (_app, _sidecar, web_admin) = instance(&dir, &url, "web-0", "v1");
    let caller = caller(&dir, &url);
    wait_ready(web_admin).await;
    wait_ready(caller.admin).await;
    let base = format!("http://{}", caller.outbound);

    // Off by default: a request leaves no line anywhere. (The first ones may find web not
    // registered yet.)
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answer = String::new();
    while !answer.contains("\"service\"") && Instant::now() < deadline {
        answer = curl(&["-H", "Host: web", &format!("{base}/before")]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.contains("\"service\""), "{answer}");

    apply(&url, &dir, &logging(&log));
    // Until both sidecars have the new MeshConfig, a request may be logged on one side only.
    let deadline = Instant::now() + Duration::from_secs(15);
    while lines_for(&log, "/warm", 0).await.len() < 2 && Instant::now() < deadline {
        curl(&["-H", "Host: web", &format!("{base}/warm")]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // W3C trace context.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = curl(&[
        "-H",
        "Host: web",
        "-H",
        &format!("traceparent: 00-{trace}-00f067aa0ba902b7-01"),
        &format!("{base}/w3c"),
    ]);
    let seen: Value = serde_json::from_str(&answer).expect(&answer);
    let app_request_id = seen["headers"]["x-request-id"]
        .as_str()
        .unwrap_or_else(|| panic!("the app got no x-request-id: {answer}"))
        .to_string();
    let found = lines_for(&log, "/w3c", 2).await;
    assert_eq!(found.len(), 2, "{found:?}");
    let (out, inb) = (side(&found, "outbound"), side(&found, "inbound"));
    for l in [out, inb] {
        assert_eq!(l["kind"], "http");
        assert_eq!(l["traceId"], trace, "{l}");
        assert_eq!(
            l["requestId"],
            app_request_id.as_str(),
            "one id along the path: {l}"
        );
        assert_eq!(l["method"], "GET");
        assert_eq!(l["status"], 200);
        assert_eq!(l["reason"], "");
        assert_eq!(l["protocol"], "HTTP/1.1");
        assert_eq!(l["bytesSent"], answer.len() as u64, "{l}");
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(l["durationMs"].as_f64().is_some_and(|d| d >= 0.0), "{l}");
    }
    assert_eq!(out["destination"], "web");
    assert_eq!(out["attempts"], 1, "{out}");
    assert_eq!(out["sourceIdentity"], Value::Null);
    assert_eq!(
        inb["sourceIdentity"], "spiffe://cluster.local/ns/default/sa/caller",
        "the caller's mTLS identity: {inb}"
    );

    // B3 single header; a request id the client chose is kept.
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7";
    curl(&[
        "-H",
        "Host: web",
        "-H",
        &format!("b3: {b3}-e457b5a2e4d86bd1-1"),
        "-H",
        "x-request-id: mine-123",
        &format!("{base}/b3"),
    ]);
    let found = lines_for(&log, "/b3", 2).await;
    assert_eq!(found.len(), 2, "{found:?}");
    for l in &found {
        assert_eq!(l["traceId"], b3, "{l}");
        assert_eq!(l["requestId"], "mine-123", "{l}");
    }

    // Bytes each way: a 3000-byte upload echoed back.
    let body = "x".repeat(3000);
    let echoed = curl(&[
        "-H",
        "Host: web",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        &body,
        &format!("{base}/echo"),
    ]);
    assert_eq!(echoed.len(), 3000);
    let found = lines_for(&log, "/echo", 2).await;
    assert_eq!(found.len(), 2, "{found:?}");
    for l in &found {
        assert_eq!(l["method"], "POST");
        assert_eq!(l["bytesReceived"], 3000, "{l}");
        assert_eq!(l["bytesSent"], 3000, "{l}");
    }

    // The proxy's own answer: one line, on the caller's side, with its reason.
    curl(&["-H", "Host: nope", &format!("{base}/unrouted")]);
    let found = lines_for(&log, "/unrouted", 1).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["status"], 404);
    assert_eq!(found[0]["reason"], "no-route");

    assert!(
        lines_for(&log, "/before", 0).await.is_empty(),
        "a request made before the MeshConfig asked for logs was logged"
    );
}
