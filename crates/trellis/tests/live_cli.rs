//! `trellis stat`, `trellis tap` and `trellis top` against a running mesh: the numbers `stat`
//! gives per edge are the requests the test sent (a known share failing), from the callee's
//! side and from the caller's; `tap` shows a request made while it runs, with credentials
//! redacted; `top` ranks paths by what was sent. With three replicas on etcd, any replica
//! answers for proxies connected to the others.
mod common;

use common::mesh::*;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, protocol: http}]}
";

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";

/// Runs the CLI against `control`; its standard output, or a panic with what it said.
fn cli(control: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .env("TRELLIS_CONTROL", control)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trellis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Warnings (a replica that did not answer) show with a failing test's output.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stat(control: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["stat", "-o", "json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&cli(control, &all)).unwrap();
    v["rows"].as_array().cloned().unwrap_or_default()
}

/// The row whose `from` is `from` (`-` for no caller identity).
fn row<'a>(rows: &'a [Value], from: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["from"] == from)
        .unwrap_or_else(|| panic!("no row from {from}: {rows:?}"))
}

/// Starts a CLI verb that runs until it ends by itself, and waits until it says it taps.
async fn start_tap(dir: &Path, name: &str, control: &str, args: &[&str]) -> Proc {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.push(format!("--control={control}"));
    let tap = Proc::spawn(dir, name, &all);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !tap.log_text().contains("tapping") {
        assert!(
            Instant::now() < deadline,
            "{name} never started: {}",
            tap.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tap
}

fn finished(mut p: Proc) -> String {
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{} did not finish well ({status:?}): {}",
        p.name,
        p.log_text()
    );
    p.log_text()
}

/// The first tap event (a JSON line) in a tap's output.
fn first_event(log: &str) -> Value {
    log.lines()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.is_object())
        })
        .unwrap_or_else(|| panic!("no event in: {log}"))
}

async fn send(outbound: SocketAddr, path: &str, headers: &[(&str, &str)], n: usize, status: u16) {
    let client = http1();
    for _ in 0..n {
        let a = get(&client, outbound, Some("web"), path, headers).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
    }
}

