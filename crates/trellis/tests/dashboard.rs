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

use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `trellis up`, stopped (SIGTERM, then SIGKILL by PID) when dropped.
struct Up {
    child: std::process::Child,
    outbound: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    control: std::net::SocketAddr,
    dir: PathBuf,
    banner: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One start of `trellis up` on the bundled example; `None` when it exited before its banner
/// (a chosen port was taken meanwhile).
fn try_up() -> Option<Up> {
    let dir = tempdir("dashboard");
    let (outbound, admin, control) = (free_addr(), free_addr(), free_addr());
    let path = format!("{}/../../examples/mesh.yaml", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(BIN)
        .args([
            "up",
            &path,
            &format!("--outbound={outbound}"),
            &format!("--admin={admin}"),
            &format!("--control={control}"),
            "--upstream-base=0",
            &format!("--work-dir={}", dir.display()),
            "--exit-after=600s",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("up.stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut banner = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let done = line.contains("trellis up: ready");
                banner.push(line);
                if done {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                eprintln!("trellis up exited before it was ready: {banner:?}");
                return None;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("trellis up never became ready: {banner:?}");
            }
        }
    }
    Some(Up {
        child,
        outbound,
        admin,
        control,
        dir,
        banner,
    })
}

fn up() -> Up {
    for _ in 0..3 {
        if let Some(up) = try_up() {
            return up;
        }
    }
    panic!("trellis up exited before it was ready, three times");
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
