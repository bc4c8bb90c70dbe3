//! The control plane's API and CLI verbs against a real `trellis control` process with the
//! embedded store: apply, get, describe, delete; invalid resources and stale versions are
//! refused with nothing changed; config survives a restart.
mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn ctl(control: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("TRELLIS_CONTROL", control)
        .output()
        .expect("run trellis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn start_control(dir: &std::path::Path, addr: std::net::SocketAddr) -> Proc {
    Proc::spawn(
        dir,
        "control",
        &[
            "control".into(),
            format!("--listen={addr}"),
            format!("--data-dir={}", dir.join("data").display()),
        ],
    )
}

async fn wait_api(addr: std::net::SocketAddr) {
    for _ in 0..400 {
        if let Ok((200, _)) = get_status(addr, "/api/v1/health").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("control plane API at {addr} never answered");
}

const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules: [{timeout: 2s}]
";

#[tokio::test]
async fn apply_get_delete_with_versions_and_errors() {
    let dir = tempdir("ctlapi");
    let addr = free_addr();
    let control = format!("http://{addr}");
    let mut cp = start_control(&dir, addr);
    wait_api(addr).await;
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, MESH).unwrap();
    let f = file.to_str().unwrap();
    let (ok, out, err) = ctl(&control, &["apply", "-f", f]);
    assert!(ok, "{err}");
    assert!(out.contains("Service/default/web created"), "{out}");
    let (_, out, _) = ctl(&control, &["apply", "-f", f]);
    assert!(out.contains("Route/default/web unchanged"), "{out}");

    let (ok, out, _) = ctl(&control, &["get", "route", "web", "-o", "yaml"]);
    assert!(ok);
    assert!(out.contains("resourceVersion"), "{out}");
    // Edit what we got and apply it: a conditional replace that succeeds once.
    let edited = dir.join("edited.yaml");
    std::fs::write(&edited, out.replace("timeout: 2s", "timeout: 3s")).unwrap();
    let (ok, out, err) = ctl(&control, &["apply", "-f", edited.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("configured"), "{out}");
    // The same stale edit again is refused: someone changed it since.
    let (ok, _, err) = ctl(&control, &["apply", "-f", edited.to_str().unwrap()]);
    assert!(!ok, "a stale resourceVersion must be refused");
    assert!(err.contains("Route/default/web"), "{err}");
    let (_, out, _) = ctl(&control, &["get", "route", "web", "-o", "json"]);
    assert!(
        out.contains("\"timeout\": \"3s\""),
        "the refused write changed nothing: {out}"
    );

    // Invalid input names file, document and field; nothing is applied.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: other}\nspec: {ports: [{port: 81}]}\n---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata: {name: x}\nspec:\n  service: web\n  rules: [{backends: [{service: web, weight: 99999}]}]\n",
    )
    .unwrap();
    let (ok, _, err) = ctl(&control, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("bad.yaml") && err.contains("spec.rules[0].backends[0].weight"),
        "{err}"
    );
    let (_, out, _) = ctl(&control, &["get", "services"]);
    assert!(
        !out.contains("other"),
        "nothing of the bad file was applied: {out}"
    );

    // The API refuses invalid resources even when the CLI's own check is bypassed.
    let rsp = http1()
        .request(
            http::Request::post(format!("{control}/api/v1/apply?file=raw.yaml"))
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    "kind: Nope\n",
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 400);

    // Garbage on the control port (HTTP/1 junk, a broken HTTP/2 preface, random bytes) is
    // answered or closed, and the API keeps working.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for junk in [
        &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n\x00\x01"[..],
        &b"GET /\x01 HTTP/9\r\n\r\n"[..],
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    }
    let (ok, out, _) = ctl(&control, &["get", "routes"]);
    assert!(
        ok && out.contains("web"),
        "the API still answers after garbage: {out}"
    );

    // Restart: config survives.
    cp.terminate();
    cp.wait_exit(Duration::from_secs(10))
        .expect("control plane exits on SIGTERM");
    let _cp = start_control(&dir, addr);
    wait_api(addr).await;
    let (ok, out, _) = ctl(&control, &["get", "routes"]);
    assert!(ok && out.contains("web"), "{out}");
    let (ok, out, _) = ctl(&control, &["delete", "route", "web"]);
    assert!(ok, "{out}");
    let (ok, _, err) = ctl(&control, &["get", "route", "web"]);
    assert!(!ok && err.contains("not found"), "{err}");
}
