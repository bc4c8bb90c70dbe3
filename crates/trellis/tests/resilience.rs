//! Caller-side resilience on loopback: outlier detection ejects a failing endpoint, and
//! connection-pool limits answer `pool-overflow` at once instead of queueing.
mod common;

use common::*;
use std::collections::HashMap;
use std::time::Duration;

async fn start(
    tag: &str,
    specs: &[(&str, &[&str])],
    policy: &str,
) -> (Vec<Instance>, Caller, std::path::PathBuf) {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports: Vec<Ports> = specs.iter().map(|_| Ports::free()).collect();
    let mut text = service("web", "http");
    for ((name, _), p) in specs.iter().zip(&ports) {
        text.push_str(&workload(name, "web", "v1", p.inbound));
    }
    text.push_str(policy);
    write_config(&config, &text);
    let mut instances = Vec::new();
    for ((name, args), p) in specs.iter().zip(&ports) {
        instances.push(start_instance(&dir, &config, "web", name, args, *p));
    }
    let caller = start_caller(&dir, &config, &[]);
    for i in &instances {
        wait_ready(i.admin).await;
        wait_listening(i.app_addr).await;
    }
    wait_ready(caller.admin).await;
    (instances, caller, dir)
}

#[tokio::test]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let policy = "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  loadBalancer: {algorithm: RoundRobin}
  outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 50}
";
    let (_i, caller, _d) = start(
        "outlier",
        &[
            ("web-a", &[]),
            ("web-b", &[]),
            ("web-bad", &["--error-rate=1.0"]),
        ],
        policy,
    )
    .await;
    let c = http1();
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for _ in 0..90 {
        let a = get(&c, caller.outbound, Some("web"), "/", &[]).await;
        *by_status.entry(a.status).or_default() += 1;
    }
    println!("with outlier detection, 90 requests: {by_status:?}");
    let failed = by_status.get(&500).copied().unwrap_or(0);
    assert!(
        failed <= 2,
        "the bad endpoint is ejected after 2 errors, saw {failed}"
    );
    let (_, body) = get_status(caller.admin, "/config").await.unwrap();
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let web = j["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    let ejected: Vec<_> = web["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .collect();
    assert_eq!(
        ejected.len(),
        1,
        "exactly the bad endpoint is ejected: {web}"
    );
}

#[tokio::test]
async fn pool_overflow_fails_fast() {
    let policy = "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  connectionPool: {maxConnections: 1, maxPendingRequests: 1, maxRequests: 100}
";
    let (_i, caller, _d) = start("overflow", &[("web-a", &[])], policy).await;
    let out = caller.outbound;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            get(&http1(), out, Some("web"), "/delay/700", &[]).await
        }));
    }
    let mut ok = 0;
    let mut overflow = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match (a.status, a.header("trellis-error")) {
            (200, _) => ok += 1,
            (503, Some("pool-overflow")) => {
                assert!(a.body.contains("maxConnections"), "{}", a.body);
                overflow += 1;
            }
            other => panic!("unexpected answer {other:?}: {}", a.body),
        }
    }
    println!(
        "6 concurrent slow requests, 1 connection + 1 pending: {ok} ok, {overflow} overflowed"
    );
    assert!(
        ok >= 1 && overflow >= 1,
        "some pass, the rest overflow at once"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn sidecar_health_checks_its_app_with_the_grpc_health_protocol() {
    let policy = "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  healthCheck: {grpc: {}, interval: 100ms, timeout: 100ms, healthyThreshold: 1, unhealthyThreshold: 2}
";
    let (mut instances, _caller, _d) = start("health", &[("web-a", &[])], policy).await;
    let admin = instances[0].admin;
    let health = || async move {
        let (_, body) = get_status(admin, "/config").await.unwrap();
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        j["localApp"]["health"].clone()
    };
    let mut seen = serde_json::Value::Null;
    for _ in 0..100 {
        seen = health().await;
        if seen == "Healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "Healthy");
    let _ = instances[0].app.child.kill();
    for _ in 0..100 {
        seen = health().await;
        if seen.get("Unhealthy").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen["Unhealthy"].as_str().unwrap_or("").contains("connect"),
        "{seen}"
    );
    instances.clear();
}

#[tokio::test]
async fn callers_prefer_their_zone_and_fail_over_in_order() {
    let dir = tempdir("locality");
    let config = dir.join("mesh.yaml");
    let zones = ["zone-a", "zone-b", "zone-c"];
    let ports: Vec<Ports> = zones.iter().map(|_| Ports::free()).collect();
    let mut text = service("web", "http");
    for (zone, p) in zones.iter().zip(&ports) {
        text.push_str(&format!(
            "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: web-{zone}}}\nspec: {{service: web, address: {}, port: {}, zone: {zone}}}\n",
            p.inbound.ip(),
            p.inbound.port()
        ));
    }
    text.push_str(
        "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  outlierDetection: {consecutiveConnectErrors: 1, consecutive5xxErrors: 1, baseEjectionTime: 60s, maxEjectionPercent: 100}
  locality: {failover: [zone-c, zone-b]}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules: [{retries: {attempts: 3, retryOn: [connect-failure, 5xx], backoff: {baseInterval: 1ms}}}]
",
    );
    write_config(&config, &text);
    let mut instances: Vec<Instance> = zones
        .iter()
        .zip(&ports)
        .map(|(zone, p)| {
            let args = [format!("--version={zone}")];
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            start_instance(&dir, &config, "web", &format!("web-{zone}"), &refs, *p)
        })
        .collect();
    let (outbound, admin) = (free_addr(), free_addr());
    let _caller = Proc::spawn(
        &dir,
        "caller",
        &[
            "proxy".into(),
            format!("--config={}", config.display()),
            "--service=caller".into(),
            "--zone=zone-a".into(),
            format!("--outbound={outbound}"),
            format!("--admin={admin}"),
        ],
    );
    for i in &instances {
        wait_ready(i.admin).await;
        wait_listening(i.app_addr).await;
    }
    wait_ready(admin).await;
    let c = http1();
    let zones_seen = |n: usize| {
        let c = c.clone();
        async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..n {
                let a = get(&c, outbound, Some("web"), "/", &[]).await;
                assert_eq!(a.status, 200, "{}", a.body);
                *seen
                    .entry(a.json()["version"].as_str().unwrap().into())
                    .or_default() += 1;
            }
            seen
        }
    };
    let seen = zones_seen(30).await;
    assert_eq!(
        seen.get("zone-a"),
        Some(&30),
        "own zone preferred: {seen:?}"
    );
    // Zone a's only instance dies: fail over to zone c (first in the failover order), not b.
    drop(instances.remove(0));
    let seen = zones_seen(30).await;
    println!("after zone-a failed: {seen:?}");
    assert_eq!(
        seen.get("zone-c"),
        Some(&30),
        "failover follows the configured order: {seen:?}"
    );
}
