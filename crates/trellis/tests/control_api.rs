//! The control plane's API and CLI verbs against a real `trellis control` process with the
//! embedded store: apply, get, describe, delete; invalid resources and stale versions are
//! refused with nothing changed; config survives a restart. The control plane is the mesh CA
//! and requires the join token: API calls and xDS streams without it are refused, certificates
//! carry the identity the control plane grants, the CA rotates through `trellis ca`, and the CA
//! resource (private keys) never leaves the control plane.
mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// Runs the CLI with the shared join token (as `TRELLIS_TOKEN`).
fn ctl(control: &str, args: &[&str]) -> (bool, String, String) {
    ctl_token(control, args, Some(TOKEN))
}

/// Runs the CLI with `token` in `TRELLIS_TOKEN`, or with no token at all.
fn ctl_token(control: &str, args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("TRELLIS_CONTROL", control)
        .env_remove("TRELLIS_TOKEN")
        .env_remove("TRELLIS_TOKEN_FILE");
    if let Some(t) = token {
        cmd.env("TRELLIS_TOKEN", t);
    }
    let out = cmd.output().expect("run trellis");
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

/// One raw API call; `token` goes in `Authorization: Bearer`.
async fn api(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let rsp = http1()
        .request(
            req.body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap(),
        )
        .await
        .expect("API call");
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, json)
}

