//! Server-first protocols (a database greeting its client before the client says anything)
//! through a sidecar pair, in every mTLS mode: the app here greets on accept and then answers
//! each line, as MySQL, SMTP or Redis-with-banner servers do. Every sidecar runs with a long
//! `--detect-timeout` (30 s), so a greeting that arrives at all within 10 s arrived without a
//! detection wait: the bound distinguishes "no wait" from "waited for detection", it is not a
//! benchmark. On a port that declares nothing, detection waits once along the path (on the
//! caller's side), which the detection counters of both sidecars show.
mod common;

use common::pki::*;
use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const GREETING: &str = "220 server-first app ready";
/// Long enough that waiting for it shows: a greeting within [`BOUND`] never waited for it.
const DETECT: &str = "--detect-timeout=30s";
const BOUND: Duration = Duration::from_secs(10);

/// The server-first app: greets on accept, then answers `PING n` with `PONG n`; counts the
/// connections it accepted.
async fn greeter(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.expect("bind the greeter");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                if w.write_all(format!("{GREETING}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = match line.strip_prefix("PING ") {
                        Some(n) => format!("PONG {n}\r\n"),
                        None => format!("500 what is {line:?}\r\n"),
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    accepted
}

/// Reads one CRLF-terminated line within [`BOUND`]; `Err` says what came instead.
async fn read_line(s: &mut TcpStream) -> Result<String, String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !got.ends_with(b"\r\n") {
            match s.read(&mut byte).await {
                Ok(0) => return Err("connection closed".to_string()),
                Ok(_) => got.push(byte[0]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BOUND, read).await {
        Ok(Ok(())) => Ok(String::from_utf8_lossy(&got).trim_end().to_string()),
        Ok(Err(e)) => Err(format!("{e} after {:?}", String::from_utf8_lossy(&got))),
        Err(_) => Err(format!(
            "nothing within {BOUND:?} (got {:?})",
            String::from_utf8_lossy(&got)
        )),
    }
}

/// A client of the server-first protocol: waits for the greeting without saying anything, then
/// has two exchanges.
async fn converse(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let greeting = read_line(&mut s)
        .await
        .map_err(|e| format!("greeting: {e}"))?;
    if greeting != GREETING {
        return Err(format!("greeting was {greeting:?}"));
    }
    for n in 1..=2 {
        s.write_all(format!("PING {n}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_line(&mut s).await?;
        if reply != format!("PONG {n}") {
            return Err(format!("reply {n} was {reply:?}"));
        }
    }
    Ok(())
}

fn mesh_config(mode: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata:\n  name: mesh\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

fn db_service(protocol: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  ports:\n    - port: 3306\n      protocol: {protocol}\n"
    )
}

fn db_workload(addr: SocketAddr, tls: bool) -> String {
    let identity = if tls {
        format!("  identity: spiffe://{TD}/ns/default/sa/db\n")
    } else {
        String::new()
    };
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata:\n  name: db-0\n  labels:\n    app: db\nspec:\n  service: db\n  address: {}\n  port: {}\n{identity}",
        addr.ip(),
        addr.port()
    )
}

/// Only the caller's identity may connect to `db`: a plaintext client is denied.
fn caller_only_policy() -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: db\nspec:\n  service: db\n  rules:\n    - action: Allow\n      from:\n        principals: [\"spiffe://{TD}/ns/default/sa/caller\"]\n"
    )
}

struct Setup {
    _dir: PathBuf,
    _db: Proc,
    caller: Caller,
    ports: Ports,
    accepted: Arc<AtomicUsize>,
}

impl Setup {
    /// The caller's per-upstream port to `db`.
    fn via_pair(&self) -> SocketAddr {
        self.caller.upstreams[0]
    }
}

/// The greeter behind a `db` sidecar in mTLS `mode` on a port declared `protocol`, and a
/// caller with a per-upstream port to it; both with certificates when `tls`, both with
/// `detect` as their detection timeout.
async fn setup(
    tag: &str,
    mode: &str,
    protocol: &str,
    tls: bool,
    extra: &str,
    detect: &str,
) -> Setup {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let text = format!(
        "{}{}{}{extra}",
        mesh_config(mode),
        db_service(protocol),
        db_workload(ports.inbound, tls)
    );
    write_config(&config, &text);
    let accepted = greeter(ports.app).await;
    let (mut db_args, mut caller_args) = (vec![detect.to_string()], vec![detect.to_string()]);
    if tls {
        let pki = Pki::new(&dir, "mesh");
        db_args.extend(tls_args(&pki, &pki.issue("db")));
        caller_args.extend(tls_args(&pki, &pki.issue("caller")));
    }
    let db = start_sidecar(&dir, &config, "db", ports, &db_args);
    let caller = start_caller_with(&dir, &config, &["db"], &caller_args);
    wait_ready(ports.admin).await;
    wait_ready(caller.admin).await;
    Setup {
        _dir: dir,
        _db: db,
        caller,
        ports,
        accepted,
    }
}

async fn detections(admin: SocketAddr, result: &str) -> f64 {
    counter(
        admin,
        "trellis_protocol_detections_total",
        &[("result", result)],
    )
    .await
}

/// Permissive, plaintext between the sidecars (no certificates): the inbound side cannot
/// terminate TLS, so it has no ClientHello to wait for and connects to the app at once.
#[tokio::test]
async fn tcp_port_permissive_plaintext_greets_at_once() {
    let s = setup("sf-perm-plain", "Permissive", "tcp", false, "", DETECT).await;
    converse(s.via_pair()).await.expect("through the pair");
    // A client outside the mesh, straight at the inbound side, is served at once too.
    converse(s.ports.inbound)
        .await
        .expect("straight at the inbound side");
}

/// Permissive with mTLS between the sidecars: the caller's sidecar opens TLS at once, and a
/// plaintext client outside the mesh is served after the short TLS wait
/// (`--tls-detect-timeout`), not the detection timeout.
#[tokio::test]
async fn tcp_port_permissive_mtls_greets_at_once() {
    let s = setup("sf-perm-mtls", "Permissive", "tcp", true, "", DETECT).await;
    converse(s.via_pair()).await.expect("through the pair");
    assert_eq!(
        counter(
            s.ports.admin,
            "trellis_inbound_tls_connections_total",
            &[("result", "ok")]
        )
        .await,
        1.0,
        "the pair's connection was mTLS"
    );
    converse(s.ports.inbound)
        .await
        .expect("a plaintext client straight at the inbound side");
    // Each connection is counted per peer on the inbound side: the caller's identity for the
    // mesh caller, none for the plaintext client; opened, closed, and how long it lasted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mesh, plain) = loop {
        let (_, text) = get_status(s.ports.admin, "/metrics").await.unwrap();
        let scrape = parse_metrics(&text);
        let per_source = |metric: &str, mesh: bool| -> f64 {
            scrape
                .samples
                .iter()
                .filter(|x| x.metric == metric && x.labels.get("direction") == Some("inbound"))
                .filter(|x| x.labels.get("service") == Some("db"))
                .filter(|x| {
                    let source = x.labels.get("source").unwrap_or_default();
                    if mesh {
                        source.ends_with("/ns/default/sa/caller")
                    } else {
                        source.is_empty()
                    }
                })
                .map(|x| match x.value {
                    prometheus_parse::Value::Counter(v) => v,
                    prometheus_parse::Value::Histogram(ref h) => {
                        h.iter().map(|b| b.count).fold(0.0, f64::max)
                    }
                    _ => 0.0,
                })
                .sum()
        };
        let counts = |mesh| {
            [
                per_source("trellis_tcp_streams_opened_total", mesh),
                per_source("trellis_tcp_streams_closed_total", mesh),
                per_source("trellis_tcp_stream_duration_seconds", mesh),
            ]
        };
        let (mesh, plain) = (counts(true), counts(false));
        if mesh == [1.0; 3] && plain == [1.0; 3] || std::time::Instant::now() > deadline {
            break (mesh, plain);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(mesh, [1.0; 3], "the mesh caller's connection, per peer");
    assert_eq!(plain, [1.0; 3], "the plaintext client's connection");
}

/// Strict: the mesh caller's ClientHello comes at once, so the greeting does too; a plaintext
/// client is refused and the app never sees its connection.
#[tokio::test]
async fn tcp_port_strict_greets_at_once_and_refuses_plaintext() {
    let s = setup("sf-strict", "Strict", "tcp", true, "", DETECT).await;
    converse(s.via_pair()).await.expect("through the pair");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    let mut plain = TcpStream::connect(s.ports.inbound).await.unwrap();
    plain.write_all(b"PING 1\r\n").await.unwrap();
    let got = read_line(&mut plain).await;
    assert!(got.is_err(), "plaintext got an answer in Strict: {got:?}");
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "the app saw the plaintext connection"
    );
}

/// mTLS Off: nothing is read before connecting to the app, on either side.
#[tokio::test]
async fn tcp_port_mtls_off_greets_at_once() {
    let s = setup("sf-off", "Off", "tcp", false, "", DETECT).await;
    converse(s.via_pair()).await.expect("through the pair");
    assert_eq!(detections(s.caller.admin, "skipped").await, 1.0);
    assert_eq!(detections(s.ports.admin, "skipped").await, 1.0);
}

/// Permissive, but policy admits only the caller's identity: a plaintext connection would be
/// denied anyway, so the inbound side waits for TLS as long as for any first bytes, and the
/// short TLS wait never serves a plaintext client the policy refuses. The mesh caller still
/// gets the greeting at once; a plaintext client gets nothing and the app never sees it.
#[tokio::test]
async fn tcp_port_permissive_policy_still_decides_before_the_app() {
    let s = setup(
        "sf-perm-policy",
        "Permissive",
        "tcp",
        true,
        &caller_only_policy(),
        "--detect-timeout=2s",
    )
    .await;
    converse(s.via_pair())
        .await
        .expect("the caller's identity is allowed");
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    let mut plain = TcpStream::connect(s.ports.inbound).await.unwrap();
    let got = read_line(&mut plain).await;
    assert!(got.is_err(), "a denied plaintext client got {got:?}");
    assert_eq!(
        s.accepted.load(Ordering::SeqCst),
        1,
        "the app saw a connection policy denies"
    );
}

/// A port that declares nothing: the caller's sidecar waits for its detection timeout (its
/// client is silent), finds opaque TCP, and says so by ALPN on the mTLS connection; the inbound
/// side does not detect again. With a 3 s detection timeout on both, the greeting comes after
/// one wait (well before two), and the counters say where detection ran.
#[tokio::test]
async fn undeclared_port_waits_for_detection_once_along_the_path() {
    let s = setup(
        "sf-undeclared",
        "Permissive",
        "detect",
        true,
        "",
        "--detect-timeout=3s",
    )
    .await;
    let start = std::time::Instant::now();
    converse(s.via_pair()).await.expect("through the pair");
    let took = start.elapsed();
    assert_eq!(detections(s.caller.admin, "timeout").await, 1.0);
    assert_eq!(detections(s.ports.admin, "alpn").await, 1.0);
    assert_eq!(detections(s.ports.admin, "timeout").await, 0.0);
    assert!(
        took < Duration::from_millis(5_500),
        "the greeting took {took:?}: detection waited twice (3 s each)"
    );
}
