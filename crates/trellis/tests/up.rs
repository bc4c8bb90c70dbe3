//! `trellis up` on the bundled example: every service answers through the mesh, the canary
//! split shows both versions, and the retried flaky service looks healthy to callers.
mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `trellis up` on `example`, killed when dropped; returns once it printed its ready line.
struct Up {
    child: std::process::Child,
    outbound: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(example: &str) -> Up {
    let dir = tempdir("up");
    let (outbound, admin) = (free_addr(), free_addr());
    let path = format!("{}/../../examples/{example}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(BIN)
        .args([
            "up",
            &path,
            &format!("--outbound={outbound}"),
            &format!("--admin={admin}"),
            &format!("--control={}", free_addr()),
            "--upstream-base=0",
            &format!("--work-dir={}", dir.display()),
            "--exit-after=120s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("trellis up never became ready: {banner:?}"));
        let done = line.contains("trellis up: ready");
        banner.push(line);
        if done {
            break;
        }
    }
    Up {
        child,
        outbound,
        admin,
        _dir: dir,
    }
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
    let mut ok = 0;
    for _ in 0..60 {
        if get(&c, mesh.outbound, Some("checkout"), "/", &[])
            .await
            .status
            == 200
        {
            ok += 1;
        }
    }
    println!("checkout (one instance failing 50%, retried and ejected): {ok}/60 succeeded");
    assert!(
        ok >= 58,
        "retries and ejection hide the failing canary: {ok}/60"
    );
    let (_, body) = get_status(mesh.admin, "/config").await.unwrap();
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let checkout = j["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "checkout")
        .unwrap();
    let ejected = checkout["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "the failing canary is ejected: {checkout}");
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
