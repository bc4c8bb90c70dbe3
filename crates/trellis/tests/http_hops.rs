//! What each HTTP hop of a sidecar pair keeps, with clients and servers nobody here wrote:
//! - **version translation**: an HTTP/2 client (curl `--http2-prior-knowledge`) reaches an
//!   HTTP/1.1-only app (Python's `http.server`) on a port declared `http`, through the pair and
//!   straight at the inbound side;
//! - **`Expect: 100-continue`**: the app's decision passes through; an app that answers 413
//!   without reading receives (almost) none of a 10 MB upload, retries configured or not;
//! - **keep-alive idle timeouts**: an idle keep-alive connection lives as long as the idle timeout
//!   says (not a header-read timer's 30 s), and the upstream pool closes idle connections after
//!   its own timeout.
mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn service_port(name: &str, protocol: &str, port: u16) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n    - port: {port}\n      protocol: {protocol}\n"
    )
}

/// Python's `http.server` (HTTP/1.0 and 1.1 only: it answers an HTTP/2 preface with 400)
/// serving `hello.txt` from a fresh folder.
async fn python_http_server(dir: &Path, addr: SocketAddr) -> External {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello from an HTTP/1.1 app\n").unwrap();
    let port = addr.port().to_string();
    let server = External::spawn(
        dir,
        "python-http",
        "python3",
        &[
            "-m",
            "http.server",
            &port,
            "--bind",
            "127.0.0.1",
            "--directory",
            root.to_str().unwrap(),
        ],
    );
    wait_listening(addr).await;
    server
}

struct Pair {
    _dir: PathBuf,
    _app: External,
    _sidecar: Proc,
    ports: Ports,
    caller: Caller,
}

/// The `web` service on a port declared `http`, served by Python's HTTP/1.1 server behind a
/// sidecar, and a caller with a Host-routed port and a per-upstream port.
async fn python_pair(tag: &str) -> Pair {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let text = format!(
        "{}{}",
        service_port("web", "http", 80),
        workload("web-0", "web", "v1", ports.inbound)
    );
    write_config(&config, &text);
    let app = python_http_server(&dir, ports.app).await;
    let sidecar = start_sidecar(&dir, &config, "web", ports, &[]);
    let caller = start_caller_with(&dir, &config, &["web"], &[]);
    wait_ready(ports.admin).await;
    wait_ready(caller.admin).await;
    Pair {
        _dir: dir,
        _app: app,
        _sidecar: sidecar,
        ports,
        caller,
    }
}

/// curl's status line, HTTP version and body for an HTTP/2 prior-knowledge GET.
fn h2_get(url: &str, host: Option<&str>) -> String {
    let mut args = vec![
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    let header;
    if let Some(h) = host {
        header = format!("Host: {h}");
        args.extend(["-H", header.as_str()]);
    }
    args.push(url);
    curl(&args)
}

/// An HTTP/2 client calling an HTTP/1.1-only app on a port declared `http` gets the app's
/// answer over HTTP/2, by Host and by per-upstream port: both sidecars translate.
#[tokio::test]
async fn http2_client_reaches_http1_only_app_through_the_pair() {
    let p = python_pair("h2-to-h1").await;
    let by_host = h2_get(
        &format!("http://{}/hello.txt", p.caller.outbound),
        Some("web"),
    );
    assert_eq!(
        by_host, "hello from an HTTP/1.1 app\n\n200 2",
        "by Host through the pair"
    );
    let by_port = h2_get(&format!("http://{}/hello.txt", p.caller.upstreams[0]), None);
    assert_eq!(
        by_port, "hello from an HTTP/1.1 app\n\n200 2",
        "by per-upstream port through the pair"
    );
    // Several requests on one HTTP/2 connection (curl 7.88 cannot reuse a prior-knowledge
    // connection for a second URL; hyper's client can), each translated.
    let client = http2();
    for _ in 0..3 {
        let a = get(&client, p.caller.upstreams[0], None, "/hello.txt", &[]).await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "hello from an HTTP/1.1 app\n")
        );
    }
}

/// The inbound side alone translates too: an HTTP/2 client straight at the inbound listener
/// (plaintext, Permissive) of an `http` port reaches the HTTP/1.1 app.
#[tokio::test]
async fn http2_client_reaches_http1_only_app_through_the_inbound_side() {
    let p = python_pair("h2-to-h1-inbound").await;
    let got = h2_get(
        &format!("http://{}/hello.txt", p.ports.inbound),
        Some("web"),
    );
    assert_eq!(got, "hello from an HTTP/1.1 app\n\n200 2");
}

