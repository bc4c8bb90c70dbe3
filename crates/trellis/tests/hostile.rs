//! Hostile clients against the inbound side of a sidecar, with real sockets on loopback and real
//! `trellis` processes. The app behind the sidecar is a recording server written here
//! (`hostile/app.rs`): every byte it receives is kept per connection, and that record is what
//! the tests assert on. The attacker's view (a 403, a 503, a closed connection, a refused
//! handshake) is checked too, but the guarantee is the app's: a request the policy denies never
//! reaches it, whatever protocol the bytes looked like.
//!
//! Each test is named after the guarantee it attacks (`g1_...` to `g8_...`) and says in its doc
//! comment what it tries to break. Every sidecar runs with `--detect-timeout=300ms`; probes on
//! one target run concurrently, each on its own connection, and read for at most 1.5 s after
//! their last byte (a read that times out means nothing arrived).
mod common;

mod hostile {
    pub mod app;
    pub mod client;
    pub mod h2;
    pub mod harness;
}

use common::pki::client_config;
use common::*;
use hostile::app::{App, Record};
use hostile::client::{self, pause, send, Probe, Reply, Transport};
use hostile::h2::{self, H2};
use hostile::harness::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The app received nothing at all since the probes started; the message names the probes whose
/// bytes got through and what the app received.
fn assert_app_received_nothing(record: &Record, probes: &[Probe], replies: &[Reply], who: &str) {
    assert!(
        record.total_bytes() == 0,
        "{who}: the app received {} bytes; probes that got through: {:?}\napp record:{}\nattacker saw:{}",
        record.total_bytes(),
        leaked(record, probes),
        record.describe(),
        hostile::harness::replies(replies)
    );
}

/// A well-formed request for `/hello` that policy allows (or not) by identity alone.
fn hello(name: &str) -> Probe {
    Probe::send(name, head(&format!("GET /hello?{}HTTP/1.1", marker(name))))
}

fn all_bypass_probes() -> Vec<Probe> {
    let mut probes = bypass_probes();
    probes.extend(path_trick_probes());
    probes
}

// ------------------------------------------------------------------------------------------------
// Guarantee 1: an authorization decision before any byte reaches the app, whatever the protocol.

/// A plaintext client (no identity, mTLS mode Permissive) tries every request-line trick, TLS
/// lookalike prefix, silence around the detect timeout and stalled first byte to get `/admin`
/// (or any bytes at all) to an app whose policy allows only one SPIFFE principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_plaintext_peer_gets_no_byte_to_the_app_whatever_the_protocol() {
    let t = Target::start("hostile-g1-plain", "detect", &admin_policy()).await;
    let inbound = t.sidecar.inbound;
    let control = client::run(inbound, &Transport::Plain, &hello("control")).await;
    assert_eq!(control.status(), Some(403), "{}", control.summary());
    assert_eq!(control.header("trellis-error").as_deref(), Some("denied"));

    let mark = t.app.mark();
    let probes = all_bypass_probes();
    let replies = client::run_all(inbound, &Transport::Plain, &probes).await;
    settle().await;
    assert_app_received_nothing(&t.app.since(&mark), &probes, &replies, "plaintext peer");
    assert_denied_or_closed(&replies);
}

/// The same attacks over mTLS with a certificate the mesh's CA issued to `intruder`, an identity
/// the policy never allows: not a byte may reach the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_unallowed_identity_gets_no_byte_to_the_app_whatever_the_protocol() {
    let t = Target::start("hostile-g1-intruder", "detect", &admin_policy()).await;
    let inbound = t.sidecar.inbound;
    let intruder = t.mtls_as("intruder");
    let control = client::run(inbound, &intruder, &hello("control")).await;
    assert_eq!(control.status(), Some(403), "{}", control.summary());

    let mark = t.app.mark();
    let probes = all_bypass_probes();
    let replies = client::run_all(inbound, &intruder, &probes).await;
    settle().await;
    assert_app_received_nothing(&t.app.since(&mark), &probes, &replies, "mTLS as intruder");
    assert_denied_or_closed(&replies);
}

/// The allowed identity (`frontend`, over mTLS) aims every trick at `/admin`, which a DENY rule
/// guards. Opaque TCP must be denied too (the DENY rule has an HTTP condition), so nothing any
/// probe sends may reach the app, while a plain `GET /hello` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_allowed_identity_cannot_reach_admin_whatever_the_protocol() {
    let t = Target::start("hostile-g1-frontend", "detect", &admin_policy()).await;
    let inbound = t.sidecar.inbound;
    let frontend = t.mtls_as("frontend");
    let control = client::run(inbound, &frontend, &hello("control")).await;
    assert_eq!(control.status(), Some(200), "{}", control.summary());
    assert!(control.reached_app(), "{}", control.summary());

    let mark = t.app.mark();
    let probes = all_bypass_probes();
    let replies = client::run_all(inbound, &frontend, &probes).await;
    settle().await;
    assert_app_received_nothing(
        &t.app.since(&mark),
        &probes,
        &replies,
        "mTLS as frontend aiming at /admin",
    );
    assert_denied_or_closed(&replies);
}

