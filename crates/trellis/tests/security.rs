//! Mesh security end to end with real processes on static config: mTLS between sidecars (bytes on
//! the wire are TLS), strict mode refusing plaintext, untrusted / expired / wrong-identity
//! certificates refused, AuthorizationPolicy by identity and path, and JWT validation. Certificates
//! come from a CA made in the test (the control plane's CA path is in `security_mesh.rs`).
mod common;

use base64::Engine;
use common::pki::*;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_identity::rustls;

/// The backend: a demo app and its sidecar holding `issued`.
fn start_backend(
    dir: &Path,
    config: &Path,
    name: &str,
    pki: &Pki,
    issued: &Issued,
    ports: Ports,
) -> (Proc, Proc) {
    start_backend_app(dir, config, name, pki, issued, ports, &[])
}

fn start_backend_app(
    dir: &Path,
    config: &Path,
    name: &str,
    pki: &Pki,
    issued: &Issued,
    ports: Ports,
    app_args: &[&str],
) -> (Proc, Proc) {
    let mut app_argv = vec![
        "demo-app".to_string(),
        format!("--listen={}", ports.app),
        "--name=backend".into(),
        format!("--instance={name}"),
    ];
    app_argv.extend(app_args.iter().map(|a| a.to_string()));
    let app = Proc::spawn(dir, &format!("{name}-app"), &app_argv);
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        "--service=backend".into(),
        "--outbound=off".into(),
        format!("--inbound={}", ports.inbound),
        format!("--app={}", ports.app),
        format!("--admin={}", ports.admin),
        "--detect-timeout=300ms".into(),
    ];
    args.extend(tls_args(pki, issued));
    let sidecar = Proc::spawn(dir, &format!("{name}-proxy"), &args);
    (app, sidecar)
}

/// A caller's sidecar for `service`, with one per-upstream port to the backend.
fn start_caller_as(
    dir: &Path,
    config: &Path,
    service: &str,
    pki: &Pki,
    issued: &Issued,
) -> (Proc, SocketAddr, SocketAddr) {
    let (port, admin) = (free_addr(), free_addr());
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        format!("--service={service}"),
        "--outbound=off".into(),
        format!("--upstream=backend={port}"),
        format!("--admin={admin}"),
    ];
    args.extend(tls_args(pki, issued));
    (
        Proc::spawn(dir, &format!("{service}-caller"), &args),
        port,
        admin,
    )
}

fn mesh_config(mode: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata:\n  name: mesh\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

fn backend_workload(name: &str, addr: SocketAddr, identity_of: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata:\n  name: {name}\n  labels:\n    app: backend\nspec:\n  service: backend\n  address: {}\n  port: {}\n  identity: spiffe://{TD}/ns/default/sa/{identity_of}\n",
        addr.ip(),
        addr.port()
    )
}

/// Strict mTLS, the `backend` service on `protocol`, and one endpoint at `addr` that must prove
/// the backend's identity.
fn strict_backend(protocol: &str, addr: SocketAddr) -> String {
    format!(
        "{}{}{}",
        mesh_config("Strict"),
        service("backend", protocol),
        backend_workload("backend-1", addr, "backend")
    )
}

