//! A steered mesh with real processes: `trellis control` pushes config to sidecars that register
//! themselves. A Route applied while traffic flows changes the split at the client; a killed
//! instance leaves every endpoint set within its lease; traffic goes on while the control plane
//! is away and proxies resync when it returns; and with three replicas over a real etcd, killing
//! the one a proxy is connected to moves it to another with no failed request.
mod common;

use common::mesh::*;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVICE: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  loadBalancer: {algorithm: RoundRobin}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

fn route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: trellis.dev/v1
kind: Route
metadata: {{name: web}}
spec:
  service: web
  rules:
    - backends: [{{service: web, subset: v1, weight: {v1}}}, {{service: web, subset: v2, weight: {v2}}}]
      retries: {{attempts: 3, retryOn: [connect-failure, reset, gateway-error], backoff: {{baseInterval: 5ms}}}}
"
    )
}

struct Mesh {
    dir: PathBuf,
    cp: Proc,
    cp_addr: SocketAddr,
    url: String,
    _instances: Vec<(Proc, Proc, SocketAddr)>,
    caller: Caller,
}

async fn mesh(tag: &str) -> Mesh {
    let dir = tempdir(tag);
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(&url, &dir, &format!("{SERVICE}---\n{}", route(1, 0)));
    let instances = vec![
        instance(&dir, &url, "web-v1", "v1"),
        instance(&dir, &url, "web-v2", "v2"),
    ];
    let caller = caller(&dir, &url);
    for (_, _, admin) in &instances {
        wait_ready(*admin).await;
    }
    wait_ready(caller.admin).await;
    wait_endpoints(caller.admin, 2).await;
    Mesh {
        dir,
        cp,
        cp_addr,
        url,
        _instances: instances,
        caller,
    }
}

#[tokio::test]
async fn applied_route_changes_the_split_while_traffic_flows() {
    let m = mesh("cp-split").await;
    let l = load(m.caller.outbound);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = l.reset();
    let applied_at = Instant::now();
    apply(&m.url, &m.dir, &route(0, 1));
    // Wait until the caller sees the new route, then measure.
    loop {
        let a = get(&http1(), m.caller.outbound, Some("web"), "/", &[]).await;
        if a.json()["version"] == "v2" {
            break;
        }
        assert!(
            applied_at.elapsed() < Duration::from_secs(10),
            "route never arrived"
        );
    }
    println!("route took effect {:?} after apply", applied_at.elapsed());
    l.reset();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (failed, after) = l.finish().await;
    println!("before: {before:?} after: {after:?} failed: {failed}");
    assert_eq!(before.get("v2"), None, "before the apply all went to v1");
    assert!(after.get("v2").copied().unwrap_or(0) > 10 && !after.contains_key("v1"));
    assert_eq!(failed, 0, "no request failed across the change");
}

#[tokio::test]
async fn killed_instance_leaves_within_its_lease() {
    let mut m = mesh("cp-kill").await;
    apply(&m.url, &m.dir, &route(1, 1));
    let (_, sidecar, _) = &mut m._instances[1];
    let killed_at = Instant::now();
    let _ = Command::new("kill")
        .args(["-9", &sidecar.pid().to_string()])
        .status();
    wait_endpoints(m.caller.admin, 1).await;
    let gone = killed_at.elapsed();
    println!("kill -9 to gone from the caller's endpoints: {gone:?} (lease TTL 2 s)");
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .args(["get", "workloads"])
        .env("TRELLIS_CONTROL", &m.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("web-v2") && text.contains("web-v1"),
        "{text}"
    );
}