/// The same attacks sent in plaintext to a caller's sidecar (`frontend`, the allowed identity)
/// on its local port bound to the backend (`--upstream backend=PORT`): whatever the caller's
/// sidecar makes of them (HTTP, or opaque TCP over mTLS), the backend's app gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_through_a_callers_sidecar_nothing_reaches_admin() {
    let t = Target::start("hostile-g1-caller", "detect", &admin_policy()).await;
    let caller = t.caller("frontend");
    wait_ready(caller.admin).await;
    let control = client::run(caller.port, &Transport::Plain, &hello("control")).await;
    assert_eq!(control.status(), Some(200), "{}", control.summary());

    let mark = t.app.mark();
    let probes = all_bypass_probes();
    let replies = client::run_all(caller.port, &Transport::Plain, &probes).await;
    settle().await;
    assert_app_received_nothing(
        &t.app.since(&mark),
        &probes,
        &replies,
        "through frontend's sidecar",
    );
    assert_denied_or_closed(&replies);
}

/// With a policy that only allows a principal (no HTTP condition anywhere), opaque TCP from that
/// principal is allowed, and from any other identity or from plaintext it is denied: this tries
/// opaque payloads, a lowercase request line and a long silence from all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_identity_only_policy_lets_tcp_through_for_that_identity_alone() {
    let t = Target::start("hostile-g1-idonly", "detect", &identity_only_policy()).await;
    let inbound = t.sidecar.inbound;
    let opaque = |who: &str| -> Vec<Probe> {
        let n = |s: &str| format!("{who}-{s}");
        vec![
            Probe::send(
                n("ssh"),
                format!("SSH-2.0-OpenSSH_9.6 [{}]\r\n", marker(&n("ssh"))),
            ),
            Probe::send(
                n("lowercase"),
                head(&format!("get /hello?{}HTTP/1.1", marker(&n("lowercase")))),
            ),
            Probe::new(
                n("silent"),
                vec![
                    pause(DETECT_MS * 3),
                    send(format!(
                        "hello after silence [{}]\r\n",
                        marker(&n("silent"))
                    )),
                ],
            ),
        ]
    };
    let (front, intr, plain) = (opaque("frontend"), opaque("intruder"), opaque("plaintext"));
    let (frontend, intruder) = (t.mtls_as("frontend"), t.mtls_as("intruder"));
    let mark = t.app.mark();
    let (rf, ri, rp) = tokio::join!(
        client::run_all(inbound, &frontend, &front),
        client::run_all(inbound, &intruder, &intr),
        client::run_all(inbound, &Transport::Plain, &plain),
    );
    settle().await;
    let got = t.app.since(&mark);
    let all: Vec<Reply> = [rf.clone(), ri.clone(), rp.clone()].concat();
    let leaked_intruder = leaked(&got, &intr);
    let leaked_plain = leaked(&got, &plain);
    assert!(
        leaked_intruder.is_empty() && leaked_plain.is_empty(),
        "opaque TCP from an identity the policy does not allow reached the app: {:?} {:?}\napp record:{}\nattacker saw:{}",
        leaked_intruder,
        leaked_plain,
        got.describe(),
        replies(&all)
    );
    let through = leaked(&got, &front);
    assert_eq!(
        through.len(),
        front.len(),
        "opaque TCP from the allowed identity must reach the app; got through: {through:?}\napp record:{}\nattacker saw:{}",
        got.describe(),
        replies(&rf)
    );
}

// ------------------------------------------------------------------------------------------------
// Guarantee 2: a port declared http/http2/grpc never falls back to TCP.

