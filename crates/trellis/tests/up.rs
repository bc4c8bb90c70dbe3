//! `trellis up` on the bundled example: every service answers through the mesh, the canary
//! split shows both versions, and the retried flaky service looks healthy to callers.
mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// `trellis up` on `example`, stopped when dropped; returns once it printed its ready line.
fn up(example: &str) -> common::up::Up {
    common::up::up(example, "120s", Duration::from_secs(60))
}

#[tokio::test]
async fn up_runs_the_example_mesh() {
    let mesh = up("mesh.yaml");
    let outbound = mesh.outbound;
    let c = http1();
    let mut versions = std::collections::HashMap::<String, usize>::new();
    for _ in 0..200 {
        let a = get(&c, outbound, Some("reviews"), "/", &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        *versions
            .entry(a.json()["version"].as_str().unwrap().into())
            .or_default() += 1;
    }
    println!("reviews over 200 requests: {versions:?}");
    assert!(versions.get("v1").copied().unwrap_or(0) > 140);
    assert!(versions.get("v2").copied().unwrap_or(0) > 0);
    let a = get(
        &c,
        outbound,
        Some("reviews"),
        "/",
        &[("x-canary", "always")],
    )
    .await;
    assert_eq!(a.json()["version"], "v2");
    // The example's AuthorizationPolicy: callers in the mesh, but nobody on /admin.
    let a = get(&c, outbound, Some("reviews"), "/admin/stats", &[]).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.header("trellis-error"), Some("denied"));
    assert!(a.body.contains("reviews/no-admin"), "{}", a.body);
    let mut ok = 0;
    for _ in 0..100 {
        if get(&c, outbound, Some("ratings"), "/", &[]).await.status == 200 {
            ok += 1;
        }
    }
    println!("ratings (20% errors, retried): {ok}/100 succeeded");
    // 3 attempts at 20% errors: P(fail) = 0.8%; budget ratio 0.5 allows them.
    assert!(ok >= 95, "retries should mask most errors, got {ok}/100");
    drop(mesh);
}

#[tokio::test]
async fn up_runs_the_resilience_example() {
    let mesh = up("resilience.yaml");
    let c = http1();
    let ejected = || async {
        let (_, body) = get_status(mesh.admin, "/config").await.unwrap();
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        let services = j["services"].as_array().cloned().unwrap_or_default();
        let checkout = services.iter().find(|s| s["name"] == "checkout").cloned();
        checkout.map_or(0, |c| {
            c["endpoints"]
                .as_array()
                .map_or(0, |e| e.iter().filter(|e| e["ejected"] == true).count())
        })
    };
    // The canary fails half its requests: it is ejected once three of its tries fail in a row,
    // which takes a random number of requests; retries hide the failures meanwhile.
    let (mut ok, mut sent) = (0, 0);
    while sent < 600 {
        for _ in 0..20 {
            sent += 1;
            if get(&c, mesh.outbound, Some("checkout"), "/", &[])
                .await
                .status
                == 200
            {
                ok += 1;
            }
        }
        if ejected().await == 1 {
            break;
        }
    }
    println!("checkout (one instance failing 50%, retried and ejected): {ok}/{sent} succeeded");
    assert_eq!(
        ejected().await,
        1,
        "the failing canary is ejected within {sent} requests"
    );
    assert!(
        ok * 100 >= sent * 97,
        "retries and ejection hide the failing canary: {ok}/{sent}"
    );
    let a = get(
        &c,
        mesh.outbound,
        Some("inventory"),
        "/",
        &[("x-chaos", "on")],
    )
    .await;
    assert!(a.status == 200 || a.header("trellis-error") == Some("fault-injected"));
}

/// The processes `up` started, read from /proc (its direct children).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Alive and not a zombie waiting to be reaped.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// `up` killed with SIGKILL (no handler runs) leaves nothing running: every sidecar and app it
/// started exits on its own, and the ports they held are free for the next `up`.
#[tokio::test]
async fn up_killed_with_sigkill_leaves_nothing_running() {
    let mut up = up("mesh.yaml");
    let pid = up.child.id();
    let children = children_of(pid);
    assert!(
        children.len() >= 6,
        "up started its apps and sidecars: {children:?}"
    );
    let _ = up.child.kill();
    let _ = up.child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left: Vec<u32> = children.clone();
    while Instant::now() < deadline {
        left.retain(|&c| running(c));
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in &left {
        // Whatever outlived `up` is stopped by PID before the test fails.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(left.is_empty(), "still running after up died: {left:?}");
    for addr in [up.outbound, up.admin] {
        assert!(
            std::net::TcpListener::bind(addr).is_ok(),
            "{addr} is free again"
        );
    }
}
