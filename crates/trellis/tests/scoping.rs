//! Explicit scoping end to end (`Service.spec.egress`), real processes: a control plane, services
//! b and c each served by an app behind a registered sidecar, and a caller sidecar of service
//! `client`, whose Service lists only b. The caller holds b and not c; a call to b is answered,
//! a call to c is `404 no-route` and never reaches c's app; once the list is removed the same
//! caller holds c and reaches it.
mod common;

use common::mesh::*;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SERVICES: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: b}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: c}
spec: {ports: [{port: 80, protocol: http}]}
";

fn client_service(egress: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: client}}\nspec: {{ports: [{{port: 80, protocol: http}}]{egress}}}\n"
    )
}

/// An app that answers every request `200` and counts the requests it was sent.
async fn counting_app(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.expect("bind the app");
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n";
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    requests
}

/// A counting app for `service` and its sidecar, registering with the control plane.
async fn served(dir: &std::path::Path, url: &str, service: &str) -> (Proc, Arc<AtomicUsize>) {
    let p = Ports::free();
    let requests = counting_app(p.app).await;
    let sidecar = Proc::spawn(
        dir,
        &format!("{service}-proxy"),
        &[
            "proxy".into(),
            format!("--control={url}"),
            format!("--node-id={service}-0"),
            format!("--service={service}"),
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
            "--lease-ttl=2s".into(),
        ],
    );
    wait_ready(p.admin).await;
    (sidecar, requests)
}

/// The Services a proxy's config holds, each with how many endpoints it has.
async fn held(admin: SocketAddr) -> Vec<(String, usize)> {
    let config = config_of(admin).await;
    let mut held: Vec<(String, usize)> = config["services"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| {
            let name = s["name"].as_str()?.to_string();
            Some((name, s["endpoints"].as_array().map_or(0, Vec::len)))
        })
        .collect();
    held.sort();
    held
}

/// Waits (bounded) until the proxy behind `admin` holds exactly `want`.
async fn wait_held(admin: SocketAddr, want: &[(&str, usize)]) {
    let want: Vec<(String, usize)> = want.iter().map(|(n, e)| (n.to_string(), *e)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = held(admin).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the caller holds {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_sidecar_holds_and_reaches_only_what_its_service_lists() {
    let dir = tempdir("scoping");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(
        &url,
        &dir,
        &format!("{SERVICES}---\n{}", client_service(", egress: [b]")),
    );
    let (_b, b_requests) = served(&dir, &url, "b").await;
    let (_c, c_requests) = served(&dir, &url, "c").await;

    let (outbound, admin) = (free_addr(), free_addr());
    let _caller = Proc::spawn(
        &dir,
        "client-proxy",
        &[
            "proxy".into(),
            format!("--control={url}"),
            "--node-id=client-0".into(),
            "--service=client".into(),
            format!("--outbound={outbound}"),
            format!("--admin={admin}"),
        ],
    );
    wait_ready(admin).await;
    // Its own service and b with b's endpoint; never c.
    wait_held(admin, &[("b", 1), ("client", 0)]).await;

    let http = http1();
    let a = get(&http, outbound, Some("b"), "/", &[]).await;
    assert_eq!(a.status, 200, "{} {:?}", a.body, a.header("trellis-error"));
    assert_eq!(b_requests.load(Ordering::SeqCst), 1);
    for _ in 0..3 {
        let a = get(&http, outbound, Some("c"), "/", &[]).await;
        assert_eq!(a.status, 404, "{}", a.body);
        assert_eq!(a.header("trellis-error"), Some("no-route"));
    }
    // The same from curl over HTTP/2 (prior knowledge): another client, another protocol.
    let head = curl(&[
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Host: c",
        &format!("http://{outbound}/"),
    ]);
    assert!(head.starts_with("HTTP/2 404"), "{head}");
    assert!(head.contains("trellis-error: no-route"), "{head}");
    assert_eq!(
        c_requests.load(Ordering::SeqCst),
        0,
        "a call outside the list reached c's app"
    );

    // Without the list the same caller gets c (and its endpoint) and reaches it: c was there
    // all along, only out of scope.
    apply(&url, &dir, &client_service(""));
    wait_held(admin, &[("b", 1), ("c", 1), ("client", 0)]).await;
    let a = get(&http, outbound, Some("c"), "/", &[]).await;
    assert_eq!(a.status, 200, "{} {:?}", a.body, a.header("trellis-error"));
    assert_eq!(c_requests.load(Ordering::SeqCst), 1);
}