/// On a port declared `http`, `http2` or `grpc` (no policy: everything HTTP is allowed), garbage
/// must be answered 400, and silence past the detect timeout must end the connection: neither the
/// garbage nor whatever follows the silence may reach the app as raw bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_declared_http_ports_never_fall_back_to_tcp() {
    let (http, http2, grpc) = tokio::join!(
        Target::start("hostile-g2-http", "http", ""),
        Target::start("hostile-g2-http2", "http2", ""),
        Target::start("hostile-g2-grpc", "grpc", ""),
    );
    let late = DETECT_MS * 3;
    let garbage = |n: &str| format!("\x00\x01garbage [{}]\r\n\r\n", marker(n));
    let probes = vec![
        Probe::send("garbage", garbage("garbage")),
        Probe::new(
            "garbage-after-silence",
            vec![pause(late), send(garbage("garbage-after-silence"))],
        ),
        Probe::new(
            "http-after-silence",
            vec![
                pause(late),
                send(format!(
                    "GET /late?{}HTTP/1.1\r\nHost: backend\r\nX-Spliced-Raw: 1\r\nConnection: close\r\n\r\n",
                    marker("http-after-silence")
                )),
            ],
        ),
        Probe::new(
            "opaque-after-silence",
            vec![
                pause(late),
                send(format!("SSH-2.0-x [{}]\r\n", marker("opaque-after-silence"))),
            ],
        ),
    ];
    // A first byte, then a stall past the timeout, then a valid request: serving it as HTTP is
    // fine, splicing it raw is not (the proxy would lower-case the header name).
    let stall = Probe::new(
        "byte-then-stall",
        vec![
            send("G"),
            pause(late),
            send("ET /stall HTTP/1.1\r\nHost: backend\r\nX-Spliced-Raw: 1\r\nConnection: close\r\n\r\n"),
        ],
    );
    let mut failures = Vec::new();
    for (proto, t) in [("http", &http), ("http2", &http2), ("grpc", &grpc)] {
        let control = client::run(t.sidecar.inbound, &Transport::Plain, &hello("control")).await;
        assert_eq!(
            control.status(),
            Some(200),
            "{proto}: {}",
            control.summary()
        );
        let mark = t.app.mark();
        let mut all = probes.clone();
        all.push(stall.clone());
        let r = client::run_all(t.sidecar.inbound, &Transport::Plain, &all).await;
        settle().await;
        let got = t.app.since(&mark);
        let leaked = leaked(&got, &probes);
        let spliced = got.contains_exact(b"X-Spliced-Raw");
        if !leaked.is_empty() || spliced {
            failures.push(format!(
                "port declared {proto}: raw bytes reached the app (probes {leaked:?}, raw splice: {spliced})\napp record:{}\nattacker saw:{}",
                got.describe(),
                replies(&r)
            ));
        }
        let first = &r[0];
        if first.status() != Some(400) {
            failures.push(format!(
                "port declared {proto}: garbage must be answered 400: {}",
                first.summary()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ------------------------------------------------------------------------------------------------
// Guarantee 3: fail closed until the first config (and certificate) is in hand.

/// A sidecar on a control plane that never gives it config, attacked for a few seconds with
/// plaintext HTTP/1, HTTP/2 prior knowledge, opaque TCP and silent-then-HTTP connections. The
/// app must receive nothing; an HTTP answer, if any, is 503 `trellis-error: not-ready`.
async fn assert_fails_closed(dir: &std::path::Path, control: &str) {
    let app = App::start().await;
    let (inbound, admin) = (free_addr(), free_addr());
    let proxy = Proc::spawn(
        dir,
        "backend-proxy",
        &[
            "proxy".into(),
            format!("--control={control}"),
            "--service=backend".into(),
            "--node-id=backend-1".into(),
            "--outbound=off".into(),
            format!("--inbound={inbound}"),
            format!("--app={}", app.addr),
            format!("--admin={admin}"),
            format!("--detect-timeout={DETECT_MS}ms"),
        ],
    );
    // The inbound port is bound right after the admin port; a proxy that refuses to start at all
    // also forwards nothing, so a never-listening inbound is not a failure here.
    let listening = eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(inbound).await.is_ok()
    })
    .await;

    let started = Instant::now();
    let mut h1 = Vec::new();
    let mut h2_results = Vec::new();
    let mut others = Vec::new();
    let mut ready_seen = Vec::new();
    for round in 0..8 {
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        let n = |s: &str| format!("r{round}-{s}");
        let probes = vec![
            hello(&n("http1")),
            Probe::send(n("tcp"), format!("SSH-2.0-x [{}]\r\n", marker(&n("tcp")))),
            Probe::new(
                n("silent-http1"),
                vec![
                    pause(DETECT_MS * 2),
                    send(head(&format!(
                        "GET /hello?{}HTTP/1.1",
                        marker(&n("silent-http1"))
                    ))),
                ],
            ),
        ];
        let h2_path = format!("/hello?{}", marker(&n("h2")).trim());
        let (replies, h2_result, ready) = tokio::join!(
            client::run_all_within(
                inbound,
                &Transport::Plain,
                &probes,
                Duration::from_millis(700)
            ),
            h2_get(inbound, &Transport::Plain, &h2_path),
            get_status(admin, "/ready"),
        );
        h1.push(replies[0].clone());
        others.extend(replies[1..].iter().cloned());
        h2_results.push(h2_result);
        ready_seen.push(ready.map(|(s, _)| s).unwrap_or(0));
    }
    settle().await;
    let got = app.all();
    let log = proxy.log_text();
    assert!(
        !ready_seen.contains(&200),
        "the proxy reported ready without config: the scenario is void ({ready_seen:?})"
    );
    assert!(
        got.total_bytes() == 0,
        "the app received {} bytes from a proxy without config (inbound listening: {listening})\napp record:{}\nHTTP/1 answers:{}\nHTTP/2 answers: {:?}\nother probes:{}\nproxy log tail: {}",
        got.total_bytes(),
        got.describe(),
        replies(&h1),
        h2_results,
        replies(&others),
        tail(&log, 1500)
    );
    for r in &h1 {
        if let Some(status) = r.status() {
            assert_eq!(status, 503, "{}", r.summary());
            assert_eq!(
                r.header("trellis-error").as_deref(),
                Some("not-ready"),
                "{}",
                r.summary()
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// One HTTP/2 prior-knowledge GET; what came back on its stream (or why nothing did).
async fn h2_get(addr: SocketAddr, t: &Transport, path: &str) -> String {
    let io = match client::connect(addr, t).await {
        Ok(io) => io,
        Err(e) => return format!("connect: {e}"),
    };
    let Ok(mut c) = H2::start(io).await else {
        return "closed at the preface".into();
    };
    let fields = h2::get(path);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.request(1, &fields, &[]).await;
    c.collect(&[1], Duration::from_millis(700)).await;
    c.summary()
}

/// `--control` points at an address where nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_fail_closed_with_no_control_plane() {
    let dir = tempdir("hostile-g3-none");
    let nothing = free_addr();
    assert_fails_closed(&dir, &format!("http://{nothing}")).await;
}

/// `--control` points at a server that accepts connections and never answers (a hung control
/// plane): the proxy waits on it forever and must forward nothing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_fail_closed_with_a_hung_control_plane() {
    let dir = tempdir("hostile-g3-hung");
    let listener = hostile::app::bind_free().await;
    let hung = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    assert_fails_closed(&dir, &format!("http://{hung}")).await;
}

/// A real `trellis control` with a different join token: it refuses the proxy's token, so the
/// proxy gets neither config nor certificate, and must forward nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_fail_closed_with_a_control_plane_refusing_the_token() {
    let dir = tempdir("hostile-g3-token");
    let control = free_addr();
    let _cp = Proc::spawn(
        &dir,
        "control",
        &[
            "control".into(),
            format!("--listen={control}"),
            format!("--data-dir={}", dir.join("data").display()),
            "--join-token=another-join-token-fedcba9876543210".into(),
        ],
    );
    let up = eventually(Duration::from_secs(20), || async {
        matches!(get_status(control, "/api/v1/health").await, Ok((200, _)))
    })
    .await;
    assert!(up, "control plane never answered");
    assert_fails_closed(&dir, &format!("http://{control}")).await;
}

// ------------------------------------------------------------------------------------------------
// Guarantee 4: upgrades only for permitted protocols (WebSocket by default).

/// An upgrade request for `/hello` (allowed) with `headers`, then, on the same connection, an
/// HTTP/1 request for `/admin` and an HTTP/2 preface with a stream for `/admin`: if the
/// connection became a pipe to the app, those arrive there unchecked.
fn upgrade_probe(name: &str, headers: &str) -> Probe {
    let first = format!(
        "GET /hello?{}HTTP/1.1\r\nHost: backend\r\n{headers}\r\n\r\n",
        marker(name)
    );
    let follow = format!(
        "GET /admin?{}HTTP/1.1\r\nHost: backend\r\n\r\n",
        marker(&format!("{name}-h1-followup"))
    );
    let h2_name = format!("{name}-h2-followup");
    let h2_bytes = h2::request_bytes(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "backend"),
        (":path", &format!("/admin?probe={h2_name}")),
        ("x-marker", &marker(&h2_name)),
    ]);
    Probe::new(
        name,
        vec![
            send(first),
            pause(400),
            send(follow),
            pause(200),
            send(h2_bytes),
        ],
    )
}

fn upgrade_headers(r: &Record) -> Vec<String> {
    r.requests
        .iter()
        .filter_map(|s| {
            s.header("upgrade")
                .map(|u| format!("{} {}: upgrade {u}", s.method, s.target))
        })
        .collect()
}

/// `Upgrade: h2c` (with `HTTP2-Settings`), in several spellings, on an authorized request must not
/// turn the connection into a pipe: the app never sees `Upgrade: h2c`, the attacker never gets
/// `101`, and the `/admin` requests sent after it (HTTP/1 and HTTP/2) never reach the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_h2c_upgrade_never_becomes_a_pipe() {
    let t = Target::start("hostile-g4-h2c", "detect", &admin_policy()).await;
    let frontend = t.mtls_as("frontend");
    let settings = "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA";
    let probes = vec![
        upgrade_probe(
            "h2c",
            &format!("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n{settings}"),
        ),
        upgrade_probe(
            "h2c-uppercase",
            &format!("Connection: UPGRADE, http2-settings\r\nUpgrade: H2C\r\n{settings}"),
        ),
        upgrade_probe(
            "h2c-odd-connection",
            &format!("Connection: keep-alive ,\t upgrade\r\nUpgrade: h2c\r\n{settings}"),
        ),
        upgrade_probe(
            "h2c-two-connection-headers",
            &format!("Connection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n{settings}"),
        ),
        upgrade_probe(
            "foo-then-h2c",
            &format!("Connection: Upgrade\r\nUpgrade: foo, h2c\r\n{settings}"),
        ),
    ];
    let mark = t.app.mark();
    let r = client::run_all(t.sidecar.inbound, &frontend, &probes).await;
    settle().await;
    let got = t.app.since(&mark);
    let upgrades = upgrade_headers(&got);
    let admin = got.conns_containing(b"/admin");
    let switched: Vec<_> = r
        .iter()
        .filter(|x| x.bytes.starts_with(b"HTTP/1.1 101"))
        .map(|x| x.name.clone())
        .collect();
    assert!(
        upgrades.is_empty() && admin.is_empty() && switched.is_empty(),
        "h2c upgrade passed through: app saw upgrades {upgrades:?}; /admin bytes on app conns {admin:?}; 101 to {switched:?}\napp record:{}\nattacker saw:{}",
        got.describe(),
        replies(&r)
    );
}