/// An app that answers every request `413 Payload Too Large` as soon as its head has arrived,
/// without reading the body, and keeps the connection open, counting every body byte that
/// arrives anyway, until the peer closes it.
struct Rejector {
    body_bytes: Arc<AtomicUsize>,
    heads: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

async fn rejector(addr: SocketAddr) -> Rejector {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the rejecting app");
    let r = Rejector {
        body_bytes: Arc::new(AtomicUsize::new(0)),
        heads: Arc::new(AtomicUsize::new(0)),
        closed: Arc::new(AtomicUsize::new(0)),
    };
    let (body_bytes, heads, closed) = (r.body_bytes.clone(), r.heads.clone(), r.closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (body_bytes, heads, closed) = (body_bytes.clone(), heads.clone(), closed.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut head = Vec::new();
                let end = loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                heads.fetch_add(1, Ordering::SeqCst);
                body_bytes.fetch_add(head.len() - end, Ordering::SeqCst);
                let answer = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big\n";
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {
                            body_bytes.fetch_add(n, Ordering::SeqCst);
                        }
                        _ => break,
                    }
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    r
}

/// A 10 MB upload with `Expect: 100-continue` to the rejecting app through the pair: curl's
/// status code and bytes uploaded. (curl runs on a blocking thread: the app runs on this test's
/// runtime.)
async fn upload_expecting_continue(dir: &Path, outbound: SocketAddr) -> (String, usize) {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || upload_blocking(&dir, outbound))
        .await
        .expect("curl thread")
}

fn upload_blocking(dir: &Path, outbound: SocketAddr) -> (String, usize) {
    let file = dir.join("10mb.bin");
    std::fs::write(&file, vec![b'x'; 10 * 1024 * 1024]).unwrap();
    let data = format!("@{}", file.display());
    let url = format!("http://{outbound}/upload");
    let out = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &data,
        "-H",
        "Expect: 100-continue",
        "-H",
        "Host: web",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_upload}",
        &url,
    ]);
    let (code, sent) = out.split_once(' ').unwrap_or((&out, "0"));
    (code.to_string(), sent.trim().parse().unwrap_or(usize::MAX))
}

/// Waits (bounded) until the app saw `n` connections end.
async fn wait_closed(app: &Rejector, n: usize) {
    for _ in 0..200 {
        if app.closed.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the app's connection was never closed: a held body keeps it forever");
}

async fn rejecting_pair(tag: &str, extra: &str) -> (PathBuf, Rejector, Proc, Caller) {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let text = format!(
        "{}{}{extra}",
        service_port("web", "http", 80),
        workload("web-0", "web", "v1", ports.inbound)
    );
    write_config(&config, &text);
    let app = rejector(ports.app).await;
    let sidecar = start_sidecar(&dir, &config, "web", ports, &[]);
    let caller = start_caller_with(&dir, &config, &["web"], &[]);
    wait_ready(ports.admin).await;
    wait_ready(caller.admin).await;
    (dir, app, sidecar, caller)
}

/// The app's 413 reaches the client before it sends its body, so (as when calling the app
/// directly) the client never uploads the 10 MB, the app receives none of it, and the app's
/// connection, owed a body it will never get, is closed rather than held.
#[tokio::test]
async fn expect_100_continue_lets_the_app_refuse_before_the_body_is_sent() {
    let (dir, app, _sidecar, caller) = rejecting_pair("expect-413", "").await;
    let (code, uploaded) = upload_expecting_continue(&dir, caller.outbound).await;
    assert_eq!(code, "413");
    wait_closed(&app, 1).await;
    let received = app.body_bytes.load(Ordering::SeqCst);
    assert_eq!(app.heads.load(Ordering::SeqCst), 1);
    assert!(
        uploaded < 64 * 1024 && received < 64 * 1024,
        "curl uploaded {uploaded} bytes, the app received {received}: the body went before the app asked"
    );
}

/// The same with retries on the route and a replay buffer large enough for the whole body: the
/// body is still not read ahead (a request expecting 100 is sent once, streaming).
#[tokio::test]
async fn expect_100_continue_is_not_read_ahead_for_retries() {
    let route = "---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata:\n  name: web\nspec:\n  service: web\n  rules:\n    - retries:\n        attempts: 3\n        retryOn: [5xx, reset]\n        maxBufferBytes: 16777216\n";
    let (dir, app, _sidecar, caller) = rejecting_pair("expect-413-retry", route).await;
    let (code, uploaded) = upload_expecting_continue(&dir, caller.outbound).await;
    assert_eq!(code, "413");
    wait_closed(&app, 1).await;
    let received = app.body_bytes.load(Ordering::SeqCst);
    assert!(
        uploaded < 64 * 1024 && received < 64 * 1024,
        "curl uploaded {uploaded} bytes, the app received {received}"
    );
}

/// An app that asks for the body (demo-app's echo; its server says `100 Continue` when it reads)
/// gets all of it: the 100 travels back through both sidecars.
#[tokio::test]
async fn expect_100_continue_body_flows_when_the_app_asks() {
    let dir = tempdir("expect-echo");
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    write_config(
        &config,
        &format!(
            "{}{}",
            service_port("web", "http", 80),
            workload("web-0", "web", "v1", ports.inbound)
        ),
    );
    let _app = start_instance(&dir, &config, "web", "web-0", &[], ports);
    let caller = start_caller_with(&dir, &config, &["web"], &[]);
    wait_ready(ports.admin).await;
    wait_ready(caller.admin).await;
    wait_listening(ports.app).await;
    let file = dir.join("2mb.bin");
    std::fs::write(&file, vec![b'y'; 2 * 1024 * 1024]).unwrap();
    let data = format!("@{}", file.display());
    let url = format!("http://{}/echo", caller.outbound);
    let out = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &data,
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "15",
        "-H",
        "Host: web",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_upload} %{size_download}",
        &url,
    ]);
    assert_eq!(out, "200 2097152 2097152");
}

