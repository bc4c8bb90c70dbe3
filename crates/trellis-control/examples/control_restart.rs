//! How long a control-plane crash costs the mesh: N simulated proxies (real xDS clients with the
//! reconnect backoff `trellis proxy` uses, one connection each) hold their config from a real
//! `trellis control`; the control plane is killed with SIGKILL, kept down for a while, started
//! again on the same port and data dir, and one changed Route is applied as soon as its API
//! answers. Measures, per proxy, the time from the restart (the new process spawned) until
//! (a) it has reconnected (its ADS stream is open again) and (b) it has applied the change (in
//! sync); reported as p50 / p99 across proxies and the slowest proxy, per round and per downtime.
//!
//! The control plane runs as a child process (the release `trellis` binary) rather than in this
//! process: aborting the task that runs `server::run` drops the listener, but every accepted
//! connection is served by a task of its own that would keep the proxies' streams open, so it
//! is no crash. SIGKILL is one: once the child is reaped the kernel has closed every socket it
//! held, listening ones included, and the proxies see their streams end as they would in
//! production.
//!
//! ```sh
//! cargo build --release -p trellis -p trellis-control --examples
//! target/release/examples/control_restart --clients 100,1000 --rounds 3 --down 3,8
//! ```
// Shared with the other scale examples; this one starts its control plane as a process.
#[allow(dead_code)]
mod scale_common;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scale_common::{mesh, ms, percentile, post, round_of, route, Http, TOKEN};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_xds::client::{AdsClient, ClientConfig};
use trellis_xds::NodeInfo;

/// Bound on every wait for the proxies (connect, notice the kill, come back in sync).
const WAIT: Duration = Duration::from_secs(60);
/// Bound on the wait for a started control plane to answer its readiness probe.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How often the waits look.
const POLL: Duration = Duration::from_millis(1);
/// "Not yet" in a per-proxy time mark.
const NEVER: u64 = u64::MAX;

/// One `trellis control` child process. Dropping it SIGKILLs and reaps it, so no path out of
/// the bench (error or not) leaves it running.
struct ControlProcess {
    child: Child,
}

impl ControlProcess {
    fn start(bin: &Path, listen: SocketAddr, dir: &Path) -> Result<Self, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("control.log"))
            .map_err(|e| format!("cannot open the control-plane log: {e}"))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot open the control-plane log: {e}"))?;
        let child = Command::new(bin)
            .arg("control")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("TRELLIS_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(ControlProcess { child })
    }

    /// SIGKILL, then reap: once `wait` returns, the process and every socket it held are gone.
    fn kill(&mut self) -> Result<(), String> {
        let pid = self.child.id();
        self.child
            .kill()
            .map_err(|e| format!("cannot kill control plane {pid}: {e}"))?;
        self.child
            .wait()
            .map_err(|e| format!("cannot reap control plane {pid}: {e}"))?;
        Ok(())
    }

    /// Why the process ended, if it has.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Removes the bench's folder when dropped (declared before the control plane, so dropped
/// after it).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one proxy did when, in nanoseconds since the bench's epoch.
struct Marks {
    /// Streams opened so far (the client's `connects`).
    connects: AtomicU64,
    /// When a stream was first opened since the last reset.
    connected: AtomicU64,
    /// When the stream was last seen gone.
    disconnected: AtomicU64,
    /// The round of the config in force, and when it was applied.
    round: AtomicUsize,
    applied: AtomicU64,
}

impl Marks {
    fn new() -> Self {
        Marks {
            connects: AtomicU64::new(0),
            connected: AtomicU64::new(NEVER),
            disconnected: AtomicU64::new(NEVER),
            round: AtomicUsize::new(usize::MAX),
            applied: AtomicU64::new(NEVER),
        }
    }
}

fn since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(NEVER - 1)
}

/// The time from `from` to a mark, both in nanoseconds since the epoch.
fn span(from: u64, mark: u64) -> Duration {
    Duration::from_nanos(mark.saturating_sub(from))
}

