//! The dashboard in a real browser: `trellis up examples/mesh.yaml` under a steady load, and a
//! Selenium script (`tests/dashboard/browser.py`, headless Debian `chromium` driven by
//! `chromedriver`) that checks what a user would see:
//!
//! - a page without a session is refused (401, the login form) and so is every JSON and event
//!   endpoint; logging in with the join token opens the topology;
//! - the topology shows the services and the entry sidecar as nodes and the calls as edges;
//! - an edge's request count and success rate are exactly what the callers' sidecars count in
//!   `/metrics` (a burst sent inside the window, so the window holds all of it);
//! - a Route change made with `trellis apply` appears on the service page without a reload;
//! - an instance ejected by outlier detection shows on its node;
//! - a fault (abort 100%) turns its edge red.
//!
//! Before the browser, `trellis dashboard` prints a login link that works once, and
//! `trellis up`'s banner names the dashboard.
//!
//! Screenshots land in `target/dashboard-screenshots/`.
mod common;

use common::up::Up;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `trellis up` on the bundled example, stopped when dropped.
fn up() -> Up {
    common::up::up("mesh.yaml", "600s", Duration::from_secs(90))
}

/// Requests to `reviews` through the entry sidecar, one every 20 ms, until stopped (or 10
/// minutes, or 30 000 requests).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

fn load(outbound: std::net::SocketAddr) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (s, n) = (stop.clone(), sent.clone());
    let task = tokio::spawn(async move {
        let c = http1();
        let deadline = Instant::now() + Duration::from_secs(600);
        while !s.load(Ordering::Relaxed)
            && Instant::now() < deadline
            && n.load(Ordering::Relaxed) < 30_000
        {
            let _ = get(&c, outbound, Some("reviews"), "/", &[]).await;
            n.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Load { stop, sent, task }
}

/// `trellis dashboard` prints a login link that opens a session once, and only once.
fn one_time_link_from_the_cli(mesh: &Up, token: &str) {
    let out = Command::new(BIN)
        .args(["dashboard", &format!("--control=http://{}", mesh.control)])
        .env("TRELLIS_TOKEN", token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = stdout
        .split_whitespace()
        .find(|w| w.contains("/dashboard/?code="))
        .unwrap_or_else(|| panic!("no login link in: {stdout}"))
        .to_string();
    let open = |link: &str| curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", link]);
    assert_eq!(open(&link), "303", "the link opens a session");
    assert_eq!(open(&link), "401", "but only once");
    let refused = Command::new(BIN)
        .args(["dashboard", &format!("--control=http://{}", mesh.control)])
        .env_remove("TRELLIS_TOKEN")
        .env_remove("TRELLIS_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "no link without the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_live_mesh_in_a_browser() {
    let mesh = up();
    let dashboard_line = mesh
        .banner
        .iter()
        .find(|l| l.contains("dashboard:"))
        .cloned()
        .unwrap_or_default();
    assert!(
        dashboard_line.contains(&format!("http://{}/dashboard/", mesh.control)),
        "the banner names the dashboard: {:?}",
        mesh.banner
    );
    let token = std::fs::read_to_string(mesh.dir.join("join-token")).unwrap();
    one_time_link_from_the_cli(&mesh, token.trim());
    let load = load(mesh.outbound);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = root.join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard/browser.py");
    let log = mesh.dir.join("browser.log");
    let mut browser = Command::new("python3")
        .arg(&script)
        .env("DASH_BASE", format!("http://{}", mesh.control))
        .env("DASH_TOKEN", token.trim())
        .env("DASH_OUTBOUND", mesh.outbound.to_string())
        .env("DASH_ENTRY_ADMIN", mesh.admin.to_string())
        .env("DASH_SHOTS", &shots)
        .env("DASH_WORK", &mesh.dir)
        .env("TRELLIS_BIN", BIN)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .expect("python3 runs");
    // Bounded: the script's own waits are bounded; this is the backstop.
    let deadline = Instant::now() + Duration::from_secs(420);
    let status = loop {
        if let Ok(Some(status)) = browser.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", &browser.id().to_string()])
                .status();
            let _ = browser.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    load.stop.store(true, Ordering::Relaxed);
    let _ = load.task.await;
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    println!("{out}");
    println!(
        "load: {} requests to reviews; screenshots in {}",
        load.sent.load(Ordering::Relaxed),
        shots.display()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser checks failed ({status:?}):\n{out}"
    );
    assert!(out.contains("ALL CHECKS PASSED"), "{out}");
}