/// A demo-app `web` on a port declared `protocol` behind a sidecar, and a caller with `extra`
/// flags.
async fn demo_pair(tag: &str, protocol: &str, extra: &[&str]) -> (PathBuf, Instance, Caller) {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    write_config(
        &config,
        &format!(
            "{}{}",
            service_port("web", protocol, 80),
            workload("web-0", "web", "v1", ports.inbound)
        ),
    );
    let instance = start_instance(&dir, &config, "web", "web-0", &[], ports);
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let caller = start_caller_with(&dir, &config, &["web"], &extra);
    wait_ready(ports.admin).await;
    wait_ready(caller.admin).await;
    wait_listening(ports.app).await;
    (dir, instance, caller)
}

/// One HTTP/1.1 request on an open connection; the status code of its answer (the body is read
/// by its content-length).
async fn h1_request(s: &mut tokio::net::TcpStream) -> Result<u16, String> {
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .map_err(|_| "no answer within 10 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if got.len() >= end + 4 + length {
            return text[9..12]
                .parse()
                .map_err(|_| format!("status line of {text:?}"));
        }
    }
}

/// A keep-alive connection idle for longer than the header-read timeout is still served: the
/// idle timeout (1 h by default) decides when it closes, not a timer for request heads (it was
/// 30 s, shorter than most clients' pools).
#[tokio::test]
async fn keep_alive_outlives_the_header_read_timeout() {
    let (_dir, _web, caller) =
        demo_pair("keepalive-long", "http", &["--header-read-timeout=1s"]).await;
    let mut s = tokio::net::TcpStream::connect(caller.outbound)
        .await
        .unwrap();
    assert_eq!(h1_request(&mut s).await, Ok(200));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h1_request(&mut s).await,
        Ok(200),
        "the kept-alive connection was closed after the header-read timeout"
    );
}

/// `--idle-timeout` closes an idle client connection, HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn idle_client_connections_close_after_the_idle_timeout() {
    let (_dir, _web, caller) = demo_pair("keepalive-idle", "http", &["--idle-timeout=1s"]).await;
    let mut s = tokio::net::TcpStream::connect(caller.outbound)
        .await
        .unwrap();
    assert_eq!(h1_request(&mut s).await, Ok(200));
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "HTTP/1.1: not closed after the idle timeout: {read:?}"
    );

    let stream = tokio::net::TcpStream::connect(caller.outbound)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://web/hello")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    drop(rsp);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "HTTP/2: not closed after the idle timeout");
}

/// `--upstream-idle-timeout` closes the caller's idle pooled connection to the peer sidecar
/// (the peer counts it closed), for the HTTP/1.1 pool and the multiplexed HTTP/2 connection.
#[tokio::test]
async fn idle_upstream_connections_close_after_the_upstream_idle_timeout() {
    for protocol in ["http", "http2"] {
        let (_dir, web, caller) = demo_pair(
            &format!("upstream-idle-{protocol}"),
            protocol,
            &["--upstream-idle-timeout=1s"],
        )
        .await;
        let client = http1();
        let a = get(&client, caller.outbound, Some("web"), "/hello", &[]).await;
        assert_eq!(a.status, 200, "{protocol}: {}", a.body);
        let closed = || {
            counter(
                web.admin,
                "trellis_tcp_connections_closed_total",
                &[("direction", "inbound")],
            )
        };
        let mut n = 0.0;
        for _ in 0..100 {
            n = closed().await;
            if n >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            n, 1.0,
            "{protocol}: the idle upstream connection was not closed"
        );
    }
}