/// A free loopback port below the ephemeral range. While nothing listens on a port inside that
/// range, a proxy retrying it can be handed that very port as its source port and connect to
/// itself (TCP simultaneous open); the control plane could then not bind it again.
fn free_port() -> Result<u16, String> {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (15_000u16, ephemeral.max(15_001));
    let span = u32::from(high - low);
    let start = std::process::id() % span;
    for i in 0..span.min(1_000) {
        let port = low + ((start + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!("no free port in {low}..{high}"))
}

/// The last lines of the control plane's log, for an error message.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("control.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until the control plane's readiness probe (which includes its store) answers 200.
async fn wait_ready(
    http: &Http,
    base: &str,
    cp: &mut ControlProcess,
    dir: &Path,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_WAIT;
    let url = format!("{base}/api/v1/ready");
    loop {
        let req = http::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        if let Ok(Ok(rsp)) = tokio::time::timeout(Duration::from_secs(1), http.request(req)).await {
            if rsp.status().is_success() {
                return Ok(());
            }
            if rsp.status() == http::StatusCode::NOT_FOUND {
                return Err(format!(
                    "{url} answers 404: the trellis binary predates it (rebuild: cargo build --release -p trellis)"
                ));
            }
        }
        if let Some(status) = cp.exited() {
            return Err(format!(
                "the control plane exited ({status}):\n{}",
                log_tail(dir)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the control plane was not ready within {READY_WAIT:?}:\n{}",
                log_tail(dir)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `done` until it holds, or fails with `what` after `WAIT`.
async fn wait_for(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what} within {WAIT:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// p50, p99 and slowest of some figures, in the examples' style.
fn summary(times: &mut [Duration], last: &str) -> String {
    times.sort();
    format!(
        "p50={:.0}ms p99={:.0}ms {last}={:.0}ms",
        ms(percentile(times, 50.0)),
        ms(percentile(times, 99.0)),
        ms(times.last().copied().unwrap_or_default()),
    )
}

async fn bench(bin: &Path, n: usize, rounds: usize, downs: &[Duration]) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!(
        "trellis-control-restart-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let _remove = RemoveDir(dir.clone());
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let base = format!("http://{listen}");
    // No pooled connections: one would outlive the control plane it was opened to.
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let mut cp = ControlProcess::start(bin, listen, &dir)?;
    wait_ready(&http, &base, &mut cp, &dir).await?;
    post(
        &http,
        &format!("{base}/api/v1/apply"),
        format!("{}---\n{}", mesh(20), route(0)),
    )
    .await?;

    let epoch = Instant::now();
    let marks: Arc<Vec<Marks>> = Arc::new((0..n).map(|_| Marks::new()).collect());
    let uri: tonic::transport::Uri = base.parse().map_err(|e| format!("{e}"))?;
    let mut clients = Vec::with_capacity(n);
    let mut monitors = Vec::with_capacity(n);
    for i in 0..n {
        // The defaults are what `trellis proxy` runs with: its reconnect backoff included.
        let mut c = ClientConfig::new(
            vec![uri.clone()],
            NodeInfo::new(format!("proxy-{i}"), "productpage", "default"),
        );
        c.token = Some(TOKEN.into());
        let m = marks.clone();
        let client = AdsClient::spawn(c, move |u| {
            if let Some(r) = round_of(&u.resources.to_set().resources) {
                if m[i].round.swap(r, Ordering::AcqRel) != r {
                    m[i].applied.store(since(epoch), Ordering::Release);
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        // Notes when the stream opens and closes; ends when the client is dropped.
        let mut status = client.watch_status();
        let m = marks.clone();
        monitors.push(tokio::spawn(async move {
            let mut seen = 0;
            while status.changed().await.is_ok() {
                let now = since(epoch);
                let (connects, open) = {
                    let s = status.borrow_and_update();
                    (s.connects, s.endpoint.is_some())
                };
                if connects > seen {
                    seen = connects;
                    m[i].connected.fetch_min(now, Ordering::AcqRel);
                    m[i].connects.store(connects, Ordering::Release);
                }
                if !open {
                    m[i].disconnected.store(now, Ordering::Release);
                }
            }
        }));
        clients.push(client);
    }
    wait_for("not every proxy got its first config", || {
        marks.iter().all(|m| m.round.load(Ordering::Acquire) == 0)
    })
    .await?;
    let connect_all = epoch.elapsed();
    println!(
        "N={n}: all {n} connected+synced in {:.0}ms (restart times below are from the new control-plane process's spawn)",
        ms(connect_all)
    );

    let mut round = 0;
    for &down in downs {
        let (mut reconnected, mut in_sync) = (Vec::new(), Vec::new());
        for r in 1..=rounds {
            round += 1;
            let before: Vec<u64> = marks
                .iter()
                .map(|m| m.connects.load(Ordering::Acquire))
                .collect();
            let killed_at = Instant::now();
            let killed = since(epoch);
            cp.kill()?;
            if TcpStream::connect_timeout(&listen, Duration::from_secs(1)).is_ok() {
                return Err(format!("{listen} still accepts after SIGKILL"));
            }
            wait_for("not every proxy saw its stream end", || {
                marks.iter().all(|m| {
                    let d = m.disconnected.load(Ordering::Acquire);
                    d != NEVER && d >= killed
                })
            })
            .await?;
            let noticed = killed_at.elapsed();
            for m in marks.iter() {
                m.connected.store(NEVER, Ordering::Release);
            }
            tokio::time::sleep_until((killed_at + down).into()).await;

            let restarted = since(epoch);
            let restarted_at = Instant::now();
            cp = ControlProcess::start(bin, listen, &dir)?;
            wait_ready(&http, &base, &mut cp, &dir).await?;
            let ready = restarted_at.elapsed();
            post(&http, &format!("{base}/api/v1/apply"), route(round)).await?;
            let applied = restarted_at.elapsed();
            wait_for(
                &format!("round {round}: not every proxy reconnected and applied the change"),
                || {
                    marks.iter().zip(&before).all(|(m, b)| {
                        m.round.load(Ordering::Acquire) == round
                            && m.connects.load(Ordering::Acquire) > *b
                    })
                },
            )
            .await?;
            // The stream's opening is noted by a watcher task, which may run a little late on
            // a busy machine; the change cannot be applied before it, so that bounds it.
            let mut back: Vec<Duration> = marks
                .iter()
                .map(|m| {
                    let connected = m.connected.load(Ordering::Acquire);
                    span(restarted, connected.min(m.applied.load(Ordering::Acquire)))
                })
                .collect();
            let mut synced: Vec<Duration> = marks
                .iter()
                .map(|m| span(restarted, m.applied.load(Ordering::Acquire)))
                .collect();
            println!(
                "N={n} down={}s round {r}/{rounds}: restart -> reconnected {} | -> in sync {} | API ready at {:.0}ms, apply answered at {:.0}ms | kill seen by every proxy in {:.0}ms",
                down.as_secs_f64(),
                summary(&mut back, "every"),
                summary(&mut synced, "every"),
                ms(ready),
                ms(applied),
                ms(noticed),
            );
            reconnected.extend(back);
            in_sync.extend(synced);
        }
        println!(
            "N={n} down={}s rounds={rounds}: restart -> every proxy reconnected: {} | restart -> every proxy applied the change: {} (over {} proxy restarts)",
            down.as_secs_f64(),
            summary(&mut reconnected, "max"),
            summary(&mut in_sync, "max"),
            n * rounds,
        );
    }
    drop(clients);
    for m in monitors {
        m.abort();
    }
    cp.kill()
}

#[tokio::main]
async fn main() {
    // Every proxy's connection lives in this process: raise the open-files limit as `trellis`
    // does (the control plane raises its own, and inherits this one).
    trellis_net::fdlimit::raise();
    let mut clients = vec![100, 1000];
    let mut rounds = 3;
    let mut downs = vec![Duration::from_secs(3), Duration::from_secs(8)];
    // Beside this example: target/release/examples/control_restart -> target/release/trellis.
    let mut bin = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("trellis")))
        .unwrap_or_else(|| PathBuf::from("target/release/trellis"));
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let parsed = match (pair[0].as_str(), pair.get(1)) {
            ("--clients", Some(v)) => v
                .split(',')
                .map(|n| n.parse().ok())
                .collect::<Option<Vec<usize>>>()
                .map(|v| clients = v),
            ("--rounds", Some(v)) => v.parse().ok().map(|v| rounds = v),
            ("--down", Some(v)) => v
                .split(',')
                .map(|s| {
                    s.parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok())
                })
                .collect::<Option<Vec<Duration>>>()
                .map(|v| downs = v),
            ("--trellis", Some(v)) => {
                bin = PathBuf::from(v);
                Some(())
            }
            _ => None,
        };
        if parsed.is_none() {
            eprintln!(
                "usage: control_restart [--clients N,N] [--rounds R] [--down SECS,SECS] [--trellis PATH]"
            );
            std::process::exit(2);
        }
    }
    if !bin.is_file() {
        eprintln!(
            "no trellis binary at {} (build it: cargo build --release -p trellis, or pass --trellis PATH)",
            bin.display()
        );
        std::process::exit(2);
    }
    for n in clients {
        if let Err(e) = bench(&bin, n, rounds, &downs).await {
            eprintln!("N={n}: {e}");
            std::process::exit(1);
        }
    }
}
