//! Local rate limiting with real processes: a Route rule's `rateLimit` holds the measured rate
//! over a bounded run in the caller's sidecar (the app sees only what was admitted); a
//! `RateLimitPolicy` on a service gives two callers with different mTLS identities each its
//! share while the total holds, and reaches only the service's own sidecars; shadow mode
//! refuses nothing and counts what it would have refused; a gRPC caller over the limit gets
//! `RESOURCE_EXHAUSTED`.
mod common;

use common::*;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pause between one loop's requests.
const PACE: Duration = Duration::from_millis(5);

/// What a bounded load run saw.
#[derive(Debug, Default)]
struct Run {
    ok: usize,
    limited: usize,
    other: Vec<u16>,
    /// From the first request sent to the last answer.
    elapsed: Duration,
}

/// `loops` concurrent request loops through `addr` (with `Host: host`), each pausing `PACE`
/// between requests (so a loop sends at most ~200 req/s, well over any limit here, and the run
/// lasts its `length`) and stopping after `per_loop` requests or when `length` has passed,
/// whichever comes first. Every 429 must say `trellis-error: rate-limited` and carry a
/// `retry-after` of at least 1 second.
async fn hammer(
    addr: SocketAddr,
    host: &str,
    loops: usize,
    per_loop: usize,
    length: Duration,
) -> Run {
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = Vec::new();
    for _ in 0..loops {
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let client = http1();
            let mut run = Run::default();
            for _ in 0..per_loop {
                if Instant::now() >= deadline {
                    break;
                }
                let req = http::Request::get(format!("http://{addr}/"))
                    .header("host", &host)
                    .body(Full::new(bytes::Bytes::new()))
                    .unwrap();
                let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                    .await
                    .expect("an answer within 10 s")
                    .expect("the sidecar answers");
                let status = rsp.status().as_u16();
                let headers = rsp.headers().clone();
                let _ = rsp.into_body().collect().await;
                match status {
                    200 => run.ok += 1,
                    429 => {
                        assert_eq!(headers["trellis-error"], "rate-limited", "{headers:?}");
                        let secs: u64 = headers["retry-after"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .expect("retry-after in whole seconds");
                        assert!((1..=2).contains(&secs), "retry-after {secs}");
                        run.limited += 1;
                    }
                    s => run.other.push(s),
                }
                tokio::time::sleep(PACE).await;
            }
            run
        }));
    }
    let mut total = Run::default();
    for t in tasks {
        let r = t.await.expect("load loop");
        total.ok += r.ok;
        total.limited += r.limited;
        total.other.extend(r.other);
    }
    total.elapsed = start.elapsed();
    total
}

fn route_with_limit(limit: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: echo}}\nspec:\n  service: echo\n  rules:\n    - name: all\n      rateLimit: {limit}\n"
    )
}

/// An echo app behind its sidecar and a caller, from one static file with `extra` in it.
async fn static_pair(
    tag: &str,
    protocol: &str,
    extra: &str,
) -> (std::path::PathBuf, Instance, Caller) {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let text = format!(
        "{}{}{extra}",
        service("echo", protocol),
        workload("echo-0", "echo", "v1", ports.inbound)
    );
    write_config(&config, &text);
    let instance = start_instance(&dir, &config, "echo", "echo-0", &[], ports);
    let caller = start_caller(&dir, &config, &[]);
    wait_ready(instance.admin).await;
    wait_ready(caller.admin).await;
    wait_listening(instance.app_addr).await;
    (dir, instance, caller)
}

async fn inbound_ok(admin: SocketAddr) -> f64 {
    counter(
        admin,
        "trellis_requests_total",
        &[("direction", "inbound"), ("code", "200")],
    )
    .await
}

