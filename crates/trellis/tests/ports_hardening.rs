//! The ports Trellis answers itself, under attack, with real processes on loopback:
//!
//! - 2000 slowloris connections (a partial request head, then silence or a byte now and then)
//!   against a control plane whose open-files limit is 1024 and against a sidecar's admin port:
//!   `trellis get`, `/api/v1/health` and the admin `/ready` still answer, the caps shed the
//!   oldest idle connections, and the log has no line per failed accept;
//! - slowloris connections are closed once the header-read timeout passes, while a slow but
//!   complete client within it is served;
//! - `POST /shutdown` refuses what a web page can make a browser send (Origin, form content
//!   type, a DNS-rebinding Host) and keeps serving, while a plain POST drains the sidecar;
//! - an HTTP/2 flood (rapid reset, unsolicited PING acks) on the data ports leaves a handful of
//!   WARN lines, not one per connection or frame;
//! - proxies' xDS streams live on past the control plane's idle timeout and still carry config.
mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLOWLORIS: usize = 2000;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Raises this test process's open-files limit (it holds thousands of sockets) and checks it.
fn need_descriptors(n: u64) {
    let limit = trellis_net::fdlimit::raise().unwrap_or(0);
    assert!(
        limit >= n,
        "this test needs {n} open files; the hard limit allows {limit}"
    );
}

/// `trellis ARGS` with the open-files limit (soft and hard) lowered to `nofile` by the shell.
fn spawn_with_nofile(dir: &Path, name: &str, nofile: u32, args: &[String]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .env("TRELLIS_LOG", "info")
        .env("TRELLIS_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn trellis under sh");
    Proc {
        name: name.to_string(),
        child,
        log,
    }
}