/// The same attack from a client nobody here wrote: curl's `--http2` on a plaintext URL sends a
/// real `Upgrade: h2c` request, and `--http2-prior-knowledge` speaks HTTP/2 at once. Allowed
/// paths are answered as plain HTTP/1.1 (never `101`), `/admin` is 403 over both, and the app
/// sees neither an `Upgrade` header nor `/admin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_curl_h2c_upgrade_and_prior_knowledge_are_authorized() {
    let policy = r#"---
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata:
  name: backend-callers
spec:
  service: backend
  defaultAction: Allow
  rules:
    - name: no-admin
      action: Deny
      to:
        paths: ["/admin", "/admin/*"]
"#;
    let t = Target::start("hostile-g4-curl", "detect", policy).await;
    let curl = |args: &[&str], path: &str| {
        let url = format!("http://{}{path}", t.sidecar.inbound);
        let out = std::process::Command::new("curl")
            .args(["-s", "-i", "--max-time", "10"])
            .args(args)
            .arg(&url)
            .output()
            .expect("curl is installed (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mark = t.app.mark();
    let allowed = curl(&["--http2"], "/hello");
    let admin_upgrade = curl(&["--http2"], "/admin");
    let admin_h2 = curl(&["--http2-prior-knowledge"], "/admin/users");
    settle().await;
    let got = t.app.since(&mark);
    assert!(
        allowed.starts_with("HTTP/1.1 200") && !allowed.contains(" 101 "),
        "an h2c upgrade to an allowed path is served as HTTP/1.1: {allowed}"
    );
    for (what, answer) in [("h2c upgrade", &admin_upgrade), ("h2", &admin_h2)] {
        assert!(
            answer.contains(" 403") && answer.contains("trellis-error: denied"),
            "{what} to /admin is denied: {answer}"
        );
    }
    assert!(
        upgrade_headers(&got).is_empty() && got.conns_containing(b"/admin").is_empty(),
        "the app saw an upgrade or /admin:{}",
        got.describe()
    );
    assert!(
        got.contains_exact(b"/hello"),
        "the allowed request reached the app:{}",
        got.describe()
    );
}

/// Upgrade tokens other than WebSocket (`foo`, `TLS/1.2`, an oddly spelled `Connection`) and
/// `CONNECT` requests: refused (403 `upgrade-refused`) or stripped, never a pipe; the app never
/// sees an `Upgrade` header, a `CONNECT`, or the `/admin` requests sent after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_unpermitted_upgrades_and_connect_are_refused() {
    let t = Target::start("hostile-g4-other", "detect", &admin_policy()).await;
    let frontend = t.mtls_as("frontend");
    let connect = |name: &str, authority: &str| {
        let follow = format!(
            "SSH-2.0-x [{}]\r\nGET /admin?{}HTTP/1.1\r\nHost: backend\r\n\r\n",
            marker(&format!("{name}-tunnel")),
            marker(&format!("{name}-followup"))
        );
        Probe::new(
            name,
            vec![
                send(format!(
                    "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nX-Probe: {}\r\n\r\n",
                    marker(name)
                )),
                pause(400),
                send(follow),
            ],
        )
    };
    let probes = vec![
        upgrade_probe("foo", "Connection: Upgrade\r\nUpgrade: foo"),
        upgrade_probe(
            "foo-odd-connection",
            "Connection: uPgRaDe\r\nUpgrade: foo/1.0",
        ),
        upgrade_probe("tls-upgrade", "Connection: Upgrade\r\nUpgrade: TLS/1.2"),
        connect("connect-ssh", "127.0.0.1:22"),
        connect("connect-backend", "backend:80"),
    ];
    let mark = t.app.mark();
    let r = client::run_all(t.sidecar.inbound, &frontend, &probes).await;
    settle().await;
    let got = t.app.since(&mark);
    let upgrades = upgrade_headers(&got);
    let connects: Vec<_> = got
        .requests
        .iter()
        .filter(|s| s.method.eq_ignore_ascii_case("CONNECT"))
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    let admin = got.conns_containing(b"/admin");
    let tunnel = got.conns_containing(b"SSH-2.0");
    assert!(
        upgrades.is_empty() && connects.is_empty() && admin.is_empty() && tunnel.is_empty(),
        "app saw upgrades {upgrades:?}, CONNECTs {connects:?}, /admin on conns {admin:?}, tunnelled bytes on conns {tunnel:?}\napp record:{}\nattacker saw:{}",
        got.describe(),
        replies(&r)
    );
    for reply in &r {
        assert!(
            !reply.bytes.starts_with(b"HTTP/1.1 101") && !reply.bytes.starts_with(b"HTTP/1.1 2"),
            "{}",
            reply.summary()
        );
        if reply.status() == Some(403) {
            let why = reply.header("trellis-error");
            assert!(
                matches!(why.as_deref(), Some("upgrade-refused") | Some("denied")),
                "{}",
                reply.summary()
            );
        }
    }
}