#[tokio::test]
async fn a_route_limit_holds_the_rate_and_the_app_sees_only_what_was_admitted() {
    let (_dir, echo, caller) = static_pair(
        "rl-route",
        "http",
        &route_with_limit("{requestsPerSecond: 20, burst: 5}"),
    )
    .await;
    // The sidecar is ready with the route; one request shows it routes, then the bucket refills.
    let first = get(&http1(), caller.outbound, Some("echo"), "/", &[]).await;
    assert_eq!(first.status, 200, "{first:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let app_before = inbound_ok(echo.admin).await;

    let run = hammer(caller.outbound, "echo", 4, 2000, Duration::from_secs(3)).await;
    let secs = run.elapsed.as_secs_f64();
    let bound = 5.0 + 20.0 * secs;
    println!(
        "route limit 20/s burst 5: {} admitted, {} refused in {secs:.2} s (bound {bound:.1})",
        run.ok, run.limited
    );
    assert!(run.other.is_empty(), "only 200 and 429: {:?}", run.other);
    assert!(
        secs >= 2.7,
        "the run lasted its 3 s (not cut short by the request cap)"
    );
    assert!(
        (run.ok as f64) <= bound + 2.0,
        "admitted {} > burst + rate × elapsed = {bound:.1}",
        run.ok
    );
    assert!(
        (run.ok as f64) >= 0.7 * 20.0 * secs,
        "admitted {} well under the rate over {secs:.2} s",
        run.ok
    );
    assert!(
        run.limited > 3 * run.ok,
        "the run pressed the limit: {run:?}"
    );

    // The app (its inbound sidecar) received exactly the admitted ones.
    let app = inbound_ok(echo.admin).await - app_before;
    assert_eq!(
        app, run.ok as f64,
        "the app saw {app}, the caller admitted {}",
        run.ok
    );
    // The caller counted every decision, and every refusal as a rate-limited request.
    let n = |labels: &'static [(&'static str, &'static str)]| {
        counter(caller.admin, "trellis_rate_limited_total", labels)
    };
    let limited = n(&[
        ("direction", "outbound"),
        ("service", "echo"),
        ("route", "echo/all"),
        ("scope", "route"),
        ("mode", "enforce"),
        ("decision", "limited"),
    ])
    .await;
    assert_eq!(limited, run.limited as f64);
    let admitted = n(&[("direction", "outbound"), ("decision", "admitted")]).await;
    assert_eq!(
        admitted,
        run.ok as f64 + 1.0,
        "the run and the first request"
    );
    let refused = counter(
        caller.admin,
        "trellis_requests_total",
        &[
            ("direction", "outbound"),
            ("code", "429"),
            ("reason", "rate-limited"),
        ],
    )
    .await;
    assert_eq!(refused, run.limited as f64);
}

#[tokio::test]
async fn shadow_mode_refuses_nothing_and_counts_what_it_would_have() {
    let (_dir, echo, caller) = static_pair(
        "rl-shadow",
        "http",
        &route_with_limit("{requestsPerSecond: 20, burst: 5, mode: Shadow}"),
    )
    .await;
    let app_before = inbound_ok(echo.admin).await;
    let run = hammer(caller.outbound, "echo", 3, 1000, Duration::from_secs(2)).await;
    let secs = run.elapsed.as_secs_f64();
    let sent = run.ok + run.limited + run.other.len();
    println!(
        "shadow 20/s burst 5: {sent} sent, {} admitted in {secs:.2} s",
        run.ok
    );
    assert_eq!(run.ok, sent, "shadow mode refuses nothing: {run:?}");
    assert_eq!(inbound_ok(echo.admin).await - app_before, sent as f64);
    let scrape = parse_metrics(&get_status(caller.admin, "/metrics").await.unwrap().1);
    let n = |d| {
        sample(
            &scrape,
            "trellis_rate_limited_total",
            &[
                ("direction", "outbound"),
                ("mode", "shadow"),
                ("decision", d),
            ],
        )
    };
    let (would, admitted) = (n("limited"), n("admitted"));
    println!("shadow: would have refused {would}, admitted {admitted}");
    assert_eq!(would + admitted, sent as f64, "every decision counted");
    // What an enforced limit would have refused: all but burst + rate × elapsed (± slack).
    assert!(admitted <= 5.0 + 20.0 * secs + 2.0, "{admitted}");
    assert!(would >= sent as f64 - (5.0 + 20.0 * secs + 2.0), "{would}");
    assert!(would > 0.0);
    assert_eq!(
        sample(
            &scrape,
            "trellis_requests_total",
            &[("reason", "rate-limited")]
        ),
        0.0
    );
}

/// A grpcio client making `n` unary calls in one process (so no refill between them), printing
/// each outcome as JSON.
const GRPC_CLIENT: &str = r#"
import json, sys
import grpc