/// Waits (20 s at most) until the proxy at `admin` has no tap open. The control plane notices
/// a reader gone at its next heartbeat (2 s) and tells the proxy, which forgets the tap at its
/// next request: so requests keep going meanwhile.
async fn wait_no_taps(outbound: SocketAddr, admin: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        send(outbound, "/after", &[], 1, 200).await;
        if counter(admin, "trellis_taps_open", &[]).await == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what} stayed open on the proxy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn stat_tap_and_top_show_what_was_sent() {
    let dir = tempdir("live-cli");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(&url, &dir, MESH);
    let (_app, _sidecar, web_admin) = instance(&dir, &url, "web-0", "v1");
    let frontend = caller_of(&dir, &url, "frontend");
    let batch = caller_of(&dir, &url, "batch");
    for admin in [web_admin, frontend.admin, batch.admin] {
        wait_ready(admin).await;
    }
    // Healthy endpoints (a sidecar registers Unhealthy until it can serve).
    wait_endpoints(frontend.admin, 1).await;
    wait_endpoints(batch.admin, 1).await;

    // 40 calls from frontend of which 10 the app answers 503; 20 from batch, all fine.
    send(frontend.outbound, "/", &[], 30, 200).await;
    send(frontend.outbound, "/status/503", &[], 10, 503).await;
    send(batch.outbound, "/", &[], 20, 200).await;

    // What web served, per caller (its inbound side).
    let rows = stat(&url, &["web"]);
    let f = row(&rows, "default/frontend");
    assert_eq!(
        (f["requests"].as_u64(), f["failures"].as_u64()),
        (Some(40), Some(10)),
        "{f}"
    );
    assert_eq!(f["successRate"].as_f64(), Some(0.75), "{f}");
    assert_eq!(f["source"], FRONTEND);
    let b = row(&rows, "default/batch");
    assert_eq!(
        (b["requests"].as_u64(), b["successRate"].as_f64()),
        (Some(20), Some(1.0)),
        "{b}"
    );
    for r in [f, b] {
        assert!(r["rps"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        let (p50, p99) = (r["p50Ms"].as_f64().unwrap(), r["p99Ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{r}");
    }
    // The same edge from the caller's side, and every service in one row each.
    let out = stat(&url, &["--from", "frontend", "--to", "web"]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["direction"], "outbound");
    assert_eq!(
        (out[0]["requests"].as_u64(), out[0]["failures"].as_u64()),
        (Some(40), Some(10))
    );
    let all = stat(&url, &[]);
    let web = all
        .iter()
        .find(|r| r["service"] == "web")
        .expect("a web row");
    assert_eq!(web["requests"].as_u64(), Some(60), "{all:?}");
    // A window before any of it: nothing yet (the proxies are younger than the window, so it
    // covers their whole life) — instead ask a narrow filter that matches nothing.
    assert!(stat(&url, &["--from", "nobody", "--to", "web"]).is_empty());

    // A tap shows a request made while it runs, credentials redacted.
    let tap = start_tap(
        &dir,
        "tap",
        &url,
        &[
            "tap",
            "web",
            "-o",
            "json",
            "--path",
            "/tapped",
            "--max-events",
            "1",
            "--duration",
            "30s",
        ],
    )
    .await;
    // Made by curl, a client nobody here wrote.
    let status = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Host: web",
        "-H",
        "authorization: Bearer top-secret-value",
        "-H",
        "x-user: alice",
        &format!("http://{}/tapped/one", frontend.outbound),
    ]);
    assert_eq!(status, "200");
    let log = finished(tap);
    assert!(!log.contains("top-secret-value"), "{log}");
    let e = first_event(&log);
    assert_eq!(e["path"], "/tapped/one", "{e}");
    assert_eq!(
        (e["direction"].as_str(), e["status"].as_u64()),
        (Some("inbound"), Some(200))
    );
    assert_eq!(e["source"], FRONTEND);
    assert_eq!(e["proxy"], "web-0");
    let headers = e["requestHeaders"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["authorization", "<redacted>"])),
        "{e}"
    );
    assert!(
        headers.contains(&serde_json::json!(["x-user", "alice"])),
        "{e}"
    );
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "user-agent" && h[1].as_str().is_some_and(|v| v.starts_with("curl/"))),
        "curl's own headers pass through: {e}"
    );

    // top ranks the paths by what was sent while it ran.
    let top = start_tap(&dir, "top", &url, &["top", "web", "--duration", "4s"]).await;
    send(batch.outbound, "/busy", &[], 6, 200).await;
    send(frontend.outbound, "/quiet", &[], 2, 200).await;
    let log = finished(top);
    let table: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.starts_with("DIR"))
        .skip(1)
        .collect();
    assert!(table.len() >= 2, "{log}");
    let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let (busy, quiet) = (cols(table[0]), cols(table[1]));
    assert_eq!(
        (busy[4].as_str(), busy[5].as_str()),
        ("/busy", "6"),
        "{log}"
    );
    assert_eq!(busy[1], "default/batch", "{log}");
    assert_eq!(
        (quiet[4].as_str(), quiet[5].as_str()),
        ("/quiet", "2"),
        "{log}"
    );

    // A reader that stops reading (SIGSTOP) holds no request up: the proxy drops what its
    // queue cannot take. Killed, its tap is closed on the proxy.
    // The taps that ended (tap, top) are closed on the proxy.
    wait_no_taps(batch.outbound, web_admin, "the finished taps").await;
    let stalled = start_tap(&dir, "stalled", &url, &["tap", "web", "--duration", "60s"]).await;
    assert_eq!(counter(web_admin, "trellis_taps_open", &[]).await, 1.0);
    let pid = stalled.pid().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    send(batch.outbound, "/flood", &[], 600, 200).await;
    kill9(stalled);
    wait_no_taps(batch.outbound, web_admin, "the killed tap").await;

    // Without the token, nothing.
    let out = Command::new(BIN)
        .env("TRELLIS_CONTROL", &url)
        .env_remove("TRELLIS_TOKEN")
        .args(["tap", "web", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    // Nothing to tap is said, not waited on.
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .env("TRELLIS_CONTROL", &url)
        .args(["tap", "nosuch", "--duration", "10s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no connected proxy serves"),
        "{out:?}"
    );
}

#[tokio::test]
async fn any_replica_answers_for_proxies_connected_to_the_others() {
    let dir = tempdir("live-cli-replicas");
    let (_etcd, client) = etcd(&dir);
    wait_etcd(&client).await;
    let store = format!("etcd://{client}");
    let mut replicas = Replicas::start(&dir, 3, &store).await;
    let [r0, r1, r2] = [
        replicas.urls[0].clone(),
        replicas.urls[1].clone(),
        replicas.urls[2].clone(),
    ];
    let (r0, r1, r2) = (&r0, &r1, &r2);
    apply(r0, &dir, MESH);
    // web's sidecar talks to replica 1 (replica 0 only if 1 is gone), frontend's to replica 2.
    let (_app, _sidecar, web_admin) = instance(&dir, &format!("{r1},{r0}"), "web-0", "v1");
    let frontend = caller_of(&dir, r2, "frontend");
    wait_ready(web_admin).await;
    wait_ready(frontend.admin).await;
    wait_endpoints(frontend.admin, 1).await;
    send(frontend.outbound, "/", &[], 12, 200).await;

    // Replica 0 holds neither proxy: it asks the other two (once it has read their first
    // heartbeats from the store, published every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(r0, &["web"]).is_empty() {
        assert!(Instant::now() < deadline, "replica 0 never saw web's proxy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inbound = stat(r0, &["web"]);
    assert_eq!(
        row(&inbound, "default/frontend")["requests"].as_u64(),
        Some(12),
        "{inbound:?}"
    );
    let outbound = stat(r0, &["--from", "frontend", "--to", "web"]);
    assert_eq!(outbound.len(), 1, "{outbound:?}");
    assert_eq!(outbound[0]["requests"].as_u64(), Some(12));

    // A tap through replica 0 reaches web's sidecar on replica 1.
    let tap = start_tap(
        &dir,
        "tap",
        r0,
        &[
            "tap",
            "web",
            "-o",
            "json",
            "--max-events",
            "1",
            "--duration",
            "30s",
        ],
    )
    .await;
    send(frontend.outbound, "/through-replicas", &[], 1, 200).await;
    let e = first_event(&finished(tap));
    assert_eq!(
        (e["path"].as_str(), e["proxy"].as_str()),
        (Some("/through-replicas"), Some("web-0"))
    );

    // kill -9 of web's replica: its telemetry link moves to replica 0, and replica 2 still
    // answers for it (naming the dead replica until its heartbeat goes stale).
    kill9(replicas.procs[1].take().expect("replica 1"));
    send(frontend.outbound, "/after-failover", &[], 5, 200).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = stat(r2, &["web"]);
        let seen = rows
            .iter()
            .find(|r| r["from"] == "default/frontend")
            .and_then(|r| r["requests"].as_u64());
        if seen == Some(18) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web's numbers never came back through replica 0 (last: {rows:?})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
