//! Egress in explicit mode: `ExternalService` hosts reached through the sidecar's outbound port
//! (plain HTTP to Static addresses, and TLS the sidecar originates), and the MeshConfig's
//! `RegistryOnly` outbound policy refusing a host the mesh does not declare.
mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use trellis_identity::rustls;
use trellis_identity::tokio_rustls::TlsAcceptor;

/// What a test server saw: per request, the SNI of its TLS connection (empty without TLS) and
/// the `Host` header.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Serves HTTP/1.1 on `addr` (over TLS with `tls`), answering `external-ok`, recording each
/// request in the returned list.
async fn server(addr: SocketAddr, tls: Option<TlsAcceptor>) -> Seen {
    let seen: Seen = Arc::default();
    let listener = TcpListener::bind(addr).await.expect("bind test server");
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tls, record) = (tls.clone(), record.clone());
            tokio::spawn(async move {
                let serve = |sni: String| {
                    let record = record.clone();
                    service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        record.lock().unwrap().push((sni.clone(), host));
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"external-ok"),
                            )))
                        }
                    })
                };
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http
                            .serve_connection(TokioIo::new(tcp), serve(String::new()))
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let sni = stream.get_ref().1.server_name().unwrap_or("").to_string();
                        let _ = http
                            .serve_connection(TokioIo::new(stream), serve(sni))
                            .await;
                    }
                }
            });
        }
    });
    seen
}

fn external_service(name: &str, host: &str, port: u16, tls: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: ExternalService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  ports: [{{port: {port}, protocol: http}}]\n  resolution: Static\n  addresses: [127.0.0.1]\n{tls}"
    )
}

