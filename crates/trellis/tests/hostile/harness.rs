//! Setting up a target: the mesh documents, the backend sidecar in front of the recording app
//! (static config, optional mTLS files), a caller's sidecar, metrics and the probe library.
use super::app::{self, App, Record};
use super::client::{pause, send, Probe, Reply, Transport};
use super::h2;
use crate::common::pki::{client_config, tls_args, Issued, Pki, TD};
use crate::common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `--detect-timeout` of every sidecar here: small, so silences "longer than it" are short.
pub const DETECT_MS: u64 = 300;

pub fn mesh_config(mode: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata:\n  name: mesh\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

/// A Service with one port of `protocol` (`detect`, `http`, `http2`, `grpc`, `tcp`).
pub fn service_doc(name: &str, protocol: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n    - port: 80\n      protocol: {protocol}\n"
    )
}

/// The backend's one Workload, at its sidecar's inbound address, proving `backend`'s identity.
pub fn backend_workload(addr: SocketAddr) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata:\n  name: backend-1\n  labels:\n    app: backend\nspec:\n  service: backend\n  address: {}\n  port: {}\n  identity: spiffe://{TD}/ns/default/sa/backend\n",
        addr.ip(),
        addr.port()
    )
}

pub fn principal(service: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{service}")
}

/// Scenario 1's policy: deny by default, allow `frontend` by identity, deny `/admin` (an HTTP
/// condition, so under Istio's safe semantics it denies every opaque TCP connection too).
pub fn admin_policy() -> String {
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
        paths: ["/admin", "/admin/*"]
    - name: frontend
      action: Allow
      from:
        principals: ["{}"]
"#,
        principal("frontend")
    )
}

/// Scenario 2's policy: deny by default, allow `frontend` by identity; no HTTP condition at all.
pub fn identity_only_policy() -> String {
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
    - name: frontend
      action: Allow
      from:
        principals: ["{}"]
"#,
        principal("frontend")
    )
}

/// A sidecar of `service` with an inbound port in front of `app`.
pub struct Sidecar {
    pub proc: Proc,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Sidecar {
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// The backend's sidecar on the static config at `config`, with `tls` files when given.
pub fn start_backend(
    dir: &Path,
    name: &str,
    config: &Path,
    app: SocketAddr,
    inbound: SocketAddr,
    tls: Option<(&Pki, &Issued)>,
) -> Sidecar {
    let admin = free_addr();
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        "--service=backend".into(),
        "--outbound=off".into(),
        format!("--inbound={inbound}"),
        format!("--app={app}"),
        format!("--admin={admin}"),
        format!("--detect-timeout={DETECT_MS}ms"),
        "--watch-interval=100ms".into(),
    ];
    if let Some((pki, issued)) = tls {
        args.extend(tls_args(pki, issued));
    }
    Sidecar {
        proc: Proc::spawn(dir, name, &args),
        inbound,
        admin,
    }
}

/// A caller's sidecar as `service` with a local port bound to `backend` (`--upstream`).
pub struct CallerSidecar {
    /// Held so the process lives as long as the test needs it (killed on drop).
    #[allow(dead_code)]
    pub proc: Proc,
    pub port: SocketAddr,
    pub admin: SocketAddr,
}

pub fn start_caller(
    dir: &Path,
    config: &Path,
    service: &str,
    pki: &Pki,
    issued: &Issued,
) -> CallerSidecar {
    let (port, admin) = (free_addr(), free_addr());
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        format!("--service={service}"),
        "--outbound=off".into(),
        format!("--upstream=backend={}", port.port()),
        format!("--admin={admin}"),
        format!("--detect-timeout={DETECT_MS}ms"),
        "--watch-interval=100ms".into(),
    ];
    args.extend(tls_args(pki, issued));
    CallerSidecar {
        proc: Proc::spawn(dir, &format!("{service}-caller"), &args),
        port,
        admin,
    }
}

/// A running target: the recording app behind a backend sidecar on a static config.
pub struct Target {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub app: App,
    pub sidecar: Sidecar,
    pub pki: Pki,
}

impl Target {
    /// The backend with mTLS files, Permissive mode (plaintext accepted), `docs` appended to the
    /// mesh config (policies), the service's port declared `protocol`.
    pub async fn start(tag: &str, protocol: &str, docs: &str) -> Target {
        Target::start_mode(tag, "Permissive", protocol, docs).await
    }

