//! Mesh identity from the control plane's CA with real processes: sidecars get SPIFFE
//! certificates over the control connection (join token), call each other over mTLS, renew
//! one-minute certificates under steady load, and live through a root rotation (add, activate,
//! retire) — all without one failed request.
mod common;

use common::*;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESH: &str = "apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {name: mesh}
spec: {mtls: {mode: Strict}, certificateLifetime: 1m}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: backend}
spec: {ports: [{port: 80, protocol: http}]}
";

/// Calls the control plane's API with the join token.
async fn api(
    control: SocketAddr,
    method: http::Method,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{control}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/yaml")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let rsp = http1().request(req).await.expect("control plane answers");
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// What a proxy's `/config` says about its certificate and trust bundle.
async fn tls_of(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = get_status(admin, "/config").await.expect("/config");
    let v: serde_json::Value = serde_json::from_str(&body).expect("config JSON");
    v["tls"].clone()
}

/// Waits (bounded) until `check` holds for the TLS status of every admin port.
async fn wait_tls(
    admins: &[SocketAddr],
    what: &str,
    limit: Duration,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for a in admins {
            if !check(&tls_of(*a).await) {
                all = false;
            }
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sidecar(dir: &Path, control: SocketAddr, name: &str, service: &str, extra: &[String]) -> Proc {
    let mut args = vec![
        "proxy".to_string(),
        format!("--control=http://{control}"),
        format!("--node-id={name}"),
        format!("--service={service}"),
        "--lease-ttl=2s".into(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(dir, name, &args)
}

#[tokio::test]
async fn certificates_and_roots_rotate_under_load_without_a_failed_request() {
    let dir = tempdir("mesh-ca");
    let control = free_addr();
    let _cp = Proc::spawn(
        &dir,
        "control",
        &[
            "control".into(),
            format!("--listen={control}"),
            format!("--data-dir={}", dir.join("data").display()),
        ],
    );
    wait_api(control).await;
    let (status, v) = api(
        control,
        http::Method::POST,
        "/api/v1/apply?file=mesh.yaml",
        MESH,
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let p = Ports::free();
    let _app = Proc::spawn(
        &dir,
        "backend-app",
        &[
            "demo-app".into(),
            format!("--listen={}", p.app),
            "--name=backend".into(),
            "--instance=backend-1".into(),
        ],
    );
    let _backend = sidecar(
        &dir,
        control,
        "backend-1",
        "backend",
        &[
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
        ],
    );
    let (port, caller_admin) = (free_addr(), free_addr());
    let _caller = sidecar(
        &dir,
        control,
        "frontend-1",
        "frontend",
        &[
            "--outbound=off".into(),
            format!("--upstream=backend={port}"),
            format!("--admin={caller_admin}"),
        ],
    );
    wait_ready(p.admin).await;
    wait_ready(caller_admin).await;
    let admins = [p.admin, caller_admin];

    // Each holds its own SPIFFE identity from the CA; the registered workload carries it.
    assert_eq!(
        tls_of(p.admin).await["identity"],
        "spiffe://cluster.local/ns/default/sa/backend"
    );
    assert_eq!(
        tls_of(caller_admin).await["identity"],
        "spiffe://cluster.local/ns/default/sa/frontend"
    );
    let client = http1();
    let mut first = None;
    for _ in 0..100 {
        let a = get(&client, port, Some("backend"), "/", &[]).await;
        if a.status == 200 {
            first = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.is_some(), "the caller reaches the backend over mTLS");
    // Strict: plaintext to the backend's inbound port is refused.
    assert!(get_status(p.inbound, "/").await.is_err());

    // Steady load for the rest of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let client = http1();
            let deadline = Instant::now() + Duration::from_secs(150);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let req = http::Request::get(format!("http://{port}/"))
                    .header("host", "backend")
                    .body(Full::new(bytes::Bytes::new()))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        eprintln!("failed request: {}", r.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed request: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // A one-minute certificate is renewed at about half its lifetime.
    let before = tls_of(p.admin).await["notAfter"].as_u64().unwrap();
    wait_tls(&admins, "first renewal", Duration::from_secs(60), |t| {
        t["notAfter"].as_u64().unwrap_or(0) > before
    })
    .await;

    // Root rotation: a new root joins the bundle, then signs, then the old one is retired.
    let (status, ca) = api(control, http::Method::GET, "/api/v1/ca", "").await;
    assert_eq!(status, 200, "{ca}");
    let old_root = ca["active"].as_str().expect("active signer").to_string();
    let (status, added) = api(control, http::Method::POST, "/api/v1/ca/roots", "").await;
    assert_eq!(status, 200, "{added}");
    let new_root = added["id"].as_str().expect("new root id").to_string();
    wait_tls(
        &admins,
        "both roots trusted",
        Duration::from_secs(20),
        |t| t["roots"] == 2,
    )
    .await;
    let renewed_before: Vec<u64> = {
        let mut v = Vec::new();
        for a in admins {
            v.push(tls_of(a).await["notAfter"].as_u64().unwrap());
        }
        v
    };
    let (status, v) = api(
        control,
        http::Method::POST,
        &format!("/api/v1/ca/roots/{new_root}/activate"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // Every proxy renews once more, now from the new root.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (a, before) in admins.iter().zip(renewed_before) {
        loop {
            if tls_of(*a).await["notAfter"].as_u64().unwrap_or(0) > before {
                break;
            }
            assert!(Instant::now() < deadline, "renewal after activation");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (status, v) = api(
        control,
        http::Method::DELETE,
        &format!("/api/v1/ca/roots/{old_root}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    wait_tls(&admins, "old root retired", Duration::from_secs(20), |t| {
        t["roots"] == 1
    })
    .await;
    // Traffic keeps flowing on the new root alone, including fresh handshakes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let fresh = get(&http1(), port, Some("backend"), "/", &[]).await;
    assert_eq!(fresh.status, 200, "{fresh:?}");

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 500, "steady load ran: {ok} requests");
    assert_eq!(
        failed, 0,
        "no request lost across certificate and root rotation ({ok} ok)"
    );
}