const REGISTRY_ONLY: &str = "---\napiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {outboundTrafficPolicy: {mode: RegistryOnly}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_allowed_and_denied_by_host() {
    let dir = tempdir("egress-host");
    let app = free_addr();
    let seen = server(app, None).await;
    let config = dir.join("mesh.yaml");
    // `local-dns` reaches the same server by resolving its host name when connecting.
    let declared = format!(
        "{}---\napiVersion: trellis.dev/v1\nkind: ExternalService\nmetadata: {{name: local-dns}}\nspec: {{hosts: [localhost], ports: [{{port: {}}}], resolution: DNS}}\n",
        external_service("plain-api", "api.example.test", app.port(), ""),
        app.port()
    );
    write_config(&config, &declared);
    let caller = start_caller(&dir, &config, &[]);
    wait_ready(caller.admin).await;
    let client = http1();

    let ok = get(
        &client,
        caller.outbound,
        Some("api.example.test"),
        "/hello",
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body, "external-ok");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(String::new(), "api.example.test".to_string())],
        "the server saw the request, Host unchanged"
    );
    assert_eq!(
        counter(
            caller.admin,
            "trellis_requests_total",
            &[("direction", "outbound"), ("service", "plain-api")]
        )
        .await,
        1.0,
        "counted under the ExternalService's name"
    );

    let dns = get(&client, caller.outbound, Some("localhost"), "/dns", &[]).await;
    assert_eq!(dns.status, 200, "{dns:?}");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "resolved by DNS, the same server"
    );
    seen.lock().unwrap().pop();

    // AllowAny: a host nobody declared is no route (the explicit port has nowhere to send it).
    let unknown = get(
        &client,
        caller.outbound,
        Some("other.example.test"),
        "/",
        &[],
    )
    .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.header("trellis-error"), Some("no-route"));

    // RegistryOnly: refused as egress, counted by host, and the server sees nothing.
    write_config(&config, &format!("{declared}{REGISTRY_ONLY}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(
            &client,
            caller.outbound,
            Some("other.example.test"),
            "/",
            &[],
        )
        .await;
        if a.status == 502 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RegistryOnly never applied: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let denied = |host: &'static str| {
        let admin = caller.admin;
        async move {
            counter(
                admin,
                "trellis_egress_denied_requests_total",
                &[("host", host)],
            )
            .await
        }
    };
    let before = denied("other.example.test").await;
    assert!(before >= 1.0, "the first refusal was counted");
    let refused = get(
        &client,
        caller.outbound,
        Some("other.example.test:8080"),
        "/",
        &[],
    )
    .await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert_eq!(refused.header("trellis-error"), Some("egress-denied"));
    assert_eq!(
        denied("other.example.test").await,
        before + 1.0,
        "counted under the host, without its port"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the server saw no refused request"
    );

    // A declared host still works, and so does its declared port; an undeclared port of it
    // is no ExternalService host.
    let ok = get(
        &client,
        caller.outbound,
        Some("api.example.test"),
        "/again",
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let with_port = format!("api.example.test:{}", app.port());
    let ok = get(&client, caller.outbound, Some(&with_port), "/port", &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let wrong_port = get(
        &client,
        caller.outbound,
        Some("api.example.test:1"),
        "/",
        &[],
    )
    .await;
    assert_eq!(wrong_port.status, 502, "{wrong_port:?}");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// A CA (written to `dir/ca.pem`) and a TLS acceptor with a certificate it signed for `host`.
fn tls_server_identity(dir: &Path, host: &str) -> TlsAcceptor {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "egress test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(trellis_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_originates_tls_with_sni() {
    let dir = tempdir("egress-tls");
    let app = free_addr();
    let seen = server(app, Some(tls_server_identity(&dir, "secure.example.test"))).await;
    let config = dir.join("mesh.yaml");
    let tls = format!(
        "  tls: {{mode: Originate, caFile: {}}}\n",
        dir.join("ca.pem").display()
    );
    // `untrusted` originates TLS to the same server but trusts only the system's roots.
    write_config(
        &config,
        &format!(
            "{}{}{REGISTRY_ONLY}",
            external_service("secure-api", "secure.example.test", app.port(), &tls),
            external_service(
                "untrusted",
                "untrusted.example.test",
                app.port(),
                "  tls: {mode: Originate, sni: secure.example.test}\n"
            ),
        ),
    );
    let caller = start_caller(&dir, &config, &[]);
    wait_ready(caller.admin).await;
    let client = http1();

    let ok = get(
        &client,
        caller.outbound,
        Some("secure.example.test"),
        "/",
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.body, "external-ok");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(
            "secure.example.test".to_string(),
            "secure.example.test".to_string()
        )],
        "the server saw TLS with SNI = the host"
    );

    // A certificate the ExternalService's roots do not trust: no request reaches the server.
    let bad = get(
        &client,
        caller.outbound,
        Some("untrusted.example.test"),
        "/",
        &[],
    )
    .await;
    assert_eq!(bad.status, 503, "{bad:?}");
    assert_eq!(bad.header("trellis-error"), Some("connect-failed"));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn validate_names_the_bad_external_service_field() {
    let dir = tempdir("egress-validate");
    let cases = [
        (
            "static.yaml",
            "spec: {hosts: [api.example.test], ports: [{port: 80}], resolution: Static}",
            "spec.addresses",
        ),
        (
            "dns.yaml",
            "spec: {hosts: [api.example.test], ports: [{port: 80}], addresses: [10.0.0.1]}",
            "spec.addresses",
        ),
        (
            "host.yaml",
            "spec: {hosts: ['api_bad.example.test'], ports: [{port: 80}]}",
            "spec.hosts[0]",
        ),
        (
            "port.yaml",
            "spec: {hosts: [api.example.test], ports: [{port: 0}]}",
            "spec.ports[0].port",
        ),
        (
            "sni.yaml",
            "spec: {hosts: [api.example.test], ports: [{port: 443}], tls: {mode: Originate, sni: 'a b'}}",
            "spec.tls.sni",
        ),
    ];
    for (file, spec, want) in cases {
        let path = dir.join(file);
        std::fs::write(
            &path,
            format!("apiVersion: trellis.dev/v1\nkind: ExternalService\nmetadata: {{name: api}}\n{spec}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["validate", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file} must be rejected");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{file}: expected {want:?} in {err}");
    }
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: trellis.dev/v1\nkind: ExternalService\nmetadata: {name: api}\nspec: {hosts: [api.example.test], ports: [{port: 443, protocol: http}], tls: {mode: Originate}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["validate", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
