//! Routing end to end: canary split within tolerance, retries masking a failing endpoint, a
//! timeout that answers with its reason, matches/rewrites/header changes, mirroring, and a hot
//! reload that changes routing while a long request finishes on the old config.
mod common;

use common::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

struct Mesh {
    dir: PathBuf,
    config: PathBuf,
    instances: Vec<Instance>,
    caller: Caller,
}

/// Starts instances of service `web` (one per `(name, version, app args)`), writes config with
/// `extra` documents appended, and a caller.
async fn mesh(tag: &str, specs: &[(&str, &str, &[&str])], extra: &str) -> Mesh {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let mut text = service("web", "http");
    let ports: Vec<Ports> = specs.iter().map(|_| Ports::free()).collect();
    for ((name, version, _), p) in specs.iter().zip(&ports) {
        text.push_str(&workload(name, "web", version, p.inbound));
    }
    text.push_str(extra);
    write_config(&config, &text);
    let mut instances = Vec::new();
    for ((name, version, args), p) in specs.iter().zip(&ports) {
        let mut app_args = vec![format!("--version={version}")];
        app_args.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = app_args.iter().map(String::as_str).collect();
        instances.push(start_instance(&dir, &config, "web", name, &refs, *p));
    }
    let caller = start_caller(&dir, &config, &[]);
    for i in &instances {
        wait_ready(i.admin).await;
        wait_listening(i.app_addr).await;
    }
    wait_ready(caller.admin).await;
    Mesh {
        dir,
        config,
        instances,
        caller,
    }
}

const SUBSETS: &str = "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  loadBalancer: {algorithm: RoundRobin}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
";

fn split_route(v1: u32, v2: u32) -> String {
    format!(
        "---
apiVersion: trellis.dev/v1
kind: Route
metadata: {{name: web}}
spec:
  service: web
  rules:
    - backends:
        - {{service: web, subset: v1, weight: {v1}}}
        - {{service: web, subset: v2, weight: {v2}}}
"
    )
}