/// A TCP relay that records every byte the client side sends: what a capture on the wire sees.
async fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay bind");
    let addr = listener.local_addr().expect("relay addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut up_r, mut up_w) = up.into_split();
                let (mut down_r, mut down_w) = down.split();
                let to_server = async {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match down_r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if up_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = up_w.shutdown().await;
                };
                let to_client = async {
                    let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
                };
                tokio::join!(to_server, to_client);
            });
        }
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn sidecars_speak_mtls_on_the_wire_and_strict_refuses_plaintext() {
    let dir = tempdir("mtls-wire");
    let pki = Pki::new(&dir, "mesh");
    let (backend_cert, frontend_cert) = (pki.issue("backend"), pki.issue("frontend"));
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let (relay, seen) = recording_relay(ports.inbound).await;
    write_config(&config, &strict_backend("http", relay));
    let (_app, _sidecar) = start_backend(&dir, &config, "backend-1", &pki, &backend_cert, ports);
    let (_caller, port, caller_admin) =
        start_caller_as(&dir, &config, "frontend", &pki, &frontend_cert);
    wait_ready(ports.admin).await;
    wait_ready(caller_admin).await;

    let client = http1();
    let marker = "x-trellis-test-marker";
    let answer = get(
        &client,
        port,
        Some("backend"),
        "/hello",
        &[(marker, "s3cr3t-value")],
    )
    .await;
    assert_eq!(answer.status, 200, "through the mTLS hop: {answer:?}");
    assert_eq!(answer.json()["service"], "backend", "{answer:?}");

    // HTTP/2 takes the same mTLS hop (one multiplexed connection per endpoint).
    let h2 = get(
        &http2(),
        port,
        Some("backend"),
        "/hello",
        &[(marker, "s3cr3t-value")],
    )
    .await;
    assert_eq!(h2.status, 200, "HTTP/2 through the mTLS hop: {h2:?}");

    // A WebSocket upgrade takes a fresh connection to the peer: mTLS as well.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let stream = tokio::net::TcpStream::connect(port).await.unwrap();
        let (mut ws, rsp) = tokio_tungstenite::client_async("ws://backend/ws", stream)
            .await
            .expect("websocket handshake through the mTLS hop");
        assert_eq!(rsp.status(), 101);
        ws.send(Message::text("ws-s3cr3t-frame")).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), "ws-s3cr3t-frame");
        ws.close(None).await.unwrap();
    }

    let wire = seen.lock().unwrap().clone();
    assert!(!wire.is_empty(), "the relay saw the caller's bytes");
    assert_eq!(
        wire[0], 0x16,
        "the first byte on the wire is a TLS handshake record"
    );
    for clear in [
        &b"GET /hello"[..],
        b"HTTP/1.1",
        marker.as_bytes(),
        b"s3cr3t-value",
    ] {
        assert!(
            !contains(&wire, clear),
            "{:?} appears in clear on the wire",
            String::from_utf8_lossy(clear)
        );
    }

    assert!(
        !contains(&wire.to_ascii_lowercase(), b"upgrade: websocket"),
        "the WebSocket upgrade appears in clear on the wire"
    );

    // Plaintext straight to the strict inbound port gets no answer.
    let plain = get_status(ports.inbound, "/hello").await;
    assert!(
        plain.is_err(),
        "plaintext to a strict port must be refused: {plain:?}"
    );
    let refused = counter(
        ports.admin,
        "trellis_inbound_tls_connections_total",
        &[("result", "plaintext-refused")],
    )
    .await;
    assert!(refused >= 1.0, "refusal counted: {refused}");
    let ok = counter(
        ports.admin,
        "trellis_inbound_tls_connections_total",
        &[("result", "ok")],
    )
    .await;
    assert!(ok >= 1.0, "mTLS connection counted: {ok}");

    // Permissive (the default) takes both.
    write_config(
        &config,
        &format!(
            "{}{}{}",
            mesh_config("Permissive"),
            service("backend", "http"),
            backend_workload("backend-1", relay, "backend")
        ),
    );
    let mut answered = None;
    for _ in 0..100 {
        if let Ok((200, body)) = get_status(ports.inbound, "/hello").await {
            answered = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered.is_some(), "permissive mode accepts plaintext");
    let answer = get(&client, port, Some("backend"), "/hello", &[]).await;
    assert_eq!(answer.status, 200, "and mTLS: {answer:?}");
}

