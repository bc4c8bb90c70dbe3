//! On-demand discovery end to end (`trellis proxy --on-demand`), real processes: a caller
//! sidecar starts with nothing but its own config; its first call to a service discovers it and
//! is answered by the service; a name the mesh does not have is `404 no-route` at once; a service
//! deleted while subscribed goes away; and with the control plane gone, a first call to a new
//! service is `503 discovery-timeout` while the services already discovered keep working.
mod common;

use common::mesh::*;
use common::*;
use std::process::Command;

const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: other}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: other-0}
spec: {service: other, address: 127.0.0.1, port: 9}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: later}
spec: {ports: [{port: 80, protocol: http}]}
";

/// The names of the Services a proxy's config holds.
async fn services_held(admin: std::net::SocketAddr) -> Vec<String> {
    let config = config_of(admin).await;
    let mut names: Vec<String> = config["resources"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|r| r["kind"] == "Service")
        .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn workloads_held(config: &serde_json::Value) -> usize {
    config["resources"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|r| r["kind"] == "Workload").count())
}

#[tokio::test]
async fn first_calls_discover_unknown_names_fail_fast_and_deletions_reach_the_proxy() {
    let dir = tempdir("on-demand");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let mut cp = Some(control(&dir, "control", cp_addr, "embedded"));
    wait_api(cp_addr).await;
    apply(&url, &dir, MESH);
    let web = instance(&dir, &url, "web-0", "v1");
    wait_ready(web.2).await;

    let (outbound, admin) = (free_addr(), free_addr());
    let _caller = Proc::spawn(
        &dir,
        "caller",
        &[
            "proxy".into(),
            format!("--control={url}"),
            "--node-id=caller".into(),
            "--service=caller".into(),
            format!("--outbound={outbound}"),
            format!("--admin={admin}"),
            "--on-demand".into(),
            "--discovery-timeout=2s".into(),
        ],
    );
    wait_ready(admin).await;
    // Nothing but its own: no other service, no endpoint of anyone.
    assert!(
        services_held(admin).await.is_empty(),
        "{:?}",
        services_held(admin).await
    );
    let config = config_of(admin).await;
    assert_eq!(workloads_held(&config), 0, "{}", config["resources"]);

    let client = http1();
    // The first call discovers web and reaches it.
    let a = get(&client, outbound, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 200, "{} {:?}", a.body, a.header("trellis-error"));
    assert_eq!(services_held(admin).await, ["web"], "only what was called");
    for _ in 0..20 {
        let a = get(&client, outbound, Some("web"), "/", &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    // A name the mesh does not have: no-route, as on a proxy holding everything.
    let a = get(&client, outbound, Some("nope"), "/", &[]).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.header("trellis-error"), Some("no-route"));
    assert_eq!(services_held(admin).await, ["web"]);

    // Deleting web while subscribed takes it (and its endpoint) away.
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .env("TRELLIS_CONTROL", &url)
        .args(["delete", "Service", "web"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !services_held(admin).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "web still held after its deletion"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let a = get(&client, outbound, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 404, "{}", a.body);

    // Discover other, then lose the control plane: other stays (its endpoint refuses, so
    // the answer is the proxy's, not a discovery one), a new name times out with its reason.
    let a = get(&client, outbound, Some("other"), "/", &[]).await;
    assert_ne!(a.header("trellis-error"), Some("no-route"), "{}", a.body);
    assert_ne!(
        a.header("trellis-error"),
        Some("discovery-timeout"),
        "{}",
        a.body
    );
    if let Some(p) = cp.take() {
        kill9(p);
    }
    let a = get(&client, outbound, Some("later"), "/", &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(
        a.header("trellis-error"),
        Some("discovery-timeout"),
        "{}",
        a.body
    );
    let a = get(&client, outbound, Some("other"), "/", &[]).await;
    assert_ne!(
        a.header("trellis-error"),
        Some("discovery-timeout"),
        "{}",
        a.body
    );
    assert!(services_held(admin).await.contains(&"other".to_string()));
}