/// WebSocket is permitted, but the upgrade request is authorized like any other: a WebSocket
/// upgrade to `/admin` is denied before the app, while one to `/hello` is the app's to accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_websocket_upgrade_is_authorized_like_any_request() {
    let t = Target::start("hostile-g4-ws", "detect", &admin_policy()).await;
    let frontend = t.mtls_as("frontend");
    let ws = |name: &str, path: &str| {
        Probe::send(
            name,
            format!(
                "GET {path}?{}HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                marker(name)
            ),
        )
    };
    let mark = t.app.mark();
    let admin = client::run(t.sidecar.inbound, &frontend, &ws("ws-admin", "/admin")).await;
    settle().await;
    let got = t.app.since(&mark);
    assert_app_received_nothing(
        &got,
        &[ws("ws-admin", "/admin")],
        std::slice::from_ref(&admin),
        "ws /admin",
    );
    assert_eq!(admin.status(), Some(403), "{}", admin.summary());
    assert_eq!(admin.header("trellis-error").as_deref(), Some("denied"));

    let hello = client::run(t.sidecar.inbound, &frontend, &ws("ws-hello", "/hello")).await;
    assert_eq!(hello.status(), Some(101), "{}", hello.summary());
    let got = t.app.since(&mark);
    assert!(
        got.requests
            .iter()
            .any(|s| s.header("upgrade") == Some("websocket")),
        "the app saw the WebSocket upgrade:{}",
        got.describe()
    );
}