#[tokio::test]
async fn opaque_tcp_between_sidecars_is_mtls_too() {
    let dir = tempdir("mtls-tcp");
    let pki = Pki::new(&dir, "mesh");
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let (relay, seen) = recording_relay(ports.inbound).await;
    write_config(&config, &strict_backend("tcp", relay));
    let (_app, _sidecar) = start_backend_app(
        &dir,
        &config,
        "backend-1",
        &pki,
        &pki.issue("backend"),
        ports,
        &["--mode=tcp", "--version=v9"],
    );
    let (_caller, port, admin) =
        start_caller_as(&dir, &config, "frontend", &pki, &pki.issue("frontend"));
    wait_ready(ports.admin).await;
    wait_ready(admin).await;
    let mut s = tokio::net::TcpStream::connect(port).await.unwrap();
    let payload = b"\x00\x01opaque-secret-bytes\xff";
    s.write_all(payload).await.unwrap();
    let want = [&b"backend/v9: "[..], payload].concat();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("echo within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, want);
    let wire = seen.lock().unwrap().clone();
    assert_eq!(wire.first(), Some(&0x16), "TLS on the wire");
    assert!(
        !contains(&wire, b"opaque-secret-bytes"),
        "payload in clear on the wire"
    );
}

/// Connects to `addr` with a client certificate, sends one request and returns what came back
/// (empty when the server refused the certificate).
async fn raw_mtls_request(addr: SocketAddr, issued: &Issued) -> Vec<u8> {
    let connector = trellis_identity::tokio_rustls::TlsConnector::from(client_config(issued));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return Vec::new();
    };
    let req = b"GET /hello HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n";
    if tls.write_all(req).await.is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn untrusted_expired_and_wrong_identity_certificates_are_refused() {
    let dir = tempdir("mtls-refuse");
    let pki = Pki::new(&dir, "mesh");
    let rogue = Pki::new(&dir, "rogue");
    let config = dir.join("mesh.yaml");
    let (ports, imposter) = (Ports::free(), Ports::free());
    write_config(&config, &strict_backend("http", ports.inbound));
    let (_app, _sidecar) = start_backend(
        &dir,
        &config,
        "backend-1",
        &pki,
        &pki.issue("backend"),
        ports,
    );
    // A second "backend" whose sidecar holds another service's certificate.
    let (_app2, _sidecar2) = start_backend(
        &dir,
        &config,
        "imposter-1",
        &pki,
        &pki.issue("imposter"),
        imposter,
    );
    wait_ready(ports.admin).await;
    wait_ready(imposter.admin).await;

    let good = raw_mtls_request(ports.inbound, &pki.issue("frontend")).await;
    assert!(
        good.starts_with(b"HTTP/1.1 200"),
        "a valid mesh certificate is served: {:?}",
        String::from_utf8_lossy(&good)
    );
    let untrusted = raw_mtls_request(ports.inbound, &rogue.issue("frontend")).await;
    assert!(
        !contains(&untrusted, b"HTTP/1.1"),
        "a certificate from another CA is refused: {:?}",
        String::from_utf8_lossy(&untrusted)
    );
    let expired =
        raw_mtls_request(ports.inbound, &pki.issue_window("frontend", -7200, -3600)).await;
    assert!(
        !contains(&expired, b"HTTP/1.1"),
        "an expired certificate is refused: {:?}",
        String::from_utf8_lossy(&expired)
    );
    let failed = counter(
        ports.admin,
        "trellis_inbound_tls_connections_total",
        &[("result", "handshake-failed")],
    )
    .await;
    assert!(failed >= 2.0, "both refusals counted: {failed}");

    // The caller expects the backend's identity; the imposter's certificate says otherwise.
    let caller_config = dir.join("caller.yaml");
    write_config(&caller_config, &strict_backend("http", imposter.inbound));
    let (_caller, port, admin) = start_caller_as(
        &dir,
        &caller_config,
        "frontend",
        &pki,
        &pki.issue("frontend"),
    );
    wait_ready(admin).await;
    let answer = get(&http1(), port, Some("backend"), "/hello", &[]).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("trellis-error"), Some("connect-failed"));
    assert!(
        answer
            .body
            .contains("expected spiffe://cluster.local/ns/default/sa/backend"),
        "the error names the identity mismatch: {}",
        answer.body
    );
}

const JWT_SECRET: &[u8] = b"trellis-test-hmac-secret-of-32-bytes!";
const ISSUER: &str = "https://issuer.test";

fn jwt(claims: serde_json::Value, secret: &[u8]) -> String {
    // Installs the validator's crypto provider, which jsonwebtoken needs to sign too.
    let _ = trellis_identity::JwtValidator::new(&[]);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign token")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn policy_docs() -> String {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(JWT_SECRET);
    format!(
        r#"---
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata:
  name: backend-callers
spec:
  service: backend
  defaultAction: Deny
  rules:
    - name: no-admin
      action: Deny
      to:
        paths: ["/admin*"]
    - name: frontend
      action: Allow
      from:
        principals: ["spiffe://cluster.local/ns/default/sa/frontend"]
    - name: readers
      action: Allow
      from:
        requestPrincipals: ["{ISSUER}/*"]
      when:
        - claim: role
          values: ["reader"]
---
apiVersion: trellis.dev/v1
kind: RequestAuthentication
metadata:
  name: backend-jwt
spec:
  service: backend
  jwtRules:
    - issuer: {ISSUER}
      audiences: ["backend"]
      jwks:
        inline: '{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}'
"#
    )
}

