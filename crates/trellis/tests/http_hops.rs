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