target, authority, method, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
raw = lambda b: b
channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
call = channel.unary_unary(method, request_serializer=raw, response_deserializer=raw)
out = []
for _ in range(n):
    try:
        reply, rpc = call.with_call(b"\x01\x02hello", timeout=10)
        out.append({"code": "OK", "details": "", "trailing": dict(rpc.trailing_metadata() or [])})
    except grpc.RpcError as e:
        out.append({"code": e.code().name, "details": e.details() or "",
                    "trailing": dict(e.trailing_metadata() or [])})
print(json.dumps(out))
"#;

fn grpcio_calls(dir: &Path, target: SocketAddr, authority: &str, n: usize) -> serde_json::Value {
    let script = dir.join("grpc_calls.py");
    std::fs::write(&script, GRPC_CLIENT).expect("write client");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([
            &target.to_string(),
            authority,
            "/demo.Echo/Say",
            &n.to_string(),
        ])
        .output()
        .expect("python3 is not installed: run scripts/test.sh, which installs grpcio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the grpcio client failed (is grpcio installed? scripts/test.sh installs it): {stderr}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("client output ({e}): {text}"))
}

#[tokio::test]
async fn a_grpc_caller_over_the_limit_gets_resource_exhausted() {
    let (dir, _echo, caller) = static_pair(
        "rl-grpc",
        "grpc",
        &route_with_limit("{requestsPerSecond: 1, burst: 2}"),
    )
    .await;
    let calls = grpcio_calls(&dir, caller.outbound, "echo", 4);
    println!("{calls}");
    let calls = calls.as_array().expect("a list");
    assert_eq!(calls[0]["code"], "OK", "{calls:?}");
    let over = calls
        .iter()
        .filter(|c| c["code"] == "RESOURCE_EXHAUSTED")
        .collect::<Vec<_>>();
    // Two tokens, four calls well within a second: at least one is refused.
    assert!(!over.is_empty(), "{calls:?}");
    for c in &over {
        assert_eq!(c["trailing"]["trellis-error"], "rate-limited", "{c}");
        assert_eq!(c["trailing"]["retry-after"], "1", "{c}");
        assert!(
            c["details"]
                .as_str()
                .unwrap_or("")
                .starts_with("rate-limited: "),
            "{c}"
        );
    }
    let refused = counter(
        caller.admin,
        "trellis_requests_total",
        &[("reason", "rate-limited"), ("grpc_status", "8")],
    )
    .await;
    assert_eq!(refused, over.len() as f64);
}

const MESH: &str = "apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {name: mesh}
spec: {mtls: {mode: Strict}}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: backend}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: RateLimitPolicy
metadata: {name: backend-limit}
spec:
  service: backend
  identity: {requestsPerSecond: 10, burst: 5}
  total: {requestsPerSecond: 15, burst: 5}
";