#[tokio::test]
async fn traffic_continues_without_the_control_plane_and_resyncs() {
    let mut m = mesh("cp-away").await;
    let l = load(m.caller.outbound);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = Command::new("kill")
        .args(["-9", &m.cp.pid().to_string()])
        .status();
    let _ = m.cp.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = l.reset();
    assert!(during.get("v1").copied().unwrap_or(0) > 10, "{during:?}");
    // Back on the same data: proxies reconnect and take the next change.
    m.cp = control(&m.dir, "control", m.cp_addr, "embedded");
    wait_api(m.cp_addr).await;
    apply(&m.url, &m.dir, &route(0, 1));
    let start = Instant::now();
    loop {
        let a = get(&http1(), m.caller.outbound, Some("web"), "/", &[]).await;
        if a.status == 200 && a.json()["version"] == "v2" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "proxies never resynced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "resynced {:?} after the control plane came back",
        start.elapsed()
    );
    let (failed, _) = l.finish().await;
    assert_eq!(
        failed, 0,
        "no request failed while the control plane was away"
    );
}

#[tokio::test]
async fn three_replicas_over_etcd_fail_over_without_a_failed_request() {
    let dir = tempdir("cp-etcd");
    let (_etcd, client) = etcd(&dir);
    wait_etcd(&client).await;
    let store = format!("etcd://{client}");
    let mut reps = Replicas::start(&dir, 3, &store).await;
    let (urls, all) = (reps.urls.clone(), reps.all());
    apply(&urls[0], &dir, &format!("{SERVICE}---\n{}", route(1, 0)));
    let instances = vec![
        instance(&dir, &all, "web-v1", "v1"),
        instance(&dir, &all, "web-v2", "v2"),
    ];
    let caller = caller(&dir, &all);
    wait_mesh(&instances, &caller, 2).await;
    // Every replica sees the registrations made through any of them.
    for u in &urls {
        let out = Command::new(BIN)
            .env("TRELLIS_TOKEN", TOKEN)
            .args(["get", "workloads"])
            .env("TRELLIS_CONTROL", u)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("web-v1") && text.contains("web-v2"),
            "{u}: {text}"
        );
    }
    let l = load(caller.outbound);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let connected = config_of(caller.admin).await["controlPlane"]["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let victim = urls
        .iter()
        .position(|u| connected.starts_with(u.as_str()))
        .unwrap_or_else(|| panic!("caller connected to {connected:?}, not one of {urls:?}"));
    let p = reps.procs[victim].take().unwrap();
    let _ = Command::new("kill")
        .args(["-9", &p.pid().to_string()])
        .status();
    drop(p);
    let start = Instant::now();
    let moved_to = loop {
        let now = config_of(caller.admin).await["controlPlane"]["endpoint"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ready = config_of(caller.admin).await["controlPlane"]["ready"] == true;
        if ready && !now.is_empty() && now != connected {
            break now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the caller never failed over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "caller moved from {connected} to {moved_to} in {:?}",
        start.elapsed()
    );
    let survivor = (victim + 1) % 3;
    apply(&urls[survivor], &dir, &route(0, 1));
    let start = Instant::now();
    loop {
        let a = get(&http1(), caller.outbound, Some("web"), "/", &[]).await;
        if a.status == 200 && a.json()["version"] == "v2" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "change through a survivor never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (failed, seen) = l.finish().await;
    println!("traffic across the failover: {seen:?}, failed {failed}");
    assert_eq!(failed, 0, "no request failed across the replica's death");
}

#[tokio::test]
async fn check_and_proxy_config_report_sync_state() {
    let m = mesh("cp-check").await;
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .env("TRELLIS_TOKEN", TOKEN)
            .args(args)
            .env("TRELLIS_CONTROL", &m.url)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = run(&["check"]);
    println!("{out}");
    assert!(ok, "{out}");
    assert!(out.contains("ok   proxy caller is in sync"), "{out}");
    assert!(
        out.contains("ok   workload web-v1 has a connected proxy"),
        "{out}"
    );
    let (ok, out) = run(&["proxy-config", "caller"]);
    assert!(ok, "{out}");
    assert!(out.contains("in sync") && out.contains("Route"), "{out}");
    let (ok, out) = run(&["proxy-config", "web"]);
    assert!(
        ok && out.contains("proxy web-v1") && out.contains("proxy web-v2"),
        "{out}"
    );
    let (ok, _) = run(&["proxy-config", "nobody"]);
    assert!(!ok);
    // A registered workload without its proxy is a failed check.
    drop(m.caller);
    let (ok, _) = run(&["check"]);
    assert!(
        ok,
        "the caller registered no workload, so its absence is fine"
    );
}

#[tokio::test]
async fn unhealthy_app_leaves_the_endpoint_set_and_returns() {
    let dir = tempdir("cp-health");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    let policy = SERVICE.replace(
        "  loadBalancer: {algorithm: RoundRobin}\n",
        "  loadBalancer: {algorithm: RoundRobin}\n  healthCheck: {http: {path: /health}, interval: 200ms, timeout: 200ms, unhealthyThreshold: 2}\n",
    );
    apply(&url, &dir, &policy);
    let (_a1, _s1, admin1) = instance(&dir, &url, "web-v1", "v1");
    // The second instance by hand, so its app can be stopped and started on the same port.
    let p = Ports::free();
    let app_args = |n: &str| {
        vec![
            "demo-app".to_string(),
            format!("--listen={}", p.app),
            "--name=web".into(),
            "--version=v2".into(),
            format!("--instance={n}"),
        ]
    };
    let app = Proc::spawn(&dir, "web-v2-app", &app_args("web-v2"));
    let _sidecar = Proc::spawn(
        &dir,
        "web-v2-proxy",
        &[
            "proxy".into(),
            format!("--control={url}"),
            "--node-id=web-v2".into(),
            "--service=web".into(),
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
            "--label=version=v2".into(),
            "--lease-ttl=2s".into(),
        ],
    );
    let caller = caller(&dir, &url);
    wait_ready(admin1).await;
    wait_ready(p.admin).await;
    wait_ready(caller.admin).await;
    wait_endpoints(caller.admin, 2).await;
    drop(app);
    let gone = wait_endpoints(caller.admin, 1).await;
    println!("app stopped → out of the caller's endpoints in {gone:?}");
    let _app = Proc::spawn(&dir, "web-v2-app-again", &app_args("web-v2"));
    let back = wait_endpoints(caller.admin, 2).await;
    println!("app healthy again → back in {back:?}");
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..20 {
        let a = get(&http1(), caller.outbound, Some("web"), "/", &[]).await;
        assert_eq!(a.status, 200);
        *seen
            .entry(a.json()["version"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert!(
        seen.contains_key("v2"),
        "the recovered instance serves again: {seen:?}"
    );
}

/// Health (readiness) follows the store: while etcd answers, 200; once it is gone, 503 naming
/// the store, never a cheerful "ok" from a replica that can take no apply or registration.
/// Liveness stays 200: restarting the replica would not bring etcd back.
#[tokio::test]
async fn health_fails_while_the_store_is_unreachable() {
    let dir = tempdir("cp-health");
    let (mut etcd_proc, client) = etcd(&dir);
    wait_etcd(&client).await;
    let addr = free_addr();
    let _cp = control(&dir, "cp", addr, &format!("etcd://{client}"));
    wait_api(addr).await;
    let (status, body) = get_status(addr, "/api/v1/health").await.expect("health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let _ = etcd_proc.child.kill();
    let _ = etcd_proc.child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (0, String::new());
    while Instant::now() < deadline {
        last = get_status(addr, "/api/v1/health")
            .await
            .expect("health answers");
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 503, "health with etcd gone: {last:?}");
    assert!(
        last.1.contains("store unreachable") && last.1.contains("etcd"),
        "the answer names the store: {last:?}"
    );
    let (status, _) = get_status(addr, "/api/v1/ready").await.expect("ready");
    assert_eq!(status, 503, "readiness includes the store");
    let (status, body) = get_status(addr, "/api/v1/live").await.expect("live");
    assert_eq!((status, body.as_str()), (200, "ok\n"), "liveness does not");
}
