//! `trellis gateway` end to end: a real control plane (Strict mTLS), demo apps behind real
//! sidecars, and a gateway serving a Gateway API `Gateway` with HTTPS (two certificates chosen by
//! SNI, one a wildcard), plain HTTP (HTTP/1.1 and h2c), gRPC over both, TLS passthrough to a
//! backend that terminates TLS itself, and TLS terminated at the gateway with the plaintext
//! tunnelled to a TCP backend. Every answer is checked from the protected side: what the
//! app (or the TLS echo server) received, and the backend sidecar's inbound metrics naming the
//! gateway's SPIFFE identity as the caller; the gateway's access log lines and metrics say the
//! same. An AuthorizationPolicy denying the gateway's
//! identity gets 403 while another caller passes. Garbage on every port and silent connections
//! reach no app and hold up no one; with the control plane killed the gateway keeps serving;
//! SIGTERM lets an in-flight request finish. The clients are curl, grpcio and OpenSSL (Python's
//! `ssl`) beside rustls.
mod common;

use common::mesh::apply;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use trellis_identity::rustls;
use trellis_identity::tokio_rustls::{TlsAcceptor, TlsConnector};

const GATEWAY_ID: &str = "spiffe://cluster.local/ns/default/sa/edge";

/// A self-signed certificate for `hosts`, written as a mounted TLS Secret `dir/name/tls.{crt,key}`;
/// returns the certificate's PEM path (the CA a client trusts).
fn secret(dir: &Path, name: &str, hosts: &[&str]) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(d.join("tls.key"), key.serialize_pem()).unwrap();
    d.join("tls.crt")
}

/// Connections to each of `ports` that send nothing.
async fn silent_connections(ports: &[SocketAddr]) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for p in ports {
        out.push(tokio::net::TcpStream::connect(p).await.unwrap());
    }
    out
}

/// 4 KiB of bytes that are no protocol (a fixed xorshift sequence), written to `port`, the
/// write side closed, and whatever comes back (bounded: the gateway must close by itself).
async fn garbage_to(port: SocketAddr) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut x: u32 = 0x9e37_79b9;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut s = tokio::net::TcpStream::connect(port).await.unwrap();
    let _ = s.write_all(&junk).await;
    let _ = s.shutdown().await;
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut back)).await;
    assert!(
        read.is_ok(),
        "{port} closed a connection of garbage by itself"
    );
    back
}