/// A call that must succeed (with the shared token).
async fn api_ok(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> serde_json::Value {
    let (status, v) = api(addr, method, path, Some(TOKEN), body).await;
    assert_eq!(status, 200, "{method} {path}: {v}");
    v
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
                .header("authorization", format!("Bearer {TOKEN}"))
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

    // Restart: config survives, and so does the CA.
    let active = api_ok(addr, "GET", "/api/v1/ca", "").await["active"].clone();
    cp.terminate();
    cp.wait_exit(Duration::from_secs(10))
        .expect("control plane exits on SIGTERM");
    let _cp = start_control(&dir, addr);
    wait_api(addr).await;
    let (ok, out, _) = ctl(&control, &["get", "routes"]);
    assert!(ok && out.contains("web"), "{out}");
    assert_eq!(
        api_ok(addr, "GET", "/api/v1/ca", "").await["active"],
        active,
        "a restart keeps the CA"
    );
    let (ok, out, _) = ctl(&control, &["delete", "route", "web"]);
    assert!(ok, "{out}");
    let (ok, _, err) = ctl(&control, &["get", "route", "web"]);
    assert!(!ok && err.contains("not found"), "{err}");
}

/// The ADS path a proxy opens its stream on.
const ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Opens an xDS stream (HTTP/2, gRPC) with `token` and returns the `grpc-status` the control
/// plane answers with at once, if any (a refusal is a trailers-only answer).
async fn xds_status(addr: std::net::SocketAddr, token: Option<&str>) -> Option<String> {
    let mut req = http::Request::post(format!("http://{addr}{ADS_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        http2().request(
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .expect("xDS answer within 10 s")
    .expect("xDS request");
    assert_eq!(rsp.status(), 200);
    rsp.headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn api_and_xds_require_the_join_token() {
    let dir = tempdir("ctlauth");
    let addr = free_addr();
    let control = format!("http://{addr}");
    let cp = start_control(&dir, addr);
    // The health route stays open (wait_api calls it without a token).
    wait_api(addr).await;

    let (status, v) = api(addr, "GET", "/api/v1/resources", None, "").await;
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("missing"), "{v}");
    assert_eq!(v["details"], serde_json::json!([]));
    let (status, v) = api(addr, "GET", "/api/v1/resources", Some("not-the-token"), "").await;
    assert_eq!(status, 401, "{v}");
    assert!(
        !v.to_string().contains("not-the-token"),
        "never echoed: {v}"
    );
    for (method, path) in [
        ("POST", "/api/v1/apply"),
        ("POST", "/api/v1/workloads"),
        ("POST", "/api/v1/certificates"),
        ("GET", "/api/v1/ca"),
        ("POST", "/api/v1/ca/roots"),
        ("GET", "/api/v1/proxies"),
    ] {
        assert_eq!(
            api(addr, method, path, None, "").await.0,
            401,
            "{method} {path}"
        );
    }
    api_ok(addr, "GET", "/api/v1/resources", "").await;

    // The CLI says what to do about a 401.
    let (ok, _, err) = ctl_token(&control, &["get", "services"], None);
    assert!(!ok);
    assert!(
        err.contains("--token") && err.contains("TRELLIS_TOKEN"),
        "{err}"
    );
    let (ok, _, err) = ctl_token(&control, &["get", "services", "--token", "wrong"], None);
    assert!(!ok && err.contains("--token-file"), "{err}");
    assert!(!err.contains("wrong\n"), "{err}");

    // The token in force is written where the CLI can read it, for the owner only.
    let token_file = dir.join("data").join("join-token");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), TOKEN);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        cp.log_text().contains("join token written to"),
        "{}",
        cp.log_text()
    );
    let (ok, _, err) = ctl_token(
        &control,
        &[
            "get",
            "services",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, err) = ctl(&control, &["check"]);
    assert!(ok, "{out}{err}");

    // xDS: no token or a wrong one is UNAUTHENTICATED (16); the right one is served.
    assert_eq!(xds_status(addr, None).await.as_deref(), Some("16"));
    assert_eq!(xds_status(addr, Some("wrong")).await.as_deref(), Some("16"));
    assert_ne!(xds_status(addr, Some(TOKEN)).await.as_deref(), Some("16"));
}

/// The first certificate of a PEM chain, as DER.
fn leaf_der(chain_pem: &str) -> Vec<u8> {
    use trellis_identity::rustls::pki_types::pem::PemObject;
    use trellis_identity::rustls::pki_types::CertificateDer;
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .to_vec()
}

fn secs(v: &serde_json::Value) -> u64 {
    v["secs_since_epoch"]
        .as_u64()
        .expect("a serialized SystemTime")
}

#[tokio::test]
async fn certificates_carry_the_identity_the_control_plane_grants() {
    let dir = tempdir("ctlcert");
    let addr = free_addr();
    let control = format!("http://{addr}");
    let _cp = start_control(&dir, addr);
    wait_api(addr).await;
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        "apiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {certificateLifetime: 1h}\n",
    )
    .unwrap();
    let (ok, _, err) = ctl(&control, &["apply", "-f", mesh.to_str().unwrap()]);
    assert!(ok, "{err}");

    let key = trellis_identity::WorkloadKey::generate().unwrap();
    // The CSR asks for another identity; the control plane grants the one it decides.
    let wish = trellis_identity::SpiffeId::new("cluster.local", "default", "admin").unwrap();
    let csr = key.csr_pem(&wish).unwrap();
    let body = serde_json::json!({"csr": csr, "namespace": "shop", "service": "web"}).to_string();
    assert_eq!(
        api(addr, "POST", "/api/v1/certificates", None, &body)
            .await
            .0,
        401
    );
    // The MeshConfig reaches the model shortly after the apply.
    let mut v = serde_json::Value::Null;
    for _ in 0..100 {
        v = api_ok(addr, "POST", "/api/v1/certificates", &body).await;
        if secs(&v["notAfter"]) - secs(&v["notBefore"]) <= 3600 + 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(v["spiffeId"], "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(v["trustDomain"], "cluster.local");
    let life = secs(&v["notAfter"]) - secs(&v["notBefore"]);
    assert!((3600..=3600 + 61).contains(&life), "lifetime {life}s: {v}");
    assert!(v["serial"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let chain = v["certChainPem"].as_str().unwrap();
    let id = trellis_identity::spiffe::spiffe_id_from_cert(&leaf_der(chain)).unwrap();
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    let ca = api_ok(addr, "GET", "/api/v1/ca", "").await;
    assert_eq!(v["trustBundlePem"], ca["trustBundlePem"]);

    let bad = serde_json::json!({"csr": csr, "namespace": "Shop!", "service": "web"}).to_string();
    let (status, e) = api(addr, "POST", "/api/v1/certificates", Some(TOKEN), &bad).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("namespace"), "{e}");
    let bad = serde_json::json!({"csr": "garbage", "service": "web"}).to_string();
    let (status, e) = api(addr, "POST", "/api/v1/certificates", Some(TOKEN), &bad).await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("CSR"), "{e}");
}

/// The TrustBundle resource's roots.
fn bundle_roots(control: &str) -> Vec<String> {
    let (ok, out, err) = ctl(control, &["get", "trustbundle", "mesh", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["spec"]["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn ca_rotation_with_the_cli() {
    let dir = tempdir("ctlca");
    let addr = free_addr();
    let control = format!("http://{addr}");
    let _cp = start_control(&dir, addr);
    wait_api(addr).await;

    let (ok, out, err) = ctl(&control, &["ca", "show", "-o", "json"]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let old = shown["active"].as_str().unwrap().to_string();
    assert_eq!(shown["signers"].as_array().unwrap().len(), 1);
    let old_roots = bundle_roots(&control);
    assert_eq!(old_roots.len(), 1);

    let (ok, out, err) = ctl(&control, &["ca", "add-root"]);
    assert!(ok, "{err}");
    let new = out
        .split("added root ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no id in {out:?}"))
        .to_string();
    let ca = api_ok(addr, "GET", "/api/v1/ca", "").await;
    assert_eq!(ca["active"], old.as_str(), "a new root does not sign yet");
    assert_eq!(ca["signers"].as_array().unwrap().len(), 2);
    let roots = bundle_roots(&control);
    assert_eq!(roots.len(), 2, "but is trusted at once");
    assert_eq!(roots[0], old_roots[0]);

    let (ok, _, err) = ctl(&control, &["ca", "retire", &old]);
    assert!(!ok, "the active signer cannot be retired");
    assert!(err.contains("active"), "{err}");
    let (ok, _, err) = ctl(&control, &["ca", "activate", "no-such-signer"]);
    assert!(!ok && err.contains("no-such-signer"), "{err}");

    let (ok, _, err) = ctl(&control, &["ca", "activate", &new]);
    assert!(ok, "{err}");
    assert_eq!(
        api_ok(addr, "GET", "/api/v1/ca", "").await["active"],
        new.as_str()
    );

    let (ok, _, err) = ctl(&control, &["ca", "retire", &old]);
    assert!(ok, "{err}");
    let ca = api_ok(addr, "GET", "/api/v1/ca", "").await;
    assert_eq!(ca["signers"].as_array().unwrap().len(), 1);
    assert_eq!(ca["signers"][0]["id"], new.as_str());
    let roots = bundle_roots(&control);
    assert_eq!(roots.len(), 1);
    assert_ne!(roots[0], old_roots[0], "the old root left the bundle");
    assert_eq!(ca["trustBundlePem"], roots[0].as_str());

    let (ok, out, err) = ctl(&control, &["ca", "show"]);
    assert!(ok, "{err}");
    assert!(out.contains(&new) && !out.contains(&old), "{out}");
}

#[tokio::test]
async fn the_ca_resource_never_leaves_the_control_plane() {
    let dir = tempdir("ctlsecret");
    let addr = free_addr();
    let control = format!("http://{addr}");
    let _cp = start_control(&dir, addr);
    wait_api(addr).await;

    let all = api_ok(addr, "GET", "/api/v1/resources", "").await;
    let text = all.to_string();
    assert!(text.contains("TrustBundle"), "{text}");
    assert!(!text.contains("CertificateAuthority"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    for kind in ["ca", "certificateauthorities", "CertificateAuthority"] {
        let (ok, out, err) = ctl(&control, &["get", kind, "-o", "json"]);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "[]", "{kind}");
        let (ok, _, err) = ctl(&control, &["get", kind, "mesh"]);
        assert!(!ok && err.contains("not found"), "{err}");
        let (ok, _, err) = ctl(&control, &["describe", kind, "mesh"]);
        assert!(!ok && err.contains("not found"), "{err}");
    }
    let (ok, out, _) = ctl(&control, &["get", "trustbundles"]);
    assert!(ok && out.contains("mesh"), "{out}");

    let file = dir.join("ca.yaml");
    std::fs::write(
        &file,
        "apiVersion: trellis.dev/v1\nkind: CertificateAuthority\nmetadata: {name: mesh}\nspec:\n  trustDomain: cluster.local\n  active: a\n  signers: [{id: a, certChainPem: x, keyPem: y}]\n",
    )
    .unwrap();
    let (ok, _, err) = ctl(&control, &["apply", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("kind CertificateAuthority is managed by the control plane")
            && err.contains("trellis ca"),
        "{err}"
    );
    for kind in ["ca", "trustbundle"] {
        let (ok, _, err) = ctl(&control, &["delete", kind, "mesh"]);
        assert!(!ok && err.contains("managed by the control plane"), "{err}");
    }
    assert_eq!(
        api_ok(addr, "GET", "/api/v1/ca", "").await["signers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_supplied_ca_is_used_and_half_of_one_is_refused() {
    let dir = tempdir("ctlsupplied");
    let data_dir = format!("--data-dir={}", dir.join("unused").display());
    let (ok, _, err) = ctl(
        "http://127.0.0.1:1",
        &["control", "--ca-cert", "x.pem", &data_dir],
    );
    assert!(
        !ok && err.contains("--ca-key") && err.contains("both or neither"),
        "{err}"
    );

    let ca = trellis_identity::CertificateAuthority::generate(
        "cluster.local",
        &trellis_identity::ca::RootOptions::default(),
    )
    .unwrap();
    let state = ca.to_state();
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    std::fs::write(&cert, &state.signers[0].cert_chain_pem).unwrap();
    trellis_identity::keys::write_secret_file(&key, state.signers[0].key_pem.expose().as_bytes())
        .unwrap();
    let addr = free_addr();
    let _cp = Proc::spawn(
        &dir,
        "control",
        &[
            "control".into(),
            format!("--listen={addr}"),
            format!("--data-dir={}", dir.join("data").display()),
            format!("--ca-cert={}", cert.display()),
            format!("--ca-key={}", key.display()),
        ],
    );
    wait_api(addr).await;
    let shown = api_ok(addr, "GET", "/api/v1/ca", "").await;
    assert_eq!(shown["active"], ca.active_id());
    assert_eq!(shown["trustBundlePem"], ca.trust_bundle_pem().as_str());
}
