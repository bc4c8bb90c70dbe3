//! A dead endpoint costs callers nothing they can see, with no configuration at all, and a
//! sidecar takes traffic only once it can serve it (issue 12).
//!
//! - `kill -9` of one of two instances (app and sidecar) while four clients keep calling: the
//!   killed endpoint stays in the caller's config (a static file: no lease will ever remove it),
//!   there is no DestinationPolicy, and nearly every request still succeeds. Failed connects are
//!   charged to the endpoint (peak-EWMA penalty), counted by default failure accrual, and retried
//!   elsewhere by the implicit retry. Run once with the default balancer (P2C over peak-EWMA) and
//!   once with round robin, which has no load signal at all and relies on accrual alone.
//! - A sidecar on a control plane whose app is not up yet registers as `Unhealthy`, so callers
//!   do not hold it; once the app accepts connections it turns `Healthy` and serves.
//!
//! Every assertion is a count or a state seen by the caller, never a time.
mod common;

use common::mesh::{apply, caller, config_of, control, kill9};
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clients calling at once.
const CONCURRENCY: usize = 4;
/// Requests in all, and how many are answered before the kill.
const REQUESTS: usize = 3000;
const KILL_AFTER: usize = 600;
/// Failures the caller may see out of `REQUESTS`.
const ALLOWED_FAILURES: usize = 5;

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    failures: Vec<String>,
    by_instance: HashMap<String, usize>,
    by_instance_after_kill: HashMap<String, usize>,
}