fn sidecar(dir: &Path, control: SocketAddr, name: &str, service: &str, extra: &[String]) -> Proc {
    let mut args = vec![
        "proxy".to_string(),
        format!("--control=http://{control}"),
        format!("--node-id={name}"),
        format!("--service={service}"),
        "--lease-ttl=2s".into(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(dir, name, &args)
}

async fn holds_kind(admin: SocketAddr, kind: &str) -> bool {
    let config = common::mesh::config_of(admin).await;
    config["resources"]
        .as_array()
        .is_some_and(|rs| rs.iter().any(|r| r["kind"] == kind))
}

#[tokio::test]
async fn each_caller_identity_gets_its_share_while_the_total_holds() {
    let dir = tempdir("rl-fair");
    let control = free_addr();
    let _cp = Proc::spawn(
        &dir,
        "control",
        &[
            "control".into(),
            format!("--listen={control}"),
            format!("--data-dir={}", dir.join("data").display()),
        ],
    );
    wait_api(control).await;
    common::mesh::apply(&format!("http://{control}"), &dir, MESH);

    let p = Ports::free();
    let _app = Proc::spawn(
        &dir,
        "backend-app",
        &[
            "demo-app".into(),
            format!("--listen={}", p.app),
            "--name=backend".into(),
            "--instance=backend-1".into(),
        ],
    );
    let _backend = sidecar(
        &dir,
        control,
        "backend-1",
        "backend",
        &[
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
        ],
    );
    // Two callers, two identities: `noisy` with four loops, `quiet` with two.
    let mut callers = Vec::new();
    for name in ["noisy", "quiet"] {
        let (port, admin) = (free_addr(), free_addr());
        let proc = sidecar(
            &dir,
            control,
            &format!("{name}-1"),
            name,
            &[
                "--outbound=off".into(),
                format!("--upstream=backend={port}"),
                format!("--admin={admin}"),
            ],
        );
        callers.push((proc, port, admin));
    }
    wait_ready(p.admin).await;
    for (_, _, admin) in &callers {
        wait_ready(*admin).await;
    }
    // The policy reaches the backend's own sidecar, and no caller.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !holds_kind(p.admin, "RateLimitPolicy").await {
        assert!(
            Instant::now() < deadline,
            "the backend never got its RateLimitPolicy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, _, admin) in &callers {
        assert!(holds_kind(*admin, "Service").await);
        assert!(
            !holds_kind(*admin, "RateLimitPolicy").await,
            "callers do not hold it"
        );
    }
    // Each caller reaches the backend over mTLS (bounded wait), then the buckets refill.
    for (_, port, _) in &callers {
        let client = http1();
        let mut ok = false;
        for _ in 0..100 {
            if get(&client, *port, Some("backend"), "/", &[]).await.status == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "caller reaches the backend");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let app_before = inbound_ok(p.admin).await;

    let length = Duration::from_secs(4);
    let (noisy, quiet) = tokio::join!(
        hammer(callers[0].1, "backend", 4, 3000, length),
        hammer(callers[1].1, "backend", 2, 3000, length),
    );
    let secs = noisy.elapsed.as_secs_f64().max(quiet.elapsed.as_secs_f64());
    println!(
        "identity 10/s burst 5, total 15/s burst 5, {secs:.2} s: noisy {} admitted / {} refused, quiet {} admitted / {} refused",
        noisy.ok, noisy.limited, quiet.ok, quiet.limited
    );
    assert!(
        noisy.other.is_empty() && quiet.other.is_empty(),
        "{noisy:?} {quiet:?}"
    );
    let share_cap = 5.0 + 10.0 * secs + 2.0;
    let total_cap = 5.0 + 15.0 * secs + 2.0;
    // Neither caller exceeds its own share, and neither is starved: with the other at its
    // share of 10/s, the total leaves at least 5/s.
    for (name, r) in [("noisy", &noisy), ("quiet", &quiet)] {
        assert!(
            (r.ok as f64) <= share_cap,
            "{name} admitted {} > {share_cap:.1}",
            r.ok
        );
        assert!(
            (r.ok as f64) >= 0.6 * 5.0 * secs,
            "{name} starved: {} admitted in {secs:.2} s",
            r.ok
        );
        assert!(r.limited > r.ok, "{name} pressed its limit: {r:?}");
    }
    // The total holds, and is used.
    let both = (noisy.ok + quiet.ok) as f64;
    assert!(both <= total_cap, "admitted {both} > {total_cap:.1}");
    assert!(
        both >= 0.7 * 15.0 * secs,
        "admitted only {both} in {secs:.2} s"
    );
    assert_eq!(
        inbound_ok(p.admin).await - app_before,
        both,
        "the app saw the admitted ones"
    );
    // The backend counted refusals per scope.
    let scrape = parse_metrics(&get_status(p.admin, "/metrics").await.unwrap().1);
    let n = |scope| {
        sample(
            &scrape,
            "trellis_rate_limited_total",
            &[
                ("direction", "inbound"),
                ("service", "backend"),
                ("route", "backend-limit"),
                ("scope", scope),
                ("mode", "enforce"),
                ("decision", "limited"),
            ],
        )
    };
    let (by_identity, by_total) = (n("identity"), n("total"));
    println!("refused by identity {by_identity}, by total {by_total}");
    assert_eq!(
        by_identity + by_total,
        (noisy.limited + quiet.limited) as f64
    );
    assert!(by_identity > 0.0 && by_total > 0.0);
    let refused = sample(
        &scrape,
        "trellis_requests_total",
        &[
            ("direction", "inbound"),
            ("code", "429"),
            ("reason", "rate-limited"),
        ],
    );
    assert_eq!(refused, (noisy.limited + quiet.limited) as f64);
}