/// A TLS echo server (the passthrough backend): terminates TLS with its own certificate for
/// `echo.tls.example.com`, echoes one line per connection, and counts connections.
async fn tls_echo(dir: &Path) -> (SocketAddr, PathBuf, Arc<AtomicUsize>) {
    let crt = secret(dir, "echo-backend", &["echo.tls.example.com"]);
    let chain = common::pki::rustls_pemfile_certs(&std::fs::read_to_string(&crt).unwrap());
    let key_pem = std::fs::read_to_string(crt.with_file_name("tls.key")).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(common::pki::pem_der(&key_pem, "PRIVATE KEY"))
            .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(trellis_identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let (r, mut w) = tokio::io::split(tls);
                let mut line = String::new();
                if BufReader::new(r).read_line(&mut line).await.is_ok() {
                    let _ = w.write_all(format!("echo: {line}").as_bytes()).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    (addr, crt, seen)
}

/// The access log's lines so far, each parsed (a line that is not JSON fails the test).
fn access_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A plaintext TCP echo server (the backend behind the `Terminate` listener): echoes one line
/// per connection and keeps every line it read (none for a connection that sent nothing).
async fn tcp_echo() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = lines.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let (r, mut w) = tokio::io::split(s);
                let mut line = String::new();
                // A connection that sends nothing (a probe of the app's port) is no line.
                if let Ok(1..) = BufReader::new(r).read_line(&mut line).await {
                    kept.lock().unwrap().push(line.clone());
                    let _ = w.write_all(format!("echo: {line}").as_bytes()).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    (addr, lines)
}

/// Connects through a `TLS` listener with SNI `name`, trusting only `ca`; the echo.
async fn tls_call(port: SocketAddr, name: &str, ca: &Path) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in common::pki::rustls_pemfile_certs(&std::fs::read_to_string(ca).unwrap()) {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(trellis_identity::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(port)
        .await
        .map_err(|e| e.to_string())?;
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(server, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    BufReader::new(tls)
        .read_line(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// One line through a `TLS` listener with OpenSSL as the client (Python's `ssl`), verifying the
/// certificate for `name` against `ca` only: sends `ping`, returns the line read back (empty when
/// the connection failed, with the error on stderr). Run off the test's runtime thread, which
/// the TCP echo behind the gateway needs meanwhile.
async fn openssl_line(port: SocketAddr, name: &str, ca: &Path) -> String {
    const CLIENT: &str = r#"
import socket, ssl, sys
port, name, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    with ctx.wrap_socket(s, server_hostname=name) as t:
        t.sendall(b"ping\n")
        sys.stdout.write(t.makefile().readline())
"#;
    let mut python = std::process::Command::new("python3");
    python
        .args(["-c", CLIENT, &port.port().to_string(), name])
        .arg(ca);
    let out = tokio::task::spawn_blocking(move || python.output())
        .await
        .expect("the client's thread")
        .expect("python3 is installed (scripts/test.sh installs it)");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A grpcio unary call (raw bytes, no generated code) through `target`: plaintext h2c, or TLS
/// trusting `ca` with `authority` as the SNI and `:authority`. Prints the outcome as JSON.
const GRPC_CLIENT: &str = r#"
import json, sys
import grpc

target, authority, ca = sys.argv[1], sys.argv[2], sys.argv[3]
raw = lambda b: b
if ca == "-":
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
else:
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    channel = grpc.secure_channel(target, creds, options=[
        ("grpc.ssl_target_name_override", authority), ("grpc.default_authority", authority)])
call = channel.unary_unary("/demo.Echo/Say", request_serializer=raw, response_deserializer=raw)
try:
    reply, rpc = call.with_call(b"\x00\x00\x00\x00\x05hello", timeout=10)
    out = {"code": "OK", "reply": reply.hex()}
except grpc.RpcError as e:
    out = {"code": e.code().name, "details": e.details() or ""}
print(json.dumps(out))
"#;

fn grpcio(dir: &Path, target: SocketAddr, authority: &str, ca: Option<&Path>) -> serde_json::Value {
    let script = dir.join("grpc_client.py");
    std::fs::write(&script, GRPC_CLIENT).unwrap();
    let ca = ca.map_or("-".to_string(), |p| p.display().to_string());
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args([&target.to_string(), authority, &ca])
        .output()
        .expect("python3 is not installed: run scripts/test.sh, which installs grpcio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the grpcio client failed (is grpcio installed? scripts/test.sh installs it): {stderr}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("client output ({e}): {text}"))
}

/// curl through the gateway: `-w` appends the HTTP version and status on a last line.
fn curl_via(args: &[&str]) -> (String, String) {
    let mut all = args.to_vec();
    all.extend(["-w", "\n%{http_version} %{http_code}"]);
    let out = curl(&all);
    match out.rsplit_once('\n') {
        Some((body, last)) => (body.to_string(), last.to_string()),
        None => (String::new(), out),
    }
}

fn resolve(host: &str, port: SocketAddr) -> String {
    format!("{host}:{}:127.0.0.1", port.port())
}

/// Repeats `f` (bounded: 30 s) until it gives `Some`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The mesh, the Gateway and its routes; every proxy appends access log lines to `log`.
fn mesh(p: &GatewayPorts, log: &Path) -> String {
    format!(
        r#"apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  mtls: {{mode: Strict}}
  telemetry: {{accessLog: {{enabled: true, output: {log}}}}}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: web}}
spec: {{ports: [{{port: 80, protocol: http}}]}}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: grpcsvc}}
spec: {{ports: [{{port: 80, protocol: grpc}}]}}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: tlsecho}}
spec: {{ports: [{{port: 443, protocol: tcp}}]}}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: tcpecho}}
spec: {{ports: [{{port: 7000, protocol: tcp}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  gatewayClassName: trellis
  listeners:
    - name: https-a
      port: {https}
      protocol: HTTPS
      hostname: a.example.com
      tls: {{mode: Terminate, certificateRefs: [{{name: cert-a}}]}}
    - name: https-b
      port: {https}
      protocol: HTTPS
      hostname: "*.b.example.com"
      tls: {{mode: Terminate, certificateRefs: [{{name: cert-b}}]}}
    - name: plain
      port: {http}
      protocol: HTTP
    - name: passthrough
      port: {tls}
      protocol: TLS
      hostname: echo.tls.example.com
      tls: {{mode: Passthrough}}
    - name: terminate
      port: {term}
      protocol: TLS
      hostname: "*.term.example.com"
      tls: {{mode: Terminate, certificateRefs: [{{name: cert-term}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [a.example.com, api.b.example.com, plain.example.com]
  rules:
    - backendRefs: [{{name: web, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-https}}
spec:
  parentRefs: [{{name: edge, sectionName: plain}}]
  hostnames: [shop.example.com]
  rules:
    - filters:
        - type: RequestRedirect
          requestRedirect: {{scheme: https, statusCode: 301}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: moved}}
spec:
  parentRefs: [{{name: edge, sectionName: https-a}}]
  hostnames: [a.example.com]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {{hostname: new.example.com}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [grpc.b.example.com]
  rules:
    - backendRefs: [{{name: grpcsvc, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: echo-tls}}
spec:
  parentRefs: [{{name: edge, sectionName: passthrough}}]
  hostnames: [echo.tls.example.com]
  rules:
    - backendRefs: [{{name: tlsecho, port: 443}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: echo-term}}
spec:
  parentRefs: [{{name: edge, sectionName: terminate}}]
  hostnames: [echo.term.example.com]
  rules:
    - backendRefs: [{{name: tcpecho, port: 7000}}]
"#,
        https = p.https.port(),
        http = p.http.port(),
        tls = p.tls.port(),
        term = p.term.port(),
        log = log.display(),
    )
}

struct GatewayPorts {
    https: SocketAddr,
    http: SocketAddr,
    tls: SocketAddr,
    term: SocketAddr,
    admin: SocketAddr,
}

/// A sidecar on the control plane in front of `app` (the inbound side only).
fn backend_sidecar(
    dir: &Path,
    control: SocketAddr,
    service: &str,
    app: SocketAddr,
) -> (Proc, SocketAddr) {
    let (inbound, admin) = (free_addr(), free_addr());
    let p = Proc::spawn(
        dir,
        &format!("{service}-proxy"),
        &[
            "proxy".into(),
            format!("--control=http://{control}"),
            format!("--node-id={service}-1"),
            format!("--service={service}"),
            "--lease-ttl=2s".into(),
            "--outbound=off".into(),
            format!("--inbound={inbound}"),
            format!("--app={app}"),
            format!("--admin={admin}"),
        ],
    );
    (p, admin)
}

fn demo_app(dir: &Path, name: &str) -> (Proc, SocketAddr) {
    let app = free_addr();
    let p = Proc::spawn(
        dir,
        &format!("{name}-app"),
        &[
            "demo-app".into(),
            format!("--listen={app}"),
            format!("--name={name}"),
            format!("--instance={name}-1"),
        ],
    );
    (p, app)
}

#[tokio::test]
async fn gateway_serves_https_h2c_grpc_and_passthrough_under_policy_and_drains() {
    let dir = tempdir("gateway");
    let control = free_addr();
    let mut control_plane = Proc::spawn(
        &dir,
        "control",
        &[
            "control".into(),
            format!("--listen={control}"),
            format!("--data-dir={}", dir.join("data").display()),
        ],
    );
    wait_api(control).await;
    let certs = dir.join("certs");
    let ca_a = secret(&certs, "cert-a", &["a.example.com"]);
    let ca_b = secret(&certs, "cert-b", &["*.b.example.com"]);
    let gw = GatewayPorts {
        https: free_addr(),
        http: free_addr(),
        tls: free_addr(),
        term: free_addr(),
        admin: free_addr(),
    };
    let ca_term = secret(&certs, "cert-term", &["*.term.example.com"]);
    let cp = format!("http://{control}");
    let log = dir.join("access.log");
    apply(&cp, &dir, &mesh(&gw, &log));

    let (_web_app, web_app) = demo_app(&dir, "web");
    let (_web, web_admin) = backend_sidecar(&dir, control, "web", web_app);
    let (_grpc_app, grpc_app) = demo_app(&dir, "grpcsvc");
    let (_grpc, _) = backend_sidecar(&dir, control, "grpcsvc", grpc_app);
    let (echo_addr, echo_ca, echo_seen) = tls_echo(&dir).await;
    let (_echo, _) = backend_sidecar(&dir, control, "tlsecho", echo_addr);
    let (tcp_echo_addr, tcp_lines) = tcp_echo().await;
    let (_tcp_echo, _) = backend_sidecar(&dir, control, "tcpecho", tcp_echo_addr);
    // Another caller of `web`, with its own identity, for the policy check.
    let (client_port, client_admin) = (free_addr(), free_addr());
    let _client = Proc::spawn(
        &dir,
        "client-proxy",
        &[
            "proxy".into(),
            format!("--control={cp}"),
            "--node-id=client-1".into(),
            "--service=client".into(),
            "--outbound=off".into(),
            format!("--upstream=web={client_port}"),
            format!("--admin={client_admin}"),
        ],
    );
    let mut gateway = Proc::spawn(
        &dir,
        "gateway",
        &[
            "gateway".into(),
            "--gateway=edge".into(),
            format!("--control={cp}"),
            "--node-id=edge-1".into(),
            "--address=127.0.0.1".into(),
            format!("--cert-dir={}", certs.display()),
            format!("--admin={}", gw.admin),
            "--drain-timeout=20s".into(),
        ],
    );
    wait_ready(web_admin).await;
    wait_ready(client_admin).await;
    wait_ready(gw.admin).await;
    // Ready means every listener of the first config is bound: each port accepts at once.
    for port in [gw.https, gw.http, gw.tls, gw.term] {
        tokio::net::TcpStream::connect(port)
            .await
            .unwrap_or_else(|e| panic!("{port} not bound although the gateway is ready: {e}"));
    }

    // HTTPS, SNI a.example.com: curl verifies a's own certificate (trusting only it).
    let ca_a_s = ca_a.display().to_string();
    let ca_b_s = ca_b.display().to_string();
    let url_a = format!("https://a.example.com:{}/hello?x=1", gw.https.port());
    let (body, last) = eventually("HTTPS to a.example.com", || {
        let (body, last) = curl_via(&[
            "--cacert",
            &ca_a_s,
            "--resolve",
            &resolve("a.example.com", gw.https),
            &url_a,
        ]);
        last.ends_with(" 200").then_some((body, last))
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("the app's JSON");
    assert_eq!(v["service"], "web", "{body}");
    assert_eq!(v["path"], "/hello?x=1", "{body}");
    assert_eq!(
        v["headers"]["host"],
        format!("a.example.com:{}", gw.https.port()),
        "{body}"
    );
    assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{body}");
    assert!(last.starts_with("2 ") || last.starts_with("1.1 "), "{last}");
    // b's certificate does not verify as a.example.com: each host gets its own.
    let (_, last) = curl_via(&[
        "--cacert",
        &ca_b_s,
        "--resolve",
        &resolve("a.example.com", gw.https),
        &url_a,
    ]);
    assert!(
        last.ends_with(" 000"),
        "a.example.com must not be served b's certificate: {last}"
    );

    // HTTPS over HTTP/2 to a name under the wildcard listener, verified against b's certificate.
    let url_b = format!("https://api.b.example.com:{}/via-b", gw.https.port());
    let (body, last) = curl_via(&[
        "--http2",
        "--cacert",
        &ca_b_s,
        "--resolve",
        &resolve("api.b.example.com", gw.https),
        &url_b,
    ]);
    assert_eq!(last, "2 200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("the app's JSON");
    assert_eq!(
        (v["service"].as_str(), v["path"].as_str()),
        (Some("web"), Some("/via-b"))
    );

    // Plain HTTP: HTTP/1.1 and h2c with prior knowledge.
    let url_plain = format!("http://plain.example.com:{}/plain", gw.http.port());
    let (body, last) = curl_via(&[
        "--resolve",
        &resolve("plain.example.com", gw.http),
        &url_plain,
    ]);
    assert_eq!(last, "1.1 200", "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["headers"]["x-forwarded-proto"],
        "http"
    );
    let (body, last) = curl_via(&[
        "--http2-prior-knowledge",
        "--resolve",
        &resolve("plain.example.com", gw.http),
        &url_plain,
    ]);
    assert_eq!(last, "2 200", "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["path"],
        "/plain"
    );

    // No route for the host: 404 with the reason.
    let head = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "host: nowhere.example.com",
        &format!("http://{}/", gw.http),
    ]);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("trellis-error: no-route"),
        "{head}"
    );

    // A rule that answers itself: the plain listener redirects shop.example.com to HTTPS.
    let head = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "host: shop.example.com",
        &format!("http://{}/cart?id=7", gw.http),
    ]);
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://shop.example.com/cart?id=7"),
        "{head}"
    );

    // Over HTTPS a redirect that sets no scheme keeps https (HTTP/1.1: no scheme in the target).
    let head = curl(&[
        "--http1.1",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--cacert",
        &ca_a_s,
        "--resolve",
        &resolve("a.example.com", gw.https),
        &format!("https://a.example.com:{}/old/x", gw.https.port()),
    ]);
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    let location = format!(
        "location: https://new.example.com:{}/old/x",
        gw.https.port()
    );
    assert!(head.to_ascii_lowercase().contains(&location), "{head}");

    // gRPC (grpcio) over h2c and over TLS (ALPN h2), to the grpc service's echo.
    let a = grpcio(&dir, gw.http, "grpc.b.example.com", None);
    assert_eq!(a["code"], "OK", "{a}");
    assert_eq!(a["reply"], "000000000568656c6c6f", "{a}");
    let a = grpcio(&dir, gw.https, "grpc.b.example.com", Some(&ca_b));
    assert_eq!(a["code"], "OK", "{a}");

    // TLS passthrough: the client verifies the backend's own certificate through the gateway.
    let echoed = tls_call(gw.tls, "echo.tls.example.com", &echo_ca)
        .await
        .expect("passthrough");
    assert_eq!(echoed, "echo: ping\n");
    assert_eq!(
        echo_seen.load(Ordering::SeqCst),
        1,
        "the backend terminated the client's TLS"
    );
    // A name no TLSRoute serves goes nowhere.
    assert!(tls_call(gw.tls, "other.example.com", &echo_ca)
        .await
        .is_err());
    assert_eq!(echo_seen.load(Ordering::SeqCst), 1);

    // TLS terminated at the gateway with the listener's certificate (the client trusts only
    // it); the backend reads the client's plaintext line, tunnelled over the mesh's mTLS.
    let echoed = tls_call(gw.term, "echo.term.example.com", &ca_term)
        .await
        .expect("terminated TLS tunnelled to tcpecho");
    assert_eq!(echoed, "echo: ping\n");
    assert_eq!(*tcp_lines.lock().unwrap(), ["ping\n"]);
    // The listener's certificate does not verify as the passthrough backend's name, and a name
    // under the listener that no TLSRoute serves is closed after the handshake: neither reaches
    // the backend.
    assert!(tls_call(gw.term, "echo.tls.example.com", &ca_term)
        .await
        .is_err());
    assert!(tls_call(gw.term, "other.term.example.com", &ca_term)
        .await
        .is_err());
    assert_eq!(tcp_lines.lock().unwrap().len(), 1);
    // The gateway logs like a sidecar: the HTTPS request (its outbound side), and each
    // terminated connection with where it went or why it went nowhere.
    // The first HTTPS call was repeated until web was healthy (earlier tries may have been
    // answered 503 no-healthy-endpoints): the line of the one that was served.
    let gateway_line = |l: &serde_json::Value| {
        l["kind"] == "http"
            && l["direction"] == "outbound"
            && l["path"].as_str().is_some_and(|p| p.starts_with("/hello"))
            && l["status"] == 200
    };
    let tunnel_line = |l: &serde_json::Value, reason: &str| {
        l["kind"] == "tcp"
            && l["direction"] == "outbound"
            && l["destination"] == "tcpecho"
            && l["reason"] == reason
    };
    let lines = eventually("access log lines of the gateway", || {
        let lines = access_log(&log);
        let seen = lines.iter().any(gateway_line)
            && lines.iter().any(|l| tunnel_line(l, ""))
            && lines
                .iter()
                .any(|l| l["kind"] == "tcp" && l["reason"] == "no-route");
        seen.then_some(lines)
    })
    .await;
    let http = lines.iter().find(|l| gateway_line(l)).unwrap();
    assert_eq!(http["destination"], "web", "{http}");
    assert_eq!(
        http["authority"],
        format!("a.example.com:{}", gw.https.port()),
        "{http}"
    );
    let tunnel = lines.iter().find(|l| tunnel_line(l, "")).unwrap();
    assert_eq!(tunnel["bytesReceived"], 5, "the client's line: {tunnel}");
    assert_eq!(tunnel["bytesSent"], 11, "the echo: {tunnel}");

    // Counted when the tunnel has ended, which follows the client's close: read until shown.
    for (result, want) in [("ok", 1.0), ("no-route", 1.0)] {
        let labels = [("result", result)];
        let mut seen = 0.0;
        for _ in 0..100 {
            seen = counter(gw.admin, "trellis_gateway_tls_terminate_total", &labels).await;
            if seen >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, want, "terminated connections with result {result}");
    }

    // Hostile bytes: garbage on every port and silent connections held open reach no app and
    // stop no one else. web's sidecar counts what the gateway sent it; the echo backend counts
    // what it accepted.
    let web_before = counter(
        web_admin,
        "trellis_requests_total",
        &[("direction", "inbound"), ("source", GATEWAY_ID)],
    )
    .await;
    let silent: Vec<tokio::net::TcpStream> =
        silent_connections(&[gw.https, gw.http, gw.tls, gw.term]).await;
    for port in [gw.https, gw.tls, gw.term] {
        let back = garbage_to(port).await;
        assert!(
            !String::from_utf8_lossy(&back).contains("HTTP/"),
            "{port} answered garbage with HTTP: {back:?}"
        );
    }
    let back = String::from_utf8_lossy(&garbage_to(gw.http).await).to_string();
    assert!(
        back.is_empty() || back.starts_with("HTTP/1.1 400"),
        "garbage on the HTTP port: {back:?}"
    );
    let (body, last) = curl_via(&[
        "--cacert",
        &ca_a_s,
        "--resolve",
        &resolve("a.example.com", gw.https),
        &url_a,
    ]);
    assert!(
        last.ends_with(" 200"),
        "served beside silent and garbage connections: {last} {body}"
    );
    drop(silent);
    assert_eq!(
        echo_seen.load(Ordering::SeqCst),
        1,
        "no garbage reached the passthrough backend"
    );
    assert_eq!(
        tcp_lines.lock().unwrap().len(),
        1,
        "no garbage reached the terminated listener's backend"
    );
    // The sidecar counts a request when its body has ended: read until the real one shows.
    let mut web_after = web_before;
    for _ in 0..100 {
        web_after = counter(
            web_admin,
            "trellis_requests_total",
            &[("direction", "inbound"), ("source", GATEWAY_ID)],
        )
        .await;
        if web_after > web_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        web_after,
        web_before + 1.0,
        "only the one real request reached web"
    );

    // Metrics: the gateway counts its requests with its identity as source; the backend's
    // sidecar saw them arrive over mTLS from that identity.
    let sent = counter(
        gw.admin,
        "trellis_requests_total",
        &[
            ("direction", "outbound"),
            ("source", GATEWAY_ID),
            ("service", "web"),
        ],
    )
    .await;
    assert!(sent >= 4.0, "gateway requests to web: {sent}");
    let received = counter(
        web_admin,
        "trellis_requests_total",
        &[("direction", "inbound"), ("source", GATEWAY_ID)],
    )
    .await;
    assert!(
        received >= 4.0,
        "web's sidecar saw the gateway's identity: {received}"
    );

    // An AuthorizationPolicy denying the gateway's identity on /private*: the gateway gets 403,
    // another caller still passes.
    apply(
        &cp,
        &dir,
        &format!(
            r#"apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {{name: no-gateway-private}}
spec:
  service: web
  rules:
    - name: gateway-private
      action: Deny
      from: {{principals: ["{GATEWAY_ID}"]}}
      to: {{paths: ["/private*"]}}
"#
        ),
    );
    let url_private = format!("http://{}/private/x", gw.http);
    let head = eventually("the gateway denied", || {
        let h = curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "host: plain.example.com",
            &url_private,
        ]);
        h.starts_with("HTTP/1.1 403").then_some(h)
    })
    .await;
    assert!(
        head.to_ascii_lowercase().contains("trellis-error: denied"),
        "{head}"
    );
    let (_, last) = curl_via(&[
        "-H",
        "host: web",
        &format!("http://{client_port}/private/x"),
    ]);
    assert_eq!(last, "1.1 200", "another caller passes");
    let (_, last) = curl_via(&[
        "--resolve",
        &resolve("plain.example.com", gw.http),
        &url_plain,
    ]);
    assert_eq!(last, "1.1 200", "the gateway still reaches other paths");

    // The control plane gone (SIGKILL): the gateway keeps serving with the config it has.
    let _ = control_plane.child.kill();
    let _ = control_plane.child.wait();
    let (body, last) = curl_via(&[
        "--cacert",
        &ca_a_s,
        "--resolve",
        &resolve("a.example.com", gw.https),
        &url_a,
    ]);
    assert!(last.ends_with(" 200"), "without the control plane: {last}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["path"],
        "/hello?x=1",
        "the app received it: {body}"
    );
    // A TLS-terminated tunnel too, this time with OpenSSL (Python's ssl) as the client.
    let echoed = openssl_line(gw.term, "echo.term.example.com", &ca_term).await;
    assert_eq!(echoed, "echo: ping\n", "without the control plane");
    assert_eq!(*tcp_lines.lock().unwrap(), ["ping\n", "ping\n"]);

    // Drain: a slow request in flight when SIGTERM arrives still finishes; then the gateway exits.
    let slow_url = format!("http://plain.example.com:{}/delay/3000", gw.http.port());
    let slow_resolve = resolve("plain.example.com", gw.http);
    let slow = std::thread::spawn(move || curl_via(&["--resolve", &slow_resolve, &slow_url]));
    // The app holds it for 3 s; SIGTERM comes a second into that.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    gateway.terminate();
    let (body, last) = slow.join().expect("curl thread");
    assert_eq!(
        last, "1.1 200",
        "the in-flight request finished during the drain: {body}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["path"],
        "/delay/3000"
    );
    assert!(
        gateway.wait_exit(Duration::from_secs(20)).is_some(),
        "the gateway exits after draining"
    );
    assert!(
        tokio::net::TcpStream::connect(gw.http).await.is_err(),
        "no longer accepting"
    );
}

fn reload_gateway(https: u16, listeners: &[(&str, u16)]) -> String {
    let mut text = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  gatewayClassName: trellis
  listeners:
    - name: https-x
      port: {https}
      protocol: HTTPS
      tls: {{certificateRefs: [{{name: late-cert}}]}}
"#
    );
    for (name, port) in listeners {
        text.push_str(&format!(
            "    - {{name: {name}, port: {port}, protocol: HTTP}}\n"
        ));
    }
    text
}

#[tokio::test]
async fn gateway_reports_a_missing_certificate_and_follows_gateway_changes() {
    let dir = tempdir("gateway-reload");
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
    let cp = format!("http://{control}");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (https, plain, extra, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    apply(
        &cp,
        &dir,
        &format!(
            "apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {{name: mesh}}
spec: {{mtls: {{mode: Strict}}}}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: web}}
spec: {{ports: [{{port: 80, protocol: http}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - backendRefs: [{{name: web, port: 80}}]
---
{}",
            reload_gateway(https.port(), &[("plain", plain.port())])
        ),
    );
    let (_web_app, web_app) = demo_app(&dir, "web");
    let (_web, web_admin) = backend_sidecar(&dir, control, "web", web_app);
    let _gateway = Proc::spawn(
        &dir,
        "gateway",
        &[
            "gateway".into(),
            "--gateway=edge".into(),
            format!("--control={cp}"),
            "--address=127.0.0.1".into(),
            format!("--cert-dir={}", certs.display()),
            format!("--admin={admin}"),
        ],
    );
    wait_ready(web_admin).await;
    wait_ready(admin).await;
    wait_listening(plain).await;
    let (_, last) = eventually("plain HTTP through the gateway", || {
        let (b, l) = curl_via(&["-H", "host: any.example.com", &format!("http://{plain}/")]);
        l.ends_with(" 200").then_some((b, l))
    })
    .await;
    assert_eq!(last, "1.1 200");
    // The HTTPS listener's Secret is missing: a typed error naming the listener and the file,
    // and that listener alone is not served.
    let error = eventually("the certificate error on /config", || {
        let text = curl(&[&format!("http://{admin}/config")]);
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let e = v["lastError"].as_str()?.to_string();
        e.contains("late-cert").then_some(e)
    })
    .await;
    assert!(
        error.contains("listener https-x") && error.contains("late-cert/tls.crt"),
        "{error}"
    );
    assert!(tokio::net::TcpStream::connect(https).await.is_err());

    // The Secret appears and the Gateway changes (a listener added): both are picked up.
    let ca = secret(&certs, "late-cert", &["shop.example.com"]);
    apply(
        &cp,
        &dir,
        &reload_gateway(
            https.port(),
            &[("plain", plain.port()), ("extra", extra.port())],
        ),
    );
    wait_listening(https).await;
    wait_listening(extra).await;
    let url = format!("https://shop.example.com:{}/tls", https.port());
    let ca_s = ca.display().to_string();
    let (body, last) = curl_via(&[
        "--cacert",
        &ca_s,
        "--resolve",
        &resolve("shop.example.com", https),
        &url,
    ]);
    assert!(last.ends_with(" 200"), "{last} {body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["path"],
        "/tls"
    );
    let (_, last) = curl_via(&["-H", "host: x", &format!("http://{extra}/")]);
    assert_eq!(last, "1.1 200");

    // A listener removed: its port stops accepting; the others keep serving.
    apply(
        &cp,
        &dir,
        &reload_gateway(https.port(), &[("extra", extra.port())]),
    );
    eventually("the removed listener closed", || {
        std::net::TcpStream::connect(plain).is_err().then_some(())
    })
    .await;
    let (_, last) = curl_via(&["-H", "host: x", &format!("http://{extra}/")]);
    assert_eq!(last, "1.1 200");
}