async fn versions(m: &Mesh, n: usize, path: &str) -> HashMap<String, usize> {
    let client = http1();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let a = get(&client, m.caller.outbound, Some("web"), path, &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        *seen
            .entry(a.json()["version"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn canary_split_is_within_tolerance() {
    let extra = format!("{SUBSETS}{}", split_route(80, 20));
    let m = mesh(
        "split",
        &[("web-v1", "v1", &[]), ("web-v2", "v2", &[])],
        &extra,
    )
    .await;
    let n = 1000;
    let seen = versions(&m, n, "/").await;
    let v2 = *seen.get("v2").unwrap_or(&0) as f64 / n as f64;
    println!("canary split 80/20 over {n} requests: {seen:?} (v2 share {v2:.3})");
    // Binomial(1000, 0.2): sd ≈ 0.0126; ±5 sd.
    assert!(
        (0.137..=0.263).contains(&v2),
        "v2 share {v2} outside tolerance"
    );
    // The caller's metrics count each request under the subset it went to: exactly what the
    // apps answered.
    for version in ["v1", "v2"] {
        let counted = counter(
            m.caller.admin,
            "trellis_requests_total",
            &[("direction", "outbound"), ("destination_subset", version)],
        )
        .await;
        assert_eq!(
            counted,
            *seen.get(version).unwrap_or(&0) as f64,
            "{version}: {seen:?}"
        );
    }
}

#[tokio::test]
async fn retries_mask_a_failing_endpoint() {
    let route = "---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
    - retries:
        attempts: 3
        retryOn: [5xx, connect-failure]
        backoff: {baseInterval: 1ms, maxInterval: 5ms}
";
    let policy = "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  loadBalancer: {algorithm: RoundRobin}
";
    let extra = format!("{policy}{route}");
    let m = mesh(
        "retry",
        &[
            ("web-good", "v1", &[]),
            ("web-bad", "v2", &["--error-rate=1.0"]),
        ],
        &extra,
    )
    .await;
    let seen = versions(&m, 200, "/").await;
    println!("with retries, 200 requests answered by {seen:?}");
    assert_eq!(
        seen.get("v1"),
        Some(&200),
        "every request must succeed via v1"
    );
    // The failing endpoint really was tried (and its 500s retried away).
    let metrics = get_status(m.caller.admin, "/metrics").await.unwrap().1;
    let scrape = parse_metrics(&metrics);
    let retries = sample(
        &scrape,
        "trellis_retries_total",
        &[("outcome", "attempted")],
    );
    assert!(retries >= 50.0, "expected retries to happen, saw {retries}");

    // Without the route the failures show: the retry was what masked them.
    let text = std::fs::read_to_string(&m.config)
        .unwrap()
        .replace(route, "");
    write_config(&m.config, &text);
    wait_version(m.caller.admin, 2).await;
    let client = http1();
    let mut failed = 0;
    for _ in 0..20 {
        if get(&client, m.caller.outbound, Some("web"), "/", &[])
            .await
            .status
            == 500
        {
            failed += 1;
        }
    }
    assert!(
        failed > 0,
        "without retries the bad endpoint's errors reach the caller"
    );
}

#[tokio::test]
async fn timeout_answers_504_with_reason() {
    let route = "---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
    - timeout: 200ms
";
    let m = mesh("timeout", &[("web-v1", "v1", &[])], route).await;
    let client = http1();
    let a = get(&client, m.caller.outbound, Some("web"), "/delay/3000", &[]).await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.header("trellis-error"), Some("timeout"));
    assert!(a.body.contains("200ms"), "the body explains: {}", a.body);
    let a = get(&client, m.caller.outbound, Some("web"), "/delay/10", &[]).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn matches_rewrites_and_header_changes() {
    let route = "---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
    - name: api
      matches:
        - path: {type: PathPrefix, value: /api}
          method: GET
          headers: [{name: x-user, type: RegularExpression, value: 'ad.*'}]
          queryParams: [{name: debug, value: '1'}]
      backends: [{service: web, subset: v2}]
      rewrite: {path: /internal}
      requestHeaders: {set: {x-added: yes-it-is}, remove: [x-drop]}
      responseHeaders: {add: {x-route: api}}
    - name: exact
      matches: [{path: {type: Exact, value: /only}}]
      backends: [{service: web, subset: v1}]
    - name: regex
      matches: [{path: {type: RegularExpression, value: '/items/[0-9]+'}}]
      backends: [{service: web, subset: v2}]
";
    let extra = format!("{SUBSETS}{route}");
    let m = mesh(
        "match",
        &[("web-v1", "v1", &[]), ("web-v2", "v2", &[])],
        &extra,
    )
    .await;
    let c = http1();
    let out = m.caller.outbound;
    let a = get(
        &c,
        out,
        Some("web"),
        "/api/users?debug=1",
        &[("x-user", "admin"), ("x-drop", "1")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let j = a.json();
    assert_eq!(j["version"], "v2");
    assert_eq!(j["path"], "/internal/users?debug=1");
    assert_eq!(j["headers"]["x-added"], "yes-it-is");
    assert!(j["headers"].get("x-drop").is_none());
    assert_eq!(a.header("x-route"), Some("api"));
    // Header regex must match: `bob` does not, and no later rule matches either.
    let a = get(
        &c,
        out,
        Some("web"),
        "/api/users?debug=1",
        &[("x-user", "bob")],
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.header("trellis-error"), Some("no-route"));
    // Prefix is by path element.
    let a = get(
        &c,
        out,
        Some("web"),
        "/apix?debug=1",
        &[("x-user", "admin")],
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(
        get(&c, out, Some("web"), "/only", &[]).await.json()["version"],
        "v1"
    );
    assert_eq!(
        get(&c, out, Some("web"), "/only/not", &[]).await.status,
        404
    );
    assert_eq!(
        get(&c, out, Some("web"), "/items/42", &[]).await.json()["version"],
        "v2"
    );
    assert_eq!(get(&c, out, Some("web"), "/items/x", &[]).await.status, 404);
}

#[tokio::test]
async fn mirror_copies_traffic_fire_and_forget() {
    let route = "---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
    - backends: [{service: web, subset: v1}]
      mirror: {service: web, subset: v2, percent: 100}
";
    let extra = format!("{SUBSETS}{route}");
    let m = mesh(
        "mirror",
        &[
            ("web-v1", "v1", &[]),
            ("web-v2", "v2", &["--latency=300ms"]),
        ],
        &extra,
    )
    .await;
    let seen = versions(&m, 20, "/").await;
    assert_eq!(seen.get("v1"), Some(&20), "callers only see the primary");
    // The mirror's sidecar saw the copies.
    let mirror_admin = m.instances[1].admin;
    let mut served = 0.0;
    for _ in 0..100 {
        let text = get_status(mirror_admin, "/metrics").await.unwrap().1;
        served = sample(
            &parse_metrics(&text),
            "trellis_requests_total",
            &[("direction", "inbound"), ("code", "200")],
        );
        if served >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, 20.0, "every request was mirrored to v2");
}

#[tokio::test]
async fn hot_reload_changes_routing_while_a_long_request_finishes() {
    let extra = format!("{SUBSETS}{}", split_route(1, 0));
    let m = mesh(
        "reload",
        &[("web-v1", "v1", &[]), ("web-v2", "v2", &[])],
        &extra,
    )
    .await;
    let client = http1();
    let out = m.caller.outbound;
    let long = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, out, Some("web"), "/delay/1500", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&m.config)
        .unwrap()
        .replace(&split_route(1, 0), &split_route(0, 1));
    write_config(&m.config, &text);
    wait_version(m.caller.admin, 2).await;
    let a = get(&client, out, Some("web"), "/", &[]).await;
    assert_eq!(
        a.json()["version"],
        "v2",
        "new requests follow the new route"
    );
    let done = long.await.unwrap();
    assert_eq!(
        done.status, 200,
        "the in-flight request finished: {}",
        done.body
    );
    assert_eq!(done.json()["version"], "v1");
    assert!(!m.dir.as_os_str().is_empty());
}

/// Waits until the proxy's `/config` reports `version` (bounded: 10 s).
pub async fn wait_version(admin: std::net::SocketAddr, version: u64) {
    for _ in 0..200 {
        let (_, body) = get_status(admin, "/config").await.unwrap();
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        if j["version"].as_u64() == Some(version) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("proxy never reached config version {version}");
}

#[tokio::test]
async fn per_try_timeout_retries_away_from_a_hanging_endpoint() {
    let extra = "---
apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {name: web}
spec:
  service: web
  loadBalancer: {algorithm: RoundRobin}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules:
    - timeout: 5s
      retries:
        attempts: 2
        perTryTimeout: 150ms
        retryOn: [5xx]
        backoff: {baseInterval: 1ms}
";
    let m = mesh(
        "pertry",
        &[
            ("web-fast", "v1", &[]),
            ("web-hung", "v2", &["--latency=3s"]),
        ],
        extra,
    )
    .await;
    let seen = versions(&m, 20, "/").await;
    assert_eq!(
        seen.get("v1"),
        Some(&20),
        "the hanging endpoint is retried away: {seen:?}"
    );
}

#[tokio::test]
async fn exhausted_retries_say_so() {
    let dir = tempdir("exhausted");
    let config = dir.join("mesh.yaml");
    let text = format!(
        "{}{}{}---
apiVersion: trellis.dev/v1
kind: Route
metadata: {{name: web}}
spec:
  service: web
  rules:
    - retries: {{attempts: 3, retryOn: [connect-failure], backoff: {{baseInterval: 1ms}}}}
",
        service("web", "http"),
        workload("dead-a", "web", "v1", free_addr()),
        workload("dead-b", "web", "v1", free_addr()),
    );
    write_config(&config, &text);
    let caller = start_caller(&dir, &config, &[]);
    wait_ready(caller.admin).await;
    let a = get(&http1(), caller.outbound, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("trellis-error"), Some("retries-exhausted"));
    assert!(a.body.contains("3 attempts"), "{}", a.body);
}