async fn kill_one_of_two_under_load(tag: &str, policy: &str) -> (Seen, Caller) {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = [Ports::free(), Ports::free()];
    let names = ["web-a", "web-b"];
    let mut text = service("web", "http");
    for (name, p) in names.iter().zip(&ports) {
        text.push_str(&workload(name, "web", "v1", p.inbound));
    }
    text.push_str(policy);
    write_config(&config, &text);
    let mut instances: Vec<Option<Instance>> = names
        .iter()
        .zip(&ports)
        .map(|(name, p)| Some(start_instance(&dir, &config, "web", name, &[], *p)))
        .collect();
    let caller = start_caller(&dir, &config, &[]);
    for i in instances.iter().flatten() {
        wait_ready(i.admin).await;
        wait_listening(i.app_addr).await;
    }
    wait_ready(caller.admin).await;

    let answered = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (answered, killed, seen, next) =
            (answered.clone(), killed.clone(), seen.clone(), next.clone());
        let out = caller.outbound;
        tasks.push(tokio::spawn(async move {
            let c = http1();
            while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                let after_kill = killed.load(Ordering::Relaxed);
                let outcome = call(&c, out).await;
                let mut s = seen.lock().unwrap();
                match outcome {
                    Ok(instance) => {
                        *s.by_instance.entry(instance.clone()).or_default() += 1;
                        if after_kill {
                            *s.by_instance_after_kill.entry(instance).or_default() += 1;
                        }
                    }
                    Err(why) => s.failures.push(why),
                }
                drop(s);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while answered.load(Ordering::Relaxed) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // kill -9 of web-b, app and sidecar, while requests are in flight.
    let Instance { app, sidecar, .. } = instances[1].take().expect("web-b");
    kill9(sidecar);
    kill9(app);
    killed.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    drop(instances);
    (seen, caller)
}

/// One GET through the caller: the answering instance, or what went wrong.
async fn call(c: &H1Client, out: SocketAddr) -> Result<String, String> {
    let req = http::Request::get(format!("http://{out}/"))
        .header("host", "web")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let rsp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("client error: {e}"))?;
    let status = rsp.status();
    let reason = rsp
        .headers()
        .get("trellis-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = http_body_util::BodyExt::collect(rsp.into_body())
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if status != 200 {
        return Err(format!(
            "{status} {reason:?} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let j: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(j["instance"].as_str().unwrap_or("?").to_string())
}

fn report(name: &str, seen: &Seen) {
    println!(
        "{name}: {} requests, {} failed {:?}; answered by {:?}, after the kill by {:?}",
        REQUESTS,
        seen.failures.len(),
        seen.failures,
        seen.by_instance,
        seen.by_instance_after_kill
    );
}

fn assert_survived(seen: &Seen) {
    assert!(
        seen.by_instance.get("web-b").copied().unwrap_or(0) > 0,
        "web-b served before it was killed: {:?}",
        seen.by_instance
    );
    assert!(
        seen.failures.len() <= ALLOWED_FAILURES,
        "{} of {REQUESTS} requests failed (at most {ALLOWED_FAILURES} allowed): {:?}",
        seen.failures.len(),
        seen.failures
    );
    let answered: usize = seen.by_instance.values().sum();
    assert_eq!(answered + seen.failures.len(), REQUESTS);
}

#[tokio::test]
async fn kill9_of_one_of_two_costs_no_requests_with_the_default_balancer() {
    let (seen, caller) = kill_one_of_two_under_load("kill-p2c", "").await;
    report("P2C/peak-EWMA, no DestinationPolicy", &seen);
    assert_survived(&seen);
    // The caller charged the dead endpoint: its latency estimate carries the failure penalty.
    let j = config_of(caller.admin).await;
    let ewma: Vec<f64> = j["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .and_then(|s| s["endpoints"].as_array())
        .map(|eps| eps.iter().filter_map(|e| e["ewmaMs"].as_f64()).collect())
        .unwrap_or_default();
    println!("latency estimates after the kill (ms): {ewma:?}");
    assert!(
        ewma.iter().any(|ms| *ms > 100.0),
        "the killed endpoint costs more than a live one: {ewma:?}"
    );
}

#[tokio::test]
async fn kill9_of_one_of_two_costs_no_requests_with_round_robin_and_no_outlier_detection() {
    let policy = "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  loadBalancer: {algorithm: RoundRobin}
";
    let (seen, caller) = kill_one_of_two_under_load("kill-rr", policy).await;
    report("round robin, no outlier detection", &seen);
    assert_survived(&seen);
    // Round robin has no load signal: default failure accrual is what took it out.
    let backoffs = counter(
        caller.admin,
        "trellis_failure_accrual_backoffs_total",
        &[("service", "web")],
    )
    .await;
    println!("failure accrual back-offs: {backoffs}");
    assert!(backoffs >= 1.0, "the dead endpoint was backed off");
    let retries = counter(
        caller.admin,
        "trellis_retries_total",
        &[("service", "web"), ("outcome", "attempted")],
    )
    .await;
    println!("implicit retries: {retries}");
    assert!(retries >= 1.0, "failed connects were retried elsewhere");
    let after = seen
        .by_instance_after_kill
        .get("web-b")
        .copied()
        .unwrap_or(0);
    assert_eq!(after, 0, "nothing answered from the dead instance");
}

/// A control plane, a caller, and one instance whose app starts only later.
#[tokio::test]
async fn a_sidecar_is_healthy_only_once_its_app_is_reachable() {
    let dir = tempdir("not-yet");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(&url, &dir, &service("web", "http"));
    let p = Ports::free();
    let sidecar = Proc::spawn(
        &dir,
        "web-late-proxy",
        &[
            "proxy".into(),
            format!("--control={url}"),
            "--node-id=web-late".into(),
            "--service=web".into(),
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
            // Long enough that no lease lapses during the test: one gone was revoked.
            "--lease-ttl=60s".into(),
        ],
    );
    let caller = caller(&dir, &url);
    wait_ready(p.admin).await;
    wait_ready(caller.admin).await;
    // The sidecar has its config and certificate, but nothing listens on the app port.
    let health = || {
        let (url, dir) = (url.clone(), dir.clone());
        async move { workload_health(&url, &dir, "web-late").await }
    };
    let mut seen = String::new();
    for _ in 0..100 {
        seen = health().await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "Unhealthy", "registered, but not as Healthy");
    // Well past several health periods, still unhealthy and not an endpoint of the caller.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(health().await, "Unhealthy");
    assert_eq!(endpoint_count(caller.admin).await, 0);
    let a = get(&http1(), caller.outbound, Some("web"), "/", &[]).await;
    assert_eq!(
        (a.status, a.header("trellis-error")),
        (503, Some("no-healthy-endpoints")),
        "the caller does not send to a sidecar that cannot serve: {}",
        a.body
    );

    // The app comes up: the workload turns Healthy and the caller is served.
    let _app = Proc::spawn(
        &dir,
        "web-late-app",
        &[
            "demo-app".into(),
            format!("--listen={}", p.app),
            "--name=web".into(),
            "--instance=web-late".into(),
        ],
    );
    let mut status = 0;
    for _ in 0..200 {
        let a = get(&http1(), caller.outbound, Some("web"), "/", &[]).await;
        status = a.status;
        if status == 200 {
            assert_eq!(a.json()["instance"], "web-late");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "served once the app is up");
    assert_eq!(health().await, "Healthy");

    // Turning Healthy registered the workload again under a new lease; the first one, holding
    // nothing now, was revoked rather than left to linger for its 60 s.
    let leases: Vec<i64> = (sidecar.log_text().lines())
        .filter(|l| l.contains("registered with the control plane"))
        .filter_map(|l| l.split("lease=\"").nth(1)?.split('"').next())
        .map(|hex| i64::from_str_radix(hex, 16).expect("a hex lease id"))
        .collect();
    assert!(
        leases.len() >= 2,
        "registered as Unhealthy, then Healthy: {leases:?}"
    );
    let keep_alive = |id: i64| {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            &format!("{url}/api/v1/leases/{id}"),
        ])
    };
    assert_eq!(keep_alive(leases[0]), "404", "the first lease was revoked");
    assert_eq!(
        keep_alive(*leases.last().unwrap()),
        "200",
        "the last lease lives"
    );
    assert_eq!(
        health().await,
        "Healthy",
        "revoking the old lease kept the workload"
    );
}

async fn endpoint_count(admin: SocketAddr) -> usize {
    let j = config_of(admin).await;
    j["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .and_then(|s| s["endpoints"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The registered workload's `spec.health`, or empty when it is not registered.
async fn workload_health(url: &str, dir: &std::path::Path, name: &str) -> String {
    let (url, dir, name) = (url.to_string(), dir.to_path_buf(), name.to_string());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(BIN)
            .env("TRELLIS_TOKEN", TOKEN)
            .env("TRELLIS_CONTROL", &url)
            .current_dir(&dir)
            .args(["get", "workload", &name, "-o", "json"])
            .output()
            .expect("trellis get");
        if !out.status.success() {
            return String::new();
        }
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        j["spec"]["health"].as_str().unwrap_or("").to_string()
    })
    .await
    .expect("get task")
}