fn control_args(dir: &Path, addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "control".to_string(),
        format!("--listen={addr}"),
        format!("--data-dir={}", dir.join("data").display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A sidecar on a static config with only its admin port and a Host-routed outbound port.
async fn static_proxy(dir: &Path, extra: &[&str]) -> Caller {
    let config = dir.join("mesh.yaml");
    write_config(&config, &service("web", "http"));
    let (outbound, admin) = (free_addr(), free_addr());
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        "--service=caller".into(),
        format!("--outbound={outbound}"),
        format!("--admin={admin}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = Proc::spawn(dir, "proxy", &args);
    wait_ready(admin).await;
    Caller {
        proc,
        outbound,
        admin,
        upstreams: Vec::new(),
    }
}

/// Connections that opened with part of a request head and never finish it.
struct Slowloris {
    conns: Vec<std::net::TcpStream>,
}

impl Slowloris {
    /// Opens `n` connections to `addr`, each sending `head` (blocking connects, bounded).
    fn open(addr: SocketAddr, n: usize, head: &[u8]) -> Slowloris {
        let mut conns = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in 0..n {
            assert!(Instant::now() < deadline, "opened only {i} connections");
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"));
            let _ = s.write_all(head);
            s.set_nonblocking(true).expect("nonblocking");
            conns.push(s);
        }
        Slowloris { conns }
    }

    /// Every other connection sends one more byte of its head (errors: closed, ignored).
    fn trickle(&mut self) {
        for s in self.conns.iter_mut().step_by(2) {
            let _ = s.write(b"a");
        }
    }

    /// How many the server has closed (end of stream or reset).
    fn closed(&mut self) -> usize {
        self.conns.iter_mut().map(is_closed).filter(|c| *c).count()
    }
}

/// Whether the peer closed `s` (non-blocking): end of stream or a reset.
fn is_closed(s: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 512];
    for _ in 0..100 {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (a 408, say) before the close
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    false
}

/// `trellis get services` against `addr`, killed if it takes over 60 s.
fn cli_get_services(addr: SocketAddr) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(["get", "services"])
        .env("TRELLIS_CONTROL", format!("http://{addr}"))
        .env("TRELLIS_TOKEN", TOKEN)
        .env_remove("TRELLIS_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().expect("CLI output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (out.status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (false, "the CLI did not answer within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET that must answer within 30 s.
async fn get_within(addr: SocketAddr, path: &str) -> (u16, String) {
    match tokio::time::timeout(Duration::from_secs(30), get_status(addr, path)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => panic!("GET {path} on {addr}: {e}"),
        Err(_) => panic!("GET {path} on {addr} did not answer within 30 s"),
    }
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_floods_leave_control_and_admin_answering() {
    need_descriptors(2 * SLOWLORIS as u64 + 500);
    let dir = tempdir("slowloris");
    let addr = free_addr();
    // Header-read timeout out of the way: what keeps the ports answering here is the cap.
    let control = spawn_with_nofile(
        &dir,
        "control",
        1024,
        &control_args(&dir, addr, &["--header-read-timeout=120s"]),
    );
    wait_api(addr).await;
    let proxy = static_proxy(&dir, &["--admin-header-read-timeout=120s"]).await;

    let head = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut on_control = Slowloris::open(addr, SLOWLORIS, head);
    let mut on_admin = Slowloris::open(proxy.admin, SLOWLORIS, b"GET /ready HTTP/1.1\r\nX-Slow: ");
    on_control.trickle();
    on_admin.trickle();

    for round in 0..3 {
        let (ok, out) = tokio::task::spawn_blocking(move || cli_get_services(addr))
            .await
            .unwrap();
        assert!(ok, "round {round}: trellis get services failed: {out}");
        let (status, body) = get_within(addr, "/api/v1/health").await;
        assert_eq!(status, 200, "round {round}: {body}");
        let (status, body) = get_within(proxy.admin, "/ready").await;
        assert_eq!(status, 200, "round {round}: {body}");
        on_control.trickle();
        on_admin.trickle();
    }

    // The attack was on: the caps (896 on the control port under 1024 files, 128 on the admin
    // port) closed the oldest slowloris connections to make room, and the newest still hang on.
    let (control_closed, admin_closed) = (on_control.closed(), on_admin.closed());
    assert!(
        (1000..SLOWLORIS - 200).contains(&control_closed),
        "control plane closed {control_closed} of {SLOWLORIS}"
    );
    assert!(
        (1800..SLOWLORIS).contains(&admin_closed),
        "admin port closed {admin_closed} of {SLOWLORIS}"
    );
    let (clog, plog) = (control.log_text(), proxy.proc.log_text());
    assert!(
        clog.contains("connection cap lowered to fit the open-files limit"),
        "the control plane ran under the lowered limit: {clog}"
    );
    assert!(
        count_lines(&clog, "accept failed") <= 3,
        "control log:\n{clog}"
    );
    assert!(
        count_lines(&plog, "accept failed") <= 3,
        "proxy log:\n{plog}"
    );
    // Shedding is reported, throttled: far fewer lines than connections shed.
    assert!(count_lines(&clog, "connection cap reached") <= 60, "{clog}");
    assert!(count_lines(&plog, "connection cap reached") <= 60, "{plog}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_within_the_header_read_timeout() {
    need_descriptors(1000);
    let dir = tempdir("headtimeout");
    let addr = free_addr();
    let _control = Proc::spawn(
        &dir,
        "control",
        &control_args(&dir, addr, &["--header-read-timeout=3s"]),
    );
    wait_api(addr).await;
    let proxy = static_proxy(&dir, &["--admin-header-read-timeout=3s"]).await;

    // A slow client that completes its head within the timeout is served.
    let mut slow = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"GET /live HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), slow.read_to_string(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let http1 = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    let mut attacks = [
        Slowloris::open(addr, 40, http1),
        // The xDS side of the port: the HTTP/2 preface, then nothing.
        Slowloris::open(addr, 20, PREFACE),
        // Fewer bytes than the preface: protocol detection itself is bounded.
        Slowloris::open(addr, 20, b"PR"),
        Slowloris::open(proxy.admin, 40, b"POST /shutdown HTTP/1.1\r\nX-Slow: "),
    ];
    let total: usize = attacks.iter().map(|a| a.conns.len()).sum();
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut closed = 0;
    while Instant::now() < deadline {
        for a in attacks.iter_mut() {
            a.trickle();
        }
        closed = attacks.iter_mut().map(|a| a.closed()).sum();
        if closed == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        closed, total,
        "slowloris connections closed by the servers within 45 s (timeout 3 s)"
    );
    // The ports still serve, and the proxy did not shut down.
    assert_eq!(get_within(addr, "/api/v1/health").await.0, 200);
    assert_eq!(get_within(proxy.admin, "/ready").await.0, 200);
}

/// One raw HTTP/1.1 request (so the test controls every header byte); the status and body.
async fn raw_request(addr: SocketAddr, request: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut text))
        .await
        .expect("answered within 20 s")
        .expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test]
async fn shutdown_refuses_what_a_browser_can_send() {
    let dir = tempdir("csrf");
    let mut proxy = static_proxy(&dir, &[]).await;
    let admin = proxy.admin;
    let host = format!("127.0.0.1:{}", admin.port());
    let attempts = [
        (
            format!("POST /shutdown HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            "origin",
        ),
        (
            format!("POST /shutdown HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=b"),
            "application/x-www-form-urlencoded",
        ),
        (
            format!("POST /shutdown HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"),
            "text/plain",
        ),
        (
            format!("POST /shutdown HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            "sec-fetch",
        ),
        (
            "POST /shutdown HTTP/1.1\r\nHost: evil.example:15000\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            "evil.example",
        ),
    ];
    for (request, why) in attempts {
        let (status, body) = raw_request(admin, request).await;
        assert_eq!(status, 403, "{why}: {body}");
        assert!(body.contains(why), "the answer names why ({why}): {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "one line: {body:?}");
        assert_eq!(get_within(admin, "/ready").await.0, 200, "still serving");
    }
    assert!(
        proxy.proc.child.try_wait().unwrap().is_none(),
        "still running"
    );
    // What `curl -X POST http://127.0.0.1:15000/shutdown` sends.
    let curl = format!(
        "POST /shutdown HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_request(admin, curl).await;
    assert_eq!(status, 200, "{body}");
    let exit = proxy
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("the sidecar drains and exits");
    assert!(exit.success());
    let log = proxy.proc.log_text();
    assert!(count_lines(&log, "POST /shutdown refused") >= 1, "{log}");
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// What one attacking connection sends: the preface, then either a rapid reset (HEADERS and
/// RST_STREAM, over and over; h2 gives up with a WARN line per connection) or a run of PING
/// acks nobody asked for (h2 writes a WARN line per frame).
fn h2_attack(rapid_reset: bool) -> Vec<u8> {
    // HPACK: :method GET, :scheme http, :path /, :authority "web" (literal, indexed name).
    let headers = b"\x82\x86\x84\x01\x03web";
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[])); // SETTINGS
    if rapid_reset {
        for id in (1..200u32).step_by(2) {
            out.extend(frame(1, 0x4, id, headers)); // HEADERS, END_HEADERS
            out.extend(frame(3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
        }
    } else {
        for _ in 0..20 {
            out.extend(frame(6, 0x1, 0, b"12345678")); // PING with ACK set
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_flood_leaves_a_handful_of_warn_lines() {
    need_descriptors(1000);
    let dir = tempdir("h2flood");
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    write_config(
        &config,
        &format!(
            "{}{}",
            service("web", "http"),
            workload("web-0", "web", "v1", ports.inbound)
        ),
    );
    let instance = start_instance(&dir, &config, "web", "web-0", &[], ports);
    let caller = start_caller(&dir, &config, &[]);
    wait_ready(instance.admin).await;
    wait_ready(caller.admin).await;
    wait_listening(instance.app_addr).await;

    let attacks = [
        std::sync::Arc::new(h2_attack(true)),
        std::sync::Arc::new(h2_attack(false)),
    ];
    let targets = [instance.inbound, caller.outbound];
    // 300 connections at once, half of each kind, half on each port; each reads what the
    // sidecar answers for at most a second, then hangs up.
    let flood_start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let attack = attacks[i % 2].clone();
        let target = targets[(i / 2) % 2];
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(mut s) = tokio::net::TcpStream::connect(target).await else {
                return false;
            };
            let _ = s.write_all(&attack).await;
            let mut sink = vec![0u8; 16 * 1024];
            let drain = async { while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            true
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap() as usize;
    }
    assert!(sent >= 280, "only {sent} attacking connections got through");
    let flood_secs = flood_start.elapsed().as_secs() as usize;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = instance.sidecar.log_text() + &caller.proc.log_text();
    let warns: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    // The flood did reach both of h2's warnings (else this test proves nothing)...
    for statement in ["recv_reset", "recv PING ack"] {
        assert!(
            warns.iter().any(|l| l.contains(statement)),
            "no h2 warning `{statement}`: {logs}"
        );
    }
    // ...and they were throttled: without it this is one line per rapid-reset connection plus
    // one per PING ack (150 + 3000). With it: at most one a second for each of the two h2 statements
    // on each of the two sidecars (the flood takes about a second; slower machines get more).
    let bound = 4 * (flood_secs + 2);
    assert!(
        warns.len() <= bound,
        "{} WARN lines (at most {bound} expected):\n{}",
        warns.len(),
        warns.join("\n")
    );
    // The sidecars still serve.
    assert_eq!(get_within(caller.admin, "/ready").await.0, 200);
    let a = get(&http1(), caller.outbound, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_streams_outlive_the_idle_timeout() {
    let dir = tempdir("xdsidle");
    let addr = free_addr();
    let control_url = format!("http://{addr}");
    let _control = Proc::spawn(
        &dir,
        "control",
        &control_args(
            &dir,
            addr,
            &["--idle-timeout=1s", "--header-read-timeout=5s"],
        ),
    );
    wait_api(addr).await;
    let p = Ports::free();
    let _app = Proc::spawn(
        &dir,
        "web-app",
        &[
            "demo-app".into(),
            format!("--listen={}", p.app),
            "--name=web".into(),
        ],
    );
    let web = Proc::spawn(
        &dir,
        "web-proxy",
        &[
            "proxy".into(),
            format!("--control={control_url}"),
            "--node-id=web-0".into(),
            "--service=web".into(),
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
        ],
    );
    let caller_admin = free_addr();
    let caller = Proc::spawn(
        &dir,
        "caller-proxy",
        &[
            "proxy".into(),
            format!("--control={control_url}"),
            "--node-id=caller".into(),
            "--service=caller".into(),
            "--outbound=off".into(),
            format!("--admin={caller_admin}"),
        ],
    );
    wait_ready(p.admin).await;
    wait_ready(caller_admin).await;

    // Five idle timeouts with no config change: nothing flows on the streams but PINGs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for proxy in [&web, &caller] {
        let log = proxy.log_text();
        assert_eq!(
            count_lines(&log, "connected to the control plane"),
            1,
            "{}: one stream, never reconnected:\n{log}",
            proxy.name
        );
        assert_eq!(
            count_lines(&log, "stream ended"),
            0,
            "{}:\n{log}",
            proxy.name
        );
    }
    // The streams still carry config: a Service applied now reaches the caller.
    let file = dir.join("api.yaml");
    std::fs::write(&file, service("api", "http")).unwrap();
    let out = Command::new(BIN)
        .args(["apply", "-f", file.to_str().unwrap()])
        .env("TRELLIS_CONTROL", &control_url)
        .env("TRELLIS_TOKEN", TOKEN)
        .env_remove("TRELLIS_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get_within(caller_admin, "/config").await;
        let config: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: Vec<_> = config["services"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
            .unwrap_or_default();
        if names.contains(&"api") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the push never arrived: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count_lines(&caller.log_text(), "connected to the control plane"),
        1,
        "pushed over the first stream"
    );
}