/// HTTP/2 extended CONNECT (`:protocol`) and plain HTTP/2 `CONNECT`, on an authorized
/// connection: refused, the app never sees a CONNECT or a `:protocol`, while an ordinary stream
/// on the same connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_h2_extended_connect_is_refused() {
    let t = Target::start("hostile-g4-xconnect", "detect", &admin_policy()).await;
    let frontend = t.mtls_as("frontend");
    let mark = t.app.mark();
    let io = client::connect(t.sidecar.inbound, &frontend)
        .await
        .expect("mTLS as frontend");
    let mut c = H2::start(io).await.expect("preface");
    let ok = h2::get(&format!("/hello?{}", marker("h2-ok").trim()));
    let ok: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.request(1, &ok, &[]).await;
    let xws = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":authority", "backend"),
        (":path", "/hello?probe=xconnect-websocket"),
    ];
    let xh2c = [
        (":method", "CONNECT"),
        (":protocol", "h2c"),
        (":scheme", "http"),
        (":authority", "backend"),
        (":path", "/admin?probe=xconnect-admin"),
    ];
    let classic = [(":method", "CONNECT"), (":authority", "127.0.0.1:22")];
    // Streams stay open (no END_STREAM would be sent by a tunnel); these carry END_STREAM anyway
    // from `request`, then DATA follows as a tunnel would.
    for (id, fields) in [(3u32, &xws[..]), (5, &xh2c[..]), (7, &classic[..])] {
        let block = h2::header_block(fields);
        c.send(&h2::headers_frames(id, &block, false, &[])).await;
        c.send(&h2::frame(
            0,
            0,
            id,
            b"SSH-2.0-x tunnelled GET /admin HTTP/1.1\r\n\r\n",
        ))
        .await;
    }
    c.collect(&[1, 3, 5, 7], Duration::from_secs(3)).await;
    settle().await;
    let got = t.app.since(&mark);
    let connects: Vec<_> = got
        .requests
        .iter()
        .filter(|s| s.method == "CONNECT" || s.header(":protocol").is_some())
        .map(|s| format!("{} {} {:?}", s.method, s.target, s.header(":protocol")))
        .collect();
    assert!(
        connects.is_empty() && !got.contains(b"tunnelled"),
        "the app saw CONNECT/extended CONNECT: {connects:?}\napp record:{}\nattacker saw: {}",
        got.describe(),
        c.summary()
    );
    assert!(
        got.requests.iter().any(|s| s.target.contains("h2-ok")),
        "the ordinary stream on the same connection is served:{}\nattacker saw: {}",
        got.describe(),
        c.summary()
    );
}

// ------------------------------------------------------------------------------------------------
// Guarantee 5: a JWT in a query parameter is removed before the app (unless forwarded on purpose).

const JWT_SECRET: &[u8] = b"trellis-test-hmac-secret-of-32-bytes!";
const ISSUER: &str = "https://issuer.test";

fn jwt() -> String {
    let _ = trellis_identity::JwtValidator::new(&[]);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({"iss": ISSUER, "sub": "alice", "aud": "backend", "exp": exp});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .expect("sign token")
}

fn request_authentication(forward: bool) -> String {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(JWT_SECRET);
    format!(
        r#"---
apiVersion: trellis.dev/v1
kind: RequestAuthentication
metadata:
  name: backend-jwt
spec:
  service: backend
  jwtRules:
    - issuer: {ISSUER}
      audiences: ["backend"]
      fromHeaders: [{{name: authorization, prefix: "Bearer "}}]
      fromParams: ["access_token"]
      forwardOriginalToken: {forward}
      jwks:
        inline: '{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{k}"}}]}}'
"#
    )
}

/// Sends the token in the query (first, last, percent-encoded parameter name), in the header,
/// and over HTTP/2; returns the attacker's answers and what the app received.
async fn jwt_requests(t: &Target, token: &str) -> (Vec<Reply>, String, Record) {
    let req = |name: &str, target: &str, extra: &str| {
        Probe::send(
            name,
            format!("GET {target} HTTP/1.1\r\nHost: backend\r\n{extra}Connection: close\r\n\r\n"),
        )
    };
    let probes = vec![
        req(
            "query-first",
            &format!("/data?access_token={token}&x=1"),
            "",
        ),
        req("query-last", &format!("/data?x=1&access_token={token}"), ""),
        req(
            "query-encoded-name",
            &format!("/data?acc%65ss_token={token}&x=1"),
            "",
        ),
        req(
            "header",
            "/data?x=1",
            &format!("Authorization: Bearer {token}\r\n"),
        ),
    ];
    let mark = t.app.mark();
    let r = client::run_all(t.sidecar.inbound, &Transport::Plain, &probes).await;
    let h2 = h2_get(
        t.sidecar.inbound,
        &Transport::Plain,
        &format!("/data?access_token={token}&x=2"),
    )
    .await;
    settle().await;
    (r, h2, t.app.since(&mark))
}

/// A valid token sent as `?access_token=` must be removed from the query before the app sees
/// the request (as header tokens are), in any position and however the parameter name is
/// encoded, over HTTP/1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_jwt_in_query_is_removed_before_the_app() {
    let t = Target::start("hostile-g5-strip", "detect", &request_authentication(false)).await;
    let token = jwt();
    let (r, h2, got) = jwt_requests(&t, &token).await;
    for reply in &r {
        assert_eq!(
            reply.status(),
            Some(200),
            "a valid token: {}",
            reply.summary()
        );
    }
    assert_eq!(
        got.requests.len(),
        5,
        "every request served:{}",
        got.describe()
    );
    let leaked: Vec<_> = got
        .requests
        .iter()
        .filter(|s| s.target.contains(&token) || s.headers.iter().any(|(_, v)| v.contains(&token)))
        .map(|s| format!("{} {} {}", s.version, s.method, s.target))
        .collect();
    assert!(
        leaked.is_empty() && !got.contains(token.as_bytes()),
        "the token reached the app: {leaked:?}\napp record:{}\nHTTP/2: {h2}",
        got.describe()
    );
}

