//! Bad input of every kind gets a clear, typed answer and never takes the proxy down: invalid
//! config at start and on reload, garbage bytes, oversized headers, requests with no
//! destination, unknown hosts, dead endpoints.
mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(s).await
}

struct Setup {
    _dir: std::path::PathBuf,
    config: std::path::PathBuf,
    instance: Instance,
    caller: Caller,
}

async fn setup(tag: &str) -> Setup {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let dead = free_addr();
    let text = format!(
        "{}{}{}{}",
        service("web", "http"),
        workload("web-0", "web", "v1", ports.inbound),
        service("dead", "http"),
        workload("dead-0", "dead", "v1", dead),
    ) + &service("empty", "http");
    write_config(&config, &text);
    let instance = start_instance(&dir, &config, "web", "web-0", &[], ports);
    let caller = start_caller(&dir, &config, &[]);
    wait_ready(instance.admin).await;
    wait_ready(caller.admin).await;
    wait_listening(instance.app_addr).await;
    Setup {
        _dir: dir,
        config,
        instance,
        caller,
    }
}

async fn still_serving(s: &Setup) {
    let a = get(&http1(), s.caller.outbound, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 200, "the proxy must keep serving: {}", a.body);
}

#[tokio::test]
async fn invalid_reload_is_rejected_and_last_good_config_kept() {
    let s = setup("badreload").await;
    let good = std::fs::read_to_string(&s.config).unwrap();
    let bad = format!(
        "{good}---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: r}}\nspec:\n  service: web\n  rules:\n    - matches: [{{path: {{type: RegularExpression, value: '/(unclosed'}}}}]\n"
    );
    write_config(&s.config, &bad);
    let mut last_error = String::new();
    for _ in 0..100 {
        let (_, body) = get_status(s.caller.admin, "/config").await.unwrap();
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(e) = j["lastError"].as_str() {
            last_error = e.to_string();
            assert_eq!(j["version"], 1, "the bad config must not be installed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("rejected reload: {last_error}");
    assert!(
        last_error.contains("mesh.yaml"),
        "names the file: {last_error}"
    );
    assert!(
        last_error.contains("spec.rules[0].matches[0].path"),
        "names the field path: {last_error}"
    );
    still_serving(&s).await;
    // A file that is not YAML at all.
    write_config(&s.config, "kind: [unclosed\n\t:::");
    tokio::time::sleep(Duration::from_millis(400)).await;
    still_serving(&s).await;
    // And a good one is applied again.
    write_config(&s.config, &good.replace("port: 80", "port: 81"));
    for _ in 0..100 {
        let (_, body) = get_status(s.caller.admin, "/config").await.unwrap();
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        if j["version"] == 2 {
            assert!(j["lastError"].is_null());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the good config was never applied");
}

#[tokio::test]
async fn garbage_bytes_and_oversized_headers() {
    let s = setup("garbage").await;
    // Not HTTP on the Host-routed port: opaque TCP with no destination, closed.
    let out = raw(s.caller.outbound, b"\x16\x03\x01\x00\xffgarbage\r\n\r\n").await;
    assert!(out.is_empty(), "expected a closed connection, got {out:?}");
    // Looks like HTTP but is malformed: a clean 400 from the HTTP server.
    let out = raw(s.caller.outbound, b"GET /\x01\x02 HTTP/9.9\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "got {out:?}");
    // The inbound port of an HTTP service answers garbage with 400 (no detection fallback).
    let out = raw(s.instance.inbound, b"\x00\x01\x02\x03 nonsense\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "got {out:?}");
    // Oversized request head.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let out = raw(s.caller.outbound, big.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "got {:?}",
        &out[..out.len().min(80)]
    );
    still_serving(&s).await;
}

#[tokio::test]
async fn every_proxy_answer_says_why() {
    let s = setup("reasons").await;
    let c = http1();
    let out = s.caller.outbound;
    let a = get(&c, out, Some("nosuch"), "/", &[]).await;
    assert_eq!(
        (a.status, a.header("trellis-error")),
        (404, Some("no-route"))
    );
    assert!(a.body.contains("nosuch"));
    let a = get(&c, out, Some("dead"), "/", &[]).await;
    assert_eq!(
        (a.status, a.header("trellis-error")),
        (503, Some("connect-failed"))
    );
    let a = get(&c, out, Some("empty"), "/", &[]).await;
    assert_eq!(
        (a.status, a.header("trellis-error")),
        (503, Some("no-healthy-endpoints"))
    );
    // HTTP/1.0 without Host names no destination.
    let text = raw(out, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.0 400") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert!(text.contains("trellis-error: bad-request"), "{text}");
    // The inbound side says so when its app is down.
    drop(s.instance.app);
    let a = get(&c, out, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("trellis-error"), Some("connect-failed"));
    assert!(a.body.contains("local app"), "{}", a.body);
}

#[tokio::test]
async fn proxy_refuses_to_start_on_invalid_config_and_says_where() {
    let dir = tempdir("badstart");
    let config = dir.join("bad.yaml");
    std::fs::write(
        &config,
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  service: web\n  rules:\n    - backends:\n        - {service: web, weight: 5}\n        - {service: web, weight: 20000}\n",
    )
    .unwrap();
    let mut p = Proc::spawn(
        &dir,
        "proxy",
        &[
            "proxy".into(),
            format!("--config={}", config.display()),
            "--service=web".into(),
            format!("--outbound={}", free_addr()),
            format!("--admin={}", free_addr()),
        ],
    );
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("proxy should exit");
    assert!(!status.success());
    let log = p.log_text();
    assert!(log.contains("bad.yaml"), "{log}");
    assert!(log.contains("spec.rules[0].backends[1].weight"), "{log}");
}

#[test]
fn validate_reports_file_document_and_path() {
    let dir = tempdir("validate");
    let cases = [
        ("malformed.yaml", "kind: Service\nmetadata: {name: [\n", "invalid YAML"),
        (
            "unknown.yaml",
            "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 80}]\n  bogus: 1\n",
            "unknown field `bogus`",
        ),
        (
            "dup.yaml",
            "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n",
            "duplicate",
        ),
    ];
    for (file, text, want) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["validate", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file} must be rejected");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(file), "{file}: {err}");
        assert!(err.contains(want), "{file}: expected {want:?} in {err}");
    }
    let out = std::process::Command::new(BIN)
        .args([
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/mesh.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