    pub async fn start_mode(tag: &str, mode: &str, protocol: &str, docs: &str) -> Target {
        let dir = tempdir(tag);
        let pki = Pki::new(&dir, "mesh");
        let backend_cert = pki.issue("backend");
        let app = App::start().await;
        let inbound = free_addr();
        let config = dir.join("mesh.yaml");
        write_config(
            &config,
            &format!(
                "{}{}{}{docs}",
                mesh_config(mode),
                service_doc("backend", protocol),
                backend_workload(inbound)
            ),
        );
        let sidecar = start_backend(
            &dir,
            "backend-proxy",
            &config,
            app.addr,
            inbound,
            Some((&pki, &backend_cert)),
        );
        wait_ready(sidecar.admin).await;
        Target {
            dir,
            config,
            app,
            sidecar,
            pki,
        }
    }

    /// mTLS as `service` of this mesh.
    pub fn mtls_as(&self, service: &str) -> Transport {
        Transport::Tls(client_config(&self.pki.issue(service)))
    }

    pub fn caller(&self, service: &str) -> CallerSidecar {
        start_caller(
            &self.dir,
            &self.config,
            service,
            &self.pki,
            &self.pki.issue(service),
        )
    }
}

/// Lets bytes in flight land in the app's record before it is read.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(400)).await;
}

/// Polls `check` (bounded) until it holds; `false` when `limit` passed first.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The marker a probe leaves in what it sends: `probe=NAME` followed by a space.
pub fn marker(name: &str) -> String {
    format!("probe={name} ")
}

/// A request head: `line` (the request line, as hostile as it likes) plus Host and close.
pub fn head(line: &str) -> Vec<u8> {
    format!("{line}\r\nhost: backend\r\nconnection: close\r\n\r\n").into_bytes()
}

/// `head` with raw bytes in the request line.
pub fn head_bytes(line: &[u8]) -> Vec<u8> {
    let mut out = line.to_vec();
    out.extend_from_slice(b"\r\nhost: backend\r\nconnection: close\r\n\r\n");
    out
}

/// The request-line bypass attempts of guarantee 1, each aimed at `/admin` and carrying its
/// name, plus opaque payloads (non-HTTP from the first byte).
pub fn bypass_probes() -> Vec<Probe> {
    let target = |n: &str| format!("/admin?{}HTTP/1.1", marker(n));
    let line = |method: &str, sep: &str, n: &str| format!("{method}{sep}{}", target(n));
    let d = DETECT_MS;
    let mut probes = vec![
        Probe::send(
            "lowercase-method",
            head(&line("get", " ", "lowercase-method")),
        ),
        Probe::send(
            "tab-after-method",
            head(&line("GET", "\t", "tab-after-method")),
        ),
        Probe::send("two-spaces", head(&line("GET", "  ", "two-spaces"))),
        Probe::send(
            "leading-crlf",
            [b"\r\n".as_slice(), &head(&line("GET", " ", "leading-crlf"))].concat(),
        ),
        Probe::send(
            "leading-spaces",
            head(&format!("  {}", line("GET", " ", "leading-spaces"))),
        ),
        Probe::send(
            "method-of-21-letters",
            head(&line("ABCDEFGHIJKLMNOPQRSTU", " ", "method-of-21-letters")),
        ),
        Probe::send(
            "method-of-17-letters",
            head(&line("PROPFINDPROPFINDX", " ", "method-of-17-letters")),
        ),
        Probe::new(
            "method-split-with-short-pauses",
            vec![
                send("G"),
                pause(d / 3),
                send("E"),
                pause(d / 3),
                send(head(&format!(
                    "T {}",
                    target("method-split-with-short-pauses")
                ))),
            ],
        ),
        Probe::send(
            "non-ascii-in-method",
            head_bytes(
                &[
                    b"G\xc3\x89T ".as_slice(),
                    target("non-ascii-in-method").as_bytes(),
                ]
                .concat(),
            ),
        ),
        Probe::send(
            "non-ascii-first-byte",
            head_bytes(
                &[
                    b"\xef\xbb\xbfGET ".as_slice(),
                    target("non-ascii-first-byte").as_bytes(),
                ]
                .concat(),
            ),
        ),
        Probe::send(
            "nul-before-method",
            head_bytes(&[b"\0GET ".as_slice(), target("nul-before-method").as_bytes()].concat()),
        ),
        Probe::send(
            "nul-in-method",
            head_bytes(&[b"GE\0T ".as_slice(), target("nul-in-method").as_bytes()].concat()),
        ),
        Probe::send(
            "tls-looking-prefix",
            [
                b"\x16\x03\x01\x00\x05hello".as_slice(),
                &head(&line("GET", " ", "tls-looking-prefix")),
            ]
            .concat(),
        ),
        Probe::new(
            "one-byte-then-stall",
            vec![
                send("G"),
                pause(d * 2 + 200),
                send(head(&format!("ET {}", target("one-byte-then-stall")))),
            ],
        ),
        Probe::send(
            "opaque-ssh-banner",
            format!("SSH-2.0-OpenSSH_9.6 [{}]\r\n", marker("opaque-ssh-banner")),
        ),
        Probe::send(
            "opaque-binary",
            [
                b"\x00\x01\x02\x03".as_slice(),
                format!("[{}]/admin", marker("opaque-binary")).as_bytes(),
            ]
            .concat(),
        ),
    ];
    // HTTP/2 prior knowledge: a whole request for /admin, and the preface stalled past the
    // timeout half-way. The marker rides in a header (`:path` may not hold a space).
    let h2_admin = |n: &str| {
        h2::request_bytes(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "backend"),
            (":path", &format!("/admin?probe={n}")),
            ("x-marker", &marker(n)),
        ])
    };
    probes.push(Probe::send("h2-admin", h2_admin("h2-admin")));
    let stalled = h2_admin("h2-preface-stall");
    probes.push(Probe::new(
        "h2-preface-stall",
        vec![send(&stalled[..6]), pause(d * 2 + 200), send(&stalled[6..])],
    ));
    // Silences shorter than, around and longer than the detect timeout, then HTTP.
    for ms in [d / 3, d - 20, d, d + 20, d * 2, d * 3] {
        let n = format!("silent-{ms}ms-then-http");
        probes.push(Probe::new(
            n.clone(),
            vec![pause(ms), send(head(&line("GET", " ", &n)))],
        ));
    }
    probes
}