/// With `forwardOriginalToken: true` the query token is the app's to see: it stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_jwt_in_query_stays_with_forward_original_token() {
    let t = Target::start("hostile-g5-keep", "detect", &request_authentication(true)).await;
    let token = jwt();
    let (r, h2, got) = jwt_requests(&t, &token).await;
    for reply in &r {
        assert_eq!(
            reply.status(),
            Some(200),
            "a valid token: {}",
            reply.summary()
        );
    }
    let with_token = got
        .requests
        .iter()
        .filter(|s| s.target.contains(&token) || s.headers.iter().any(|(_, v)| v.contains(&token)))
        .count();
    assert_eq!(
        with_token,
        5,
        "every request keeps its token:{}\nHTTP/2: {h2}",
        got.describe()
    );
}

// ------------------------------------------------------------------------------------------------
// Guarantee 6: a static-config sidecar refuses peers from another trust domain.

/// A client certificate for `spiffe://bench.local/ns/default/sa/x`, signed by the very root the
/// sidecar trusts (the mesh is `cluster.local`): the handshake must fail and the app get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_static_config_refuses_another_trust_domain() {
    let t = Target::start_mode("hostile-g6", "Strict", "detect", "").await;
    let inbound = t.sidecar.inbound;
    let control = client::run(inbound, &t.mtls_as("frontend"), &hello("control")).await;
    assert_eq!(control.status(), Some(200), "{}", control.summary());

    let bench = t.pki.same_root_other_domain("bench.local", "bench");
    let foreign = Transport::Tls(client_config(&bench.issue("x")));
    let probes = vec![hello("other-trust-domain")];
    let mark = t.app.mark();
    let r = client::run_all(inbound, &foreign, &probes).await;
    settle().await;
    assert_app_received_nothing(
        &t.app.since(&mark),
        &probes,
        &r,
        "spiffe://bench.local/ns/default/sa/x",
    );
    assert!(
        !hostile::app::contains(&r[0].bytes, b"HTTP/1.1"),
        "the handshake must fail: {}",
        r[0].summary()
    );
}

// ------------------------------------------------------------------------------------------------
// Guarantee 7: HTTP/2 tricks on an authorized connection.

fn owned(fields: &[(&str, &str)]) -> Vec<(String, String)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The allowed identity over mTLS, HTTP/2 prior knowledge. On one connection: allowed streams
/// around streams for `/admin`, plain and behind `..`, `%2e%2e`, `//` and `%61`. On a second:
/// an absolute-form `:path`, `:authority` tricks, a header block split by CONTINUATION inside
/// the path, a duplicated `:path` and a `:path` after a regular header. No request the app sees
/// may resolve to `/admin`; the allowed streams are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_h2_streams_for_admin_never_reach_the_app() {
    let t = Target::start("hostile-g7", "detect", &admin_policy()).await;
    let frontend = t.mtls_as("frontend");
    let mark = t.app.mark();

    let get = |path: &str| {
        owned(
            &h2::get(path)
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    let first: Vec<(u32, Vec<(String, String)>)> = vec![
        (1, get("/hello?probe=allowed-1")),
        (3, get("/admin?probe=plain")),
        (5, get("/hello/../admin?probe=dot-dot")),
        (7, get("/hello/%2e%2e/admin?probe=encoded-dot-dot")),
        (9, get("//admin?probe=double-slash")),
        (11, get("/%61dmin?probe=encoded-letter")),
        (13, get("/admin/?probe=trailing-slash")),
        (15, get("/hello?probe=allowed-2")),
    ];
    let second: Vec<(u32, Vec<(String, String)>)> = vec![
        (1, get("/hello?probe=allowed-3")),
        (
            3,
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "backend"),
                (":path", "http://backend/admin?probe=absolute-form"),
            ]),
        ),
        (
            5,
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "evil"),
                (
                    ":path",
                    "http://backend/admin?probe=absolute-other-authority",
                ),
            ]),
        ),
        (
            7,
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "backend/admin"),
                (":path", "/?probe=authority-with-path"),
            ]),
        ),
        (
            9,
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/admin?probe=no-authority-host-header"),
                ("host", "backend"),
            ]),
        ),
        (
            11,
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "backend"),
                (":path", "/hello?probe=dup-path"),
                (":path", "/admin?probe=dup-path"),
            ]),
        ),
        (
            13,
            owned(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "backend"),
                ("x-filler", "1"),
                (":path", "/admin?probe=path-after-regular-header"),
            ]),
        ),
    ];

    async fn run_conn(
        addr: SocketAddr,
        t: &Transport,
        streams: &[(u32, Vec<(String, String)>)],
        continuation: Option<u32>,
    ) -> String {
        let io = match client::connect(addr, t).await {
            Ok(io) => io,
            Err(e) => return format!("connect: {e}"),
        };
        let mut c = H2::start(io).await.expect("preface");
        let mut ids = Vec::new();
        for (id, fields) in streams {
            let f: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            c.request(*id, &f, &[]).await;
            ids.push(*id);
        }
        if let Some(id) = continuation {
            let f = h2::get("/admin?probe=continuation-split");
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let len = h2::header_block(&f).len();
            // Cut inside the `:path` value (the block's last field) and elsewhere.
            c.request(id, &f, &[3, 17, len - 9, len - 4]).await;
            ids.push(id);
        }
        c.collect(&ids, Duration::from_secs(4)).await;
        c.summary()
    }

    let (a, b) = tokio::join!(
        run_conn(t.sidecar.inbound, &frontend, &first, None),
        run_conn(t.sidecar.inbound, &frontend, &second, Some(15)),
    );
    settle().await;
    eprintln!("connection 1: {a}\nconnection 2: {b}");
    let got = t.app.since(&mark);
    let admin: Vec<_> = got
        .requests
        .iter()
        .filter(|s| hostile::harness::resolves_to_admin(&s.target))
        .map(|s| format!("{} {} {}", s.version, s.method, s.target))
        .collect();
    assert!(
        admin.is_empty() && !got.contains(b"/admin"),
        "requests resolving to /admin reached the app: {admin:?}\napp record:{}\nconnection 1: {a}\nconnection 2: {b}",
        got.describe()
    );
    for allowed in ["allowed-1", "allowed-2"] {
        assert!(
            got.requests.iter().any(|s| s.target.contains(allowed)),
            "{allowed} must be served:{}\nconnection 1: {a}",
            got.describe()
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Guarantee 8: every denial counted by policy; denial logging bounded.

fn denied_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("denied")).count()
}