#[tokio::test]
async fn authorization_policy_and_jwt_guard_the_inbound_side() {
    let dir = tempdir("authz");
    let pki = Pki::new(&dir, "mesh");
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    write_config(
        &config,
        &format!("{}{}", strict_backend("http", ports.inbound), policy_docs()),
    );
    let (_app, _sidecar) = start_backend(
        &dir,
        &config,
        "backend-1",
        &pki,
        &pki.issue("backend"),
        ports,
    );
    let (_frontend, front_port, front_admin) =
        start_caller_as(&dir, &config, "frontend", &pki, &pki.issue("frontend"));
    let (_intruder, intr_port, intr_admin) =
        start_caller_as(&dir, &config, "intruder", &pki, &pki.issue("intruder"));
    wait_ready(ports.admin).await;
    wait_ready(front_admin).await;
    wait_ready(intr_admin).await;
    let client = http1();

    let ok = get(&client, front_port, Some("backend"), "/hello", &[]).await;
    assert_eq!(ok.status, 200, "frontend is allowed by identity: {ok:?}");
    let admin = get(&client, front_port, Some("backend"), "/admin/users", &[]).await;
    assert_eq!(admin.status, 403, "deny rules win: {admin:?}");
    assert_eq!(admin.header("trellis-error"), Some("denied"));
    assert!(
        admin.body.contains("backend-callers/no-admin"),
        "{}",
        admin.body
    );

    let denied = get(&client, intr_port, Some("backend"), "/hello", &[]).await;
    assert_eq!(
        denied.status, 403,
        "another service's certificate: {denied:?}"
    );
    assert_eq!(denied.header("trellis-error"), Some("denied"));
    assert!(
        denied
            .body
            .contains("spiffe://cluster.local/ns/default/sa/intruder"),
        "names the caller: {}",
        denied.body
    );

    let exp = now_secs() + 600;
    let claims = |aud: &str, exp: u64| serde_json::json!({"iss": ISSUER, "sub": "alice", "aud": aud, "exp": exp, "role": "reader"});
    let bearer = |t: String| format!("Bearer {t}");
    let good = bearer(jwt(claims("backend", exp), JWT_SECRET));
    let answer = get(
        &client,
        intr_port,
        Some("backend"),
        "/hello",
        &[("authorization", &good)],
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "a valid token with the claim is allowed: {answer:?}"
    );

    let cases = [
        (
            jwt(claims("backend", exp), b"some-other-secret-entirely-32byt"),
            "bad-signature",
        ),
        (jwt(claims("billing", exp), JWT_SECRET), "wrong-audience"),
        (
            jwt(claims("backend", now_secs() - 3600), JWT_SECRET),
            "expired",
        ),
    ];
    for (token, reason) in cases {
        let h = bearer(token);
        let answer = get(
            &client,
            intr_port,
            Some("backend"),
            "/hello",
            &[("authorization", &h)],
        )
        .await;
        assert_eq!(answer.status, 401, "{reason}: {answer:?}");
        assert_eq!(answer.header("trellis-error"), Some("unauthenticated"));
        assert!(answer.body.contains(reason), "{reason}: {}", answer.body);
    }

    let denials = counter(
        ports.admin,
        "trellis_authorization_decisions_total",
        &[("decision", "denied"), ("policy", "backend-callers")],
    )
    .await;
    assert!(denials >= 2.0, "denials counted by policy: {denials}");
    let by_reason = counter(
        ports.admin,
        "trellis_requests_total",
        &[("direction", "inbound"), ("reason", "denied")],
    )
    .await;
    assert!(
        by_reason >= 2.0,
        "denied requests counted by reason: {by_reason}"
    );
    let log = std::fs::read_to_string(dir.join("backend-1-proxy.log")).unwrap_or_default();
    assert!(
        log.contains("request denied") && log.contains("backend-callers/no-admin"),
        "the denial is logged with its policy"
    );
}