/// Well-formed HTTP/1.1 requests whose path resolves to `/admin` (normalization tricks).
pub fn path_trick_probes() -> Vec<Probe> {
    [
        ("dot-dot", "/hello/../admin"),
        ("encoded-dot-dot", "/hello/%2e%2e/admin"),
        ("double-slash", "//admin"),
        ("encoded-letter", "/%61dmin"),
        ("dot-segment", "/./admin"),
        ("absolute-form", "http://backend/admin"),
        ("trailing-slash", "/admin/"),
    ]
    .into_iter()
    .map(|(n, path)| {
        let sep = if path.contains('?') { '&' } else { '?' };
        let name = format!("path-{n}");
        Probe::send(
            name.clone(),
            head(&format!("GET {path}{sep}{}HTTP/1.1", marker(&name))),
        )
    })
    .collect()
}

/// Which probes left their marker in what the app received.
pub fn leaked(record: &Record, probes: &[Probe]) -> Vec<String> {
    probes
        .iter()
        .filter(|p| record.contains(marker(&p.name).as_bytes()))
        .map(|p| p.name.clone())
        .collect()
}

/// The attacker-side account of a batch of probes, for assertion messages.
pub fn replies(replies: &[Reply]) -> String {
    replies
        .iter()
        .map(|r| format!("\n  {}", r.summary()))
        .collect()
}

/// Asserts that an answer the proxy made itself, if any, is a denial the caller can read: a 403
/// names `trellis-error: denied`, and nothing the app answered came back.
pub fn assert_denied_or_closed(r: &[Reply]) {
    for reply in r {
        assert!(
            !reply.reached_app(),
            "the attacker got the app's answer: {}",
            reply.summary()
        );
        if reply.status() == Some(403) {
            assert_eq!(
                reply.header("trellis-error").as_deref(),
                Some("denied"),
                "a 403 says why: {}",
                reply.summary()
            );
        }
    }
}

/// Whether a request target the app saw resolves to `/admin` or below, by RFC 3986 rules:
/// absolute form reduced to its path, query dropped, unreserved `%XX` decoded, `//` merged,
/// dot segments resolved.
pub fn resolves_to_admin(target: &str) -> bool {
    let path = app::path_of(target);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut decoded = String::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    decoded.push(v as char);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(b[i] as char);
        i += 1;
    }
    let mut segs: Vec<&str> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    segs.first() == Some(&"admin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_resolution() {
        for t in [
            "/admin",
            "/admin/",
            "/admin/x",
            "//admin",
            "/x/../admin",
            "/%2e%2e/admin",
            "/%61dmin?x",
            "http://backend/admin",
            "/./admin",
        ] {
            assert!(resolves_to_admin(t), "{t}");
        }
        for t in ["/hello", "/administrator", "/hello/admin", "/x/..%2fadmin"] {
            assert!(!resolves_to_admin(t), "{t}");
        }
    }
}