/// 500 denied HTTP requests (10 connections, 50 pipelined requests each, plaintext against a
/// policy that allows one principal): each is counted under the deciding policy, and the log
/// holds far fewer than 500 `denied` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_http_denials_are_counted_and_logged_boundedly() {
    let t = Target::start("hostile-g8-http", "detect", &admin_policy()).await;
    let (conns, per_conn) = (10, 50);
    let probes: Vec<Probe> = (0..conns)
        .map(|c| {
            let mut bytes = Vec::new();
            for i in 0..per_conn {
                let close = if i + 1 == per_conn {
                    "Connection: close\r\n"
                } else {
                    ""
                };
                bytes.extend(
                    format!("GET /hello?c={c}&i={i} HTTP/1.1\r\nHost: backend\r\n{close}\r\n")
                        .into_bytes(),
                );
            }
            Probe::send(format!("conn-{c}"), bytes)
        })
        .collect();
    let mark = t.app.mark();
    let r = client::run_all(t.sidecar.inbound, &Transport::Plain, &probes).await;
    settle().await;
    let answered: usize = r
        .iter()
        .map(|x| {
            String::from_utf8_lossy(&x.bytes)
                .matches("HTTP/1.1 403")
                .count()
        })
        .sum();
    assert_eq!(answered, conns * per_conn, "every attempt denied");
    assert_eq!(t.app.since(&mark).total_bytes(), 0);
    let counted = counter(
        t.sidecar.admin,
        "trellis_authorization_decisions_total",
        &[("decision", "denied"), ("policy", "backend-callers")],
    )
    .await;
    assert!(
        counted >= (conns * per_conn) as f64,
        "denials counted by policy: {counted}"
    );
    let lines = denied_lines(&t.sidecar.log());
    assert!(
        lines < 50,
        "{lines} log lines mention `denied` after {} denied attempts",
        conns * per_conn
    );
}

/// 100 opaque TCP connections from plaintext (denied: no identity, and the policy's DENY rule
/// has an HTTP condition): each denial is counted under the deciding policy, the app receives
/// nothing, and the log holds far fewer than 100 `denied` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_tcp_denials_are_counted_and_logged_boundedly() {
    let t = Target::start("hostile-g8-tcp", "detect", &admin_policy()).await;
    let attempts = 100;
    let probes: Vec<Probe> = (0..attempts)
        .map(|i| {
            Probe::send(
                format!("tcp-{i}"),
                format!("SSH-2.0-x [{}]\r\n", marker(&format!("tcp-{i}"))),
            )
        })
        .collect();
    let before = counter(
        t.sidecar.admin,
        "trellis_authorization_decisions_total",
        &[("decision", "denied"), ("policy", "backend-callers")],
    )
    .await;
    let mark = t.app.mark();
    let mut r = Vec::new();
    for batch in probes.chunks(25) {
        r.extend(client::run_all(t.sidecar.inbound, &Transport::Plain, batch).await);
    }
    settle().await;
    let got = t.app.since(&mark);
    let counted = counter(
        t.sidecar.admin,
        "trellis_authorization_decisions_total",
        &[("decision", "denied"), ("policy", "backend-callers")],
    )
    .await
        - before;
    let lines = denied_lines(&t.sidecar.log());
    assert!(
        got.total_bytes() == 0 && counted >= attempts as f64 && lines < 50,
        "{attempts} opaque connections from plaintext: app received {} bytes on {} connections, {counted} denials counted, {lines} `denied` log lines",
        got.total_bytes(),
        got.conns.len()
    );
}

/// Sanity of the harness itself: the recording app records and answers without a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_recording_app_records_and_answers() {
    let app = App::start().await;
    let probe = hello("direct");
    let r = client::run(app.addr, &Transport::Plain, &probe).await;
    assert!(r.reached_app(), "{}", r.summary());
    let h2 = h2_get(app.addr, &Transport::Plain, "/x?probe=h2-direct").await;
    assert!(
        h2.contains("status Some(200)") && h2.contains("app-saw"),
        "{h2}"
    );
    settle().await;
    let got = app.all();
    assert!(
        got.contains(marker("direct").as_bytes()),
        "{}",
        got.describe()
    );
    assert!(
        got.requests
            .iter()
            .any(|s| s.version == "HTTP/2" && s.target.contains("h2-direct")),
        "{}",
        got.describe()
    );
}
