//! Transparent sidecars on a real control plane (issue 15), in network namespaces: one host per
//! namespace, a `trellis control` (embedded store, the mesh's CA) on a host of its own, and on
//! every other host an app that knows nothing of the mesh beside a sidecar started with
//! `--intercept` (callers also `--dns`). The control plane allocates each Service's virtual IP
//! (`ServiceAddress`), issues every sidecar's SPIFFE certificate, and the mesh runs Strict mTLS,
//! so every hop between hosts is mutual TLS.
//!
//! - apps reach services by name, unchanged: `curl http://ratings:9080/` (HTTP), `redis-cli -h
//!   cache -p 6379` to a real `redis-server` (a port declared `tcp`) and a grpcio client of
//!   `grpc-svc:50051`, and a server-first protocol (the app greets first; the client sends
//!   nothing); each is checked on the protected side (the app's own log or state, and
//!   the serving sidecar's inbound metrics naming the caller's identity over mTLS), and the
//!   capture rules took exactly the app's connections, none of the proxy's own;
//! - the bytes between the hosts are TLS: a sniffer on the ratings host's interface sees TLS
//!   records and never a marker the request carried, while it does see a marker sent in
//!   cleartext to the same host;
//! - an `AuthorizationPolicy` denying the caller's identity answers the unmodified curl `403`
//!   `trellis-error: denied`, another caller still gets through, and the app receives none of
//!   the denied requests.
//!
//! Needs root, `ip`, `iptables` (nft), `curl`, `python3` with grpcio, `redis-server` and
//! `redis-cli` (scripts/test.sh installs them).
mod common;
mod netns;

use common::{counter, get_status, wait_api, wait_ready, TOKEN};
use netns::{lock_suite, Host, NsProc, NsResolvConf, SuiteLock, Topology, BIN};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONTROL_HOST: (&str, u8) = ("hc", 10);
/// The app host: `productpage`, which calls the others.
const APP_HOST: (&str, u8) = ("ha", 21);
/// A second caller (`reviews`), for the authorization test.
const OTHER_CALLER: (&str, u8) = ("hb", 25);

const CONTROL_PORT: u16 = 15010;
const ADMIN_PORT: u16 = 15000;
const INBOUND_PORT: u16 = 15006;
const DNS_PORT: u16 = 15053;
/// The redirect target of captured outbound TCP (`--intercept-listen`'s default port).
const CAPTURE_PORT: u16 = 15002;
const MARK: &str = "0x1337";

const PRODUCTPAGE_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const REVIEWS_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";

/// What runs on a service host, behind its sidecar, on the host's loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppKind {
    /// A small Python HTTP server that logs every request it receives.
    Ratings,
    /// A real `redis-server`.
    Redis,
    /// `trellis demo-app`, answering gRPC unary echo.
    GrpcEcho,
    /// A server-first protocol (as SMTP or MySQL): it greets each connection before the client
    /// says anything.
    Greeter,
}

/// A service host: its namespace, the mesh service it serves, and the app behind it.
#[derive(Debug, Clone, Copy)]
struct Backend {
    host: (&'static str, u8),
    service: &'static str,
    port: u16,
    protocol: &'static str,
    app: AppKind,
}

const RATINGS: Backend = Backend {
    host: ("hr", 22),
    service: "ratings",
    port: 9080,
    protocol: "http",
    app: AppKind::Ratings,
};
const CACHE: Backend = Backend {
    host: ("hk", 23),
    service: "cache",
    port: 6379,
    protocol: "tcp",
    app: AppKind::Redis,
};
const GRPC: Backend = Backend {
    host: ("hg", 24),
    service: "grpc-svc",
    port: 50051,
    protocol: "grpc",
    app: AppKind::GrpcEcho,
};

const MAIL: Backend = Backend {
    host: ("hm", 26),
    service: "mail",
    port: 2525,
    protocol: "tcp",
    app: AppKind::Greeter,
};

/// The greeting the server-first app sends each connection before reading anything.
const GREETING: &str = "220 mail ready";

/// The server-first app: greets every connection at once, then closes it; a line per greeting.
const GREETER_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
print("greeter listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[2].encode() + b"\r\n")
    print("GREETED", flush=True)
    c.close()
"#;

/// A client of a server-first protocol, knowing nothing of the mesh: connects by name and
/// waits for the greeting without sending a byte.
const SILENT_CLIENT_PY: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
c = socket.create_connection((host, int(port)), 10)
c.settimeout(10)
print(c.recv(100).decode().strip())
"#;

/// The ratings app: answers 200 to every GET and prints one line per request it received
/// (`REQ <path> <x-marker header>`), so the test counts what reached it.
const RATINGS_APP_PY: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print("REQ", self.path, self.headers.get("x-marker", "-"), flush=True)
        body = ("ratings answered %s\n" % self.path).encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ratings listening", flush=True)
server.serve_forever()
"#;

/// A gRPC client that knows nothing of the mesh: a target name, a method, raw bytes in and out.
const GRPC_CLIENT_PY: &str = r#"
import grpc, sys
target, payload = sys.argv[1], sys.argv[2].encode()
channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
call = channel.unary_unary("/trellis.test.Echo/Say",
                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    reply = call(payload, timeout=15)
    print("OK", reply.decode())
except grpc.RpcError as e:
    print("ERR", e.code().name, e.details())
"#;

/// Captures every frame on an interface (a raw `AF_PACKET` socket) into a file, each frame
/// prefixed by its length (4 bytes, big-endian), until the stop file exists or the time limit
/// passes.
const SNIFFER_PY: &str = r#"
import os, socket, struct, sys, time
iface, out, stop, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.settimeout(0.1)
print("sniffing", flush=True)
deadline = time.monotonic() + limit
frames = 0
with open(out, "wb") as f:
    while time.monotonic() < deadline and not os.path.exists(stop):
        try:
            frame = s.recv(262144)
        except socket.timeout:
            continue
        f.write(struct.pack(">I", len(frame)) + frame)
        f.flush()
        frames += 1
print("done", frames, flush=True)
"#;

/// The CLI, from the test's own namespace, against the control plane with the join token.
fn cli(control: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(args)
        .env("TRELLIS_CONTROL", control)
        .env("TRELLIS_TOKEN", TOKEN)
        .env_remove("TRELLIS_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run the trellis CLI");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`trellis {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs a command in a host's namespace, bounded by `timeout` (coreutils), and returns
/// (success, stdout, stderr) whatever the outcome.
fn try_exec(host: &Host, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &host.ns, "timeout", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip netns exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl -i` from a host, unchanged but for never using a proxy from the environment.
fn curl(host: &Host, url: &str, headers: &[&str]) -> String {
    let mut args = vec!["curl", "-sS", "-i", "-m", "15", "--noproxy", "*"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    let (_, out, err) = try_exec(host, &args);
    format!("{out}{err}")
}

/// Packet counters of the capture chain's rules on a host: (captured to the outbound capture
/// port, let out by the proxy's mark).
fn capture_counters(host: &Host) -> (u64, u64) {
    let (mut captured, mut marked) = (0, 0);
    for (pkts, rule) in netns::capture_chain_counters(host) {
        if rule.contains(&format!("redir ports {CAPTURE_PORT}")) {
            captured += pkts;
        } else if rule.contains(&format!("mark match {MARK}")) {
            marked += pkts;
        }
    }
    (captured, marked)
}

/// The running mesh of one test. Fields drop in order: processes first, the namespaces last.
struct Mesh {
    apps: BTreeMap<&'static str, NsProc>,
    sidecars: BTreeMap<&'static str, NsProc>,
    control: NsProc,
    _resolv: Vec<NsResolvConf>,
    dir: PathBuf,
    control_url: String,
    /// Each service's virtual IP, as the control plane allocated it.
    vips: BTreeMap<&'static str, Ipv4Addr>,
    topo: Topology,
    _lock: SuiteLock,
}

impl Mesh {
    fn host(&self, role: &str) -> Host {
        self.topo.host(role).clone()
    }

    fn admin(&self, role: &str) -> SocketAddr {
        SocketAddr::new(self.topo.host(role).addr.into(), ADMIN_PORT)
    }

    fn sidecar_log(&self, role: &str) -> String {
        self.sidecars
            .get(role)
            .map(NsProc::log_text)
            .unwrap_or_default()
    }

    /// Starts the control plane, applies the mesh, starts every backend (app and sidecar) and
    /// every caller's sidecar, and waits until each caller's sidecar holds a healthy endpoint
    /// of every backend.
    async fn start(
        tag: &str,
        callers: &[((&'static str, u8), &'static str)],
        backends: &[Backend],
    ) -> Mesh {
        let lock = lock_suite(Duration::from_secs(600)).await;
        let mut hosts = vec![CONTROL_HOST];
        hosts.extend(callers.iter().map(|(h, _)| *h));
        hosts.extend(backends.iter().map(|b| b.host));
        let topo = Topology::create(&hosts);
        let dir = common::tempdir(tag);

        // The control plane, on a host of its own; the test reaches it over the bridge.
        let hc = topo.host(CONTROL_HOST.0).clone();
        let control_addr = SocketAddr::new(hc.addr.into(), CONTROL_PORT);
        let control_url = format!("http://{control_addr}");
        let control = hc.spawn(
            &dir,
            "control",
            &[
                "control".into(),
                format!("--listen={control_addr}"),
                format!("--data-dir={}", dir.join("control-data").display()),
                format!("--join-token={TOKEN}"),
            ],
        );
        wait_api(control_addr).await;

        // The mesh: Strict mTLS and one Service per backend. No ServiceAddress: the control
        // plane allocates those.
        let mut mesh = String::from(
            "apiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\n\
             spec: {mtls: {mode: Strict}}\n",
        );
        for b in backends {
            mesh.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {}}}\n\
                 spec: {{ports: [{{port: {}, protocol: {}}}]}}\n",
                b.service, b.port, b.protocol
            ));
        }
        let mesh_path = dir.join("mesh.yaml");
        common::write_config(&mesh_path, &mesh);
        cli(
            &control_url,
            &["apply", "-f", &mesh_path.display().to_string()],
        )
        .unwrap_or_else(|e| panic!("{e}"));

        // Each Service's VIP, read back the way a user would: `trellis get serviceaddresses`.
        let mut vips = BTreeMap::new();
        for b in backends {
            let deadline = Instant::now() + Duration::from_secs(20);
            let vip = loop {
                let got = cli(
                    &control_url,
                    &["get", "serviceaddresses", b.service, "-o", "json"],
                )
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["spec"]["address"].as_str().map(str::to_string))
                .and_then(|a| a.parse::<Ipv4Addr>().ok());
                if let Some(vip) = got {
                    break vip;
                }
                assert!(
                    Instant::now() < deadline,
                    "the control plane allocated no ServiceAddress for {} within 20 s",
                    b.service
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            vips.insert(b.service, vip);
        }

        // The apps, on their hosts' loopback only.
        let mut apps = BTreeMap::new();
        for b in backends {
            let h = topo.host(b.host.0).clone();
            let port = b.port.to_string();
            let (mut app, ready) = match b.app {
                AppKind::Ratings => (
                    h.spawn_program(
                        &dir,
                        "ratings-app",
                        "python3",
                        &["-c", RATINGS_APP_PY, &port],
                    ),
                    "ratings listening",
                ),
                AppKind::Redis => (
                    h.spawn_program(
                        &dir,
                        "redis",
                        "redis-server",
                        &[
                            "--bind",
                            "127.0.0.1",
                            "--port",
                            &port,
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            &dir.display().to_string(),
                        ],
                    ),
                    "Ready to accept connections",
                ),
                AppKind::Greeter => (
                    h.spawn_program(
                        &dir,
                        "greeter",
                        "python3",
                        &["-c", GREETER_PY, &port, GREETING],
                    ),
                    "greeter listening",
                ),
                AppKind::GrpcEcho => (
                    h.spawn_program(
                        &dir,
                        "grpc-app",
                        BIN,
                        &[
                            "demo-app",
                            &format!("--listen=127.0.0.1:{port}"),
                            "--name=grpc-svc",
                            "--instance=hg",
                        ],
                    ),
                    "listening on",
                ),
            };
            app.wait_log(ready, Duration::from_secs(20)).await;
            apps.insert(b.service, app);
        }

        let control_flags = |h: &Host, node: &str, service: &str| -> Vec<String> {
            vec![
                "proxy".into(),
                format!("--control={control_url}"),
                format!("--token={TOKEN}"),
                format!("--node-id={node}"),
                format!("--service={service}"),
                format!("--admin={}:{ADMIN_PORT}", h.addr),
                "--lease-ttl=5s".into(),
                "--intercept".into(),
            ]
        };
        let mut sidecars = BTreeMap::new();
        for b in backends {
            let h = topo.host(b.host.0).clone();
            let mut args = control_flags(&h, &format!("{}-{}", b.service, h.role), b.service);
            args.extend([
                format!("--inbound=0.0.0.0:{INBOUND_PORT}"),
                format!("--advertise={}", h.addr),
                format!("--app=127.0.0.1:{}", b.port),
            ]);
            let label = format!("{}-proxy", h.role);
            sidecars.insert(b.host.0, h.spawn(&dir, &label, &args));
        }
        let mut resolv = Vec::new();
        for ((role, _), service) in callers {
            let h = topo.host(role).clone();
            resolv.push(NsResolvConf::write(&h.ns, h.addr));
            // Real hosts have a default route; these namespaces have none, so each VIP gets a
            // route (a SYN to an unroutable address fails before the capture rule sees it).
            for vip in vips.values() {
                h.exec(&[
                    "ip",
                    "route",
                    "add",
                    &format!("{vip}/32"),
                    "dev",
                    netns::HOST_IF,
                ]);
            }
            let mut args = control_flags(&h, &format!("{service}-{role}"), service);
            args.extend([
                format!("--dns=127.0.0.1:{DNS_PORT}"),
                // Names outside the mesh would go here; these tests ask none.
                format!("--dns-upstream={}", h.addr),
            ]);
            let label = format!("{role}-proxy");
            sidecars.insert(*role, h.spawn(&dir, &label, &args));
        }
        let mut m = Mesh {
            apps,
            sidecars,
            control,
            _resolv: resolv,
            dir,
            control_url,
            vips,
            topo,
            _lock: lock,
        };
        let roles: Vec<&'static str> = m.sidecars.keys().copied().collect();
        for role in roles {
            let admin = m.admin(role);
            let p = m.sidecars.get_mut(role).expect("sidecar");
            p.wait_log("capture rules installed", Duration::from_secs(20))
                .await;
            wait_ready(admin).await;
        }
        // Every caller holds an endpoint of every backend, on the backend host's inbound port.
        for ((role, _), _) in callers {
            for b in backends {
                let want = format!("{}:{INBOUND_PORT}", m.topo.host(b.host.0).addr);
                m.wait_config(role, &format!("{}'s endpoint at {want}", b.service), |c| {
                    c["services"].as_array().is_some_and(|s| {
                        s.iter().any(|svc| {
                            svc["name"] == b.service
                                && svc["endpoints"]
                                    .as_array()
                                    .is_some_and(|e| e.iter().any(|e| e["address"] == want))
                        })
                    })
                })
                .await;
            }
        }
        m
    }

    /// Installing the capture rules leaves alone the connections that were open before: every
    /// sidecar opened its xDS stream (and, with an inbound side, registered) before it
    /// installed its rules, and all those streams still stand.
    fn assert_control_streams_intact(&self) {
        let log = self.control.log_text();
        let ended: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("xDS stream ended"))
            .collect();
        assert!(
            ended.is_empty(),
            "xDS streams ended while every sidecar was running: {ended:#?}"
        );
    }

    /// Waits (bounded) until a sidecar's `/config` satisfies `check`.
    async fn wait_config(
        &self,
        role: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok((200, body)) = get_status(self.admin(role), "/config").await {
                if serde_json::from_str(&body).is_ok_and(|c| check(&c)) {
                    return;
                }
                last = body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{role}: {what} not in its config within 30 s: {last}\n{}",
            self.sidecar_log(role)
        );
    }
}

/// A random marker no other test sends.
fn marker(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn apps_reach_http_tcp_and_grpc_services_by_name_through_captured_sidecars() {
    let mesh = Mesh::start(
        "capture-mesh-names",
        &[(APP_HOST, "productpage")],
        &[RATINGS, CACHE, GRPC, MAIL],
    )
    .await;
    let ha = mesh.host(APP_HOST.0);
    let (ratings_vip, cache_vip, grpc_vip) = (
        mesh.vips["ratings"],
        mesh.vips["cache"],
        mesh.vips["grpc-svc"],
    );
    assert!(
        ratings_vip != cache_vip && cache_vip != grpc_vip && ratings_vip != grpc_vip,
        "one address per service: {:?}",
        mesh.vips
    );
    // The app host resolves each name to the VIP the control plane allocated.
    for (name, vip) in &mesh.vips {
        let (ok, out, err) = try_exec(&ha, &["getent", "ahostsv4", name]);
        assert!(ok, "{name} does not resolve on the app host: {err}");
        assert_eq!(
            out.split_whitespace().next(),
            Some(vip.to_string().as_str()),
            "{name}: {out}"
        );
    }
    let before = capture_counters(&ha);

    // 1. HTTP: an unmodified curl by name reaches the ratings app on the other host.
    let mark = marker("names");
    let out = curl(
        &ha,
        &format!("http://ratings:9080/{mark}"),
        &[&format!("x-marker: {mark}")],
    );
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "{out}\n{}",
        mesh.sidecar_log(APP_HOST.0)
    );
    assert!(out.contains(&format!("ratings answered /{mark}")), "{out}");
    // The protected side: the ratings app received exactly this request, once...
    let ratings_log = mesh.apps["ratings"].log_text();
    assert_eq!(
        ratings_log.matches(&format!("REQ /{mark} {mark}")).count(),
        1,
        "{ratings_log}"
    );
    // ...and its sidecar took it from productpage's identity, over mTLS.
    let hr_admin = mesh.admin(RATINGS.host.0);
    let inbound = counter(
        hr_admin,
        "trellis_requests_total",
        &[
            ("direction", "inbound"),
            ("service", "ratings"),
            ("source", PRODUCTPAGE_ID),
            ("mtls", "true"),
            ("code", "200"),
        ],
    )
    .await;
    assert_eq!(
        inbound, 1.0,
        "ratings' sidecar saw productpage's request over mTLS"
    );
    let after_curl = capture_counters(&ha);
    assert_eq!(
        after_curl.0 - before.0,
        1,
        "exactly curl's connection was captured: {before:?} -> {after_curl:?}"
    );

    // 2. TCP: redis-cli by name, unchanged, to a real redis-server on the cache host.
    let value = marker("value");
    let (ok, out, err) = try_exec(
        &ha,
        &["redis-cli", "-h", "cache", "-p", "6379", "SET", "k", &value],
    );
    assert!(
        ok && out.trim() == "OK",
        "SET through the mesh: {out} {err}\n{}",
        mesh.sidecar_log(APP_HOST.0)
    );
    let (ok, out, err) = try_exec(&ha, &["redis-cli", "-h", "cache", "-p", "6379", "GET", "k"]);
    assert!(
        ok && out.trim() == value,
        "GET through the mesh: {out} {err}"
    );
    // The protected side: redis itself holds the value (asked on its own loopback)...
    let hk = mesh.host(CACHE.host.0);
    let (ok, out, err) = try_exec(
        &hk,
        &["redis-cli", "-h", "127.0.0.1", "-p", "6379", "GET", "k"],
    );
    assert!(
        ok && out.trim() == value,
        "redis holds what the app set: {out} {err}"
    );
    // ...and the cache's sidecar carried two opaque TCP streams from productpage.
    let streams = counter(
        mesh.admin(CACHE.host.0),
        "trellis_tcp_streams_opened_total",
        &[
            ("direction", "inbound"),
            ("service", "cache"),
            ("source", PRODUCTPAGE_ID),
        ],
    )
    .await;
    assert_eq!(
        streams, 2.0,
        "the cache's sidecar took SET and GET from productpage over mTLS"
    );
    let after_redis = capture_counters(&ha);
    assert_eq!(
        after_redis.0 - after_curl.0,
        2,
        "exactly redis-cli's two connections were captured: {after_curl:?} -> {after_redis:?}"
    );

    // 3. gRPC: a grpcio client of `grpc-svc:50051`, unchanged.
    let payload = marker("grpc");
    let (ok, out, err) = try_exec(
        &ha,
        &["python3", "-c", GRPC_CLIENT_PY, "grpc-svc:50051", &payload],
    );
    assert!(
        ok && out.trim() == format!("OK {payload}"),
        "the gRPC echo through the mesh: {out} {err}\n{}",
        mesh.sidecar_log(APP_HOST.0)
    );
    let grpc_ok = counter(
        mesh.admin(GRPC.host.0),
        "trellis_requests_total",
        &[
            ("direction", "inbound"),
            ("service", "grpc-svc"),
            ("source", PRODUCTPAGE_ID),
            ("mtls", "true"),
            ("grpc_status", "0"),
        ],
    )
    .await;
    assert_eq!(
        grpc_ok, 1.0,
        "grpc-svc's sidecar answered productpage's call over mTLS"
    );
    let after_grpc = capture_counters(&ha);
    assert_eq!(
        after_grpc.0 - after_redis.0,
        1,
        "exactly grpcio's connection was captured: {after_redis:?} -> {after_grpc:?}"
    );

    // 4. A server-first protocol: the client sends nothing and still gets the app's greeting
    // through both sidecars (the outbound side reads nothing first on a port declared `tcp`,
    // and the Strict inbound side gets the peer sidecar's ClientHello at once).
    let (ok, out, err) = try_exec(&ha, &["python3", "-c", SILENT_CLIENT_PY, "mail:2525"]);
    assert!(
        ok && out.trim() == GREETING,
        "the greeting through the mesh: {out} {err}\n{}",
        mesh.sidecar_log(APP_HOST.0)
    );
    // The protected side: the mail host's sidecar carried exactly one connection from
    // productpage's identity to the app (the app's own log also counts its sidecar's probes).
    let streams = counter(
        mesh.admin(MAIL.host.0),
        "trellis_tcp_streams_opened_total",
        &[
            ("direction", "inbound"),
            ("service", "mail"),
            ("source", PRODUCTPAGE_ID),
        ],
    )
    .await;
    assert_eq!(streams, 1.0, "one stream from productpage to the mail app");
    let after_mail = capture_counters(&ha);
    assert_eq!(
        after_mail.0 - after_grpc.0,
        1,
        "exactly the silent client's connection was captured: {after_grpc:?} -> {after_mail:?}"
    );

    // 6. The proxy's own upstream connections (one per service at least) left by the mark rule
    // and were never captured again: the capture counts above are the app's connections only.
    assert!(
        after_mail.1 - before.1 >= 4,
        "the proxy's upstream connections to the four services passed the mark rule: \
         {before:?} -> {after_mail:?}"
    );
    let captured_into_mesh = counter(
        mesh.admin(APP_HOST.0),
        "trellis_tcp_connections_opened_total",
        &[("direction", "outbound")],
    )
    .await;
    assert_eq!(
        captured_into_mesh, after_mail.0 as f64,
        "every connection the capture listener took was one the rules redirected"
    );
    mesh.assert_control_streams_intact();
}

/// One TCP segment seen on the wire.
struct Segment {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: Vec<u8>,
}

/// The frames of a sniffer's capture file (each prefixed by its 4-byte big-endian length).
fn read_frames(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read the capture");
    let (mut frames, mut at) = (Vec::new(), 0);
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let end = (at + 4 + len).min(bytes.len());
        frames.push(bytes[at + 4..end].to_vec());
        at = end;
    }
    frames
}

/// The TCP segment in an Ethernet frame carrying IPv4, if it is one.
fn tcp_segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if ip[0] >> 4 != 4 || ip[9] != 6 || ihl < 20 || total < ihl + 20 {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp = &ip[ihl..total];
    let offset = usize::from(tcp[12] >> 4) * 4;
    if offset < 20 || offset > tcp.len() {
        return None;
    }
    Some(Segment {
        src: (src, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: (dst, u16::from_be_bytes([tcp[2], tcp[3]])),
        payload: tcp[offset..].to_vec(),
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn bytes_between_the_hosts_are_tls() {
    let mesh = Mesh::start("capture-mesh-tls", &[(APP_HOST, "productpage")], &[RATINGS]).await;
    let (ha, hr) = (mesh.host(APP_HOST.0), mesh.host(RATINGS.host.0));

    // A sniffer on the ratings host's interface, from before the first request to ratings.
    let (capture, stop) = (mesh.dir.join("hr.pcap"), mesh.dir.join("hr.sniff-stop"));
    let mut sniffer = hr.spawn_program(
        &mesh.dir,
        "sniffer",
        "python3",
        &[
            "-c",
            SNIFFER_PY,
            netns::HOST_IF,
            &capture.display().to_string(),
            &stop.display().to_string(),
            "120",
        ],
    );
    sniffer.wait_log("sniffing", Duration::from_secs(20)).await;

    // The unmodified app carries a secret in its path and a header; the app receives it.
    let secret = marker("secret");
    let out = curl(
        &ha,
        &format!("http://ratings:9080/{secret}"),
        &[&format!("x-marker: {secret}")],
    );
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "{out}\n{}",
        mesh.sidecar_log(APP_HOST.0)
    );
    let app_log = mesh.apps["ratings"].log_text();
    assert!(
        app_log.contains(&format!("REQ /{secret} {secret}")),
        "the ratings app received the secret: {app_log}"
    );

    // A control: the same kind of request sent in cleartext to the ratings host from outside
    // the mesh. It crosses the same interface (and Strict mTLS refuses it).
    let cleartext = marker("cleartext");
    let refused_before = counter(
        mesh.admin(RATINGS.host.0),
        "trellis_inbound_tls_connections_total",
        &[("result", "plaintext-refused")],
    )
    .await;
    let _ = Command::new("curl")
        .args(["-sS", "-m", "10", "--noproxy", "*", "-H"])
        .arg(format!("x-marker: {cleartext}"))
        .arg(format!("http://{}:{}/{cleartext}", hr.addr, RATINGS.port))
        .output()
        .expect("run curl");
    let refused = counter(
        mesh.admin(RATINGS.host.0),
        "trellis_inbound_tls_connections_total",
        &[("result", "plaintext-refused")],
    )
    .await;
    assert_eq!(
        refused - refused_before,
        1.0,
        "Strict refused the plaintext caller"
    );
    assert!(
        !mesh.apps["ratings"].log_text().contains(&cleartext),
        "nothing of the plaintext caller reached the app"
    );

    std::fs::write(&stop, b"").expect("write the stop file");
    sniffer.wait_log("done", Duration::from_secs(20)).await;
    let frames = read_frames(&capture);
    let everything: Vec<u8> = frames.concat();
    assert!(
        contains(&everything, cleartext.as_bytes()),
        "the sniffer sees cleartext when there is some ({} frames)",
        frames.len()
    );
    assert!(
        !contains(&everything, secret.as_bytes()),
        "the secret crossed the wire in cleartext"
    );

    // The hop from the app host to the ratings sidecar: a TLS handshake, then TLS application
    // data records (0x17 0x03 0x03) both ways.
    let hop: Vec<Segment> = frames
        .iter()
        .filter_map(|f| tcp_segment(f))
        .filter(|s| !s.payload.is_empty())
        .filter(|s| {
            (s.src.0 == ha.addr && s.dst == (hr.addr, INBOUND_PORT))
                || (s.src == (hr.addr, INBOUND_PORT) && s.dst.0 == ha.addr)
        })
        .collect();
    let to_hr: Vec<&Segment> = hop.iter().filter(|s| s.src.0 == ha.addr).collect();
    let from_hr: Vec<&Segment> = hop.iter().filter(|s| s.src.0 == hr.addr).collect();
    assert!(
        to_hr
            .first()
            .is_some_and(|s| s.payload.starts_with(&[0x16, 0x03])),
        "the hop opens with a TLS handshake record ({} segments to hr)",
        to_hr.len()
    );
    for (dir, segs) in [("to", &to_hr), ("from", &from_hr)] {
        assert!(
            segs.iter()
                .any(|s| contains(&s.payload, &[0x17, 0x03, 0x03])),
            "TLS application data {dir} the ratings host ({} segments)",
            segs.len()
        );
    }
    // And that hop is where the request went: ratings' sidecar counts it from productpage,
    // over mTLS.
    let inbound = counter(
        mesh.admin(RATINGS.host.0),
        "trellis_requests_total",
        &[
            ("direction", "inbound"),
            ("source", PRODUCTPAGE_ID),
            ("mtls", "true"),
            ("code", "200"),
        ],
    )
    .await;
    assert_eq!(inbound, 1.0);
    mesh.assert_control_streams_intact();
}

#[tokio::test]
async fn a_denied_caller_gets_403_and_the_app_receives_nothing() {
    let mesh = Mesh::start(
        "capture-mesh-deny",
        &[(APP_HOST, "productpage"), (OTHER_CALLER, "reviews")],
        &[RATINGS],
    )
    .await;
    let (ha, hb) = (mesh.host(APP_HOST.0), mesh.host(OTHER_CALLER.0));
    let app = &mesh.apps["ratings"];
    let requests = |log: &str| log.lines().filter(|l| l.starts_with("REQ ")).count();

    // Before the policy, productpage gets through.
    let first = marker("allowed");
    let out = curl(
        &ha,
        &format!("http://ratings:9080/{first}"),
        &[&format!("x-marker: {first}")],
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(requests(&app.log_text()), 1, "{}", app.log_text());

    // Deny productpage's identity on ratings; everyone else stays allowed.
    let policy = format!(
        "apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-no-productpage}}
spec:
  service: ratings
  defaultAction: Allow
  rules:
    - {{name: no-productpage, action: Deny, from: {{principals: [\"{PRODUCTPAGE_ID}\"]}}}}
"
    );
    let policy_path = mesh.dir.join("policy.yaml");
    common::write_config(&policy_path, &policy);
    cli(
        &mesh.control_url,
        &["apply", "-f", &policy_path.display().to_string()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    mesh.wait_config(RATINGS.host.0, "the authorization policy", |c| {
        c["inbound"]["authorizationPolicies"] == true
    })
    .await;

    const DENIED: usize = 3;
    let mut denied = Vec::new();
    for _ in 0..DENIED {
        let m = marker("denied");
        let out = curl(
            &ha,
            &format!("http://ratings:9080/{m}"),
            &[&format!("x-marker: {m}")],
        );
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.trim().eq_ignore_ascii_case("trellis-error: denied")),
            "{out}"
        );
        denied.push(m);
    }
    // Another caller is not denied.
    let other = marker("reviews");
    let out = curl(
        &hb,
        &format!("http://ratings:9080/{other}"),
        &[&format!("x-marker: {other}")],
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // The protected side: the app received productpage's first request and reviews' request,
    // and none of the denied ones...
    let log = app.log_text();
    assert_eq!(requests(&log), 2, "{log}");
    assert!(log.contains(&format!("REQ /{other} {other}")), "{log}");
    for m in &denied {
        assert!(
            !log.contains(m.as_str()),
            "a denied request reached the app: {log}"
        );
    }
    // ...and its sidecar counted each denial, by the policy, for productpage's identity.
    let hr_admin = mesh.admin(RATINGS.host.0);
    let decisions = counter(
        hr_admin,
        "trellis_authorization_decisions_total",
        &[("decision", "denied"), ("policy", "ratings-no-productpage")],
    )
    .await;
    let forbidden = counter(
        hr_admin,
        "trellis_requests_total",
        &[
            ("direction", "inbound"),
            ("source", PRODUCTPAGE_ID),
            ("code", "403"),
            ("reason", "denied"),
        ],
    )
    .await;
    let reviews_ok = counter(
        hr_admin,
        "trellis_requests_total",
        &[
            ("direction", "inbound"),
            ("source", REVIEWS_ID),
            ("mtls", "true"),
            ("code", "200"),
        ],
    )
    .await;
    let metrics = get_status(hr_admin, "/metrics").await.unwrap_or_default().1;
    assert_eq!(decisions, DENIED as f64, "{metrics}");
    assert_eq!(forbidden, DENIED as f64, "{metrics}");
    assert_eq!(reviews_ok, 1.0, "{metrics}");
    mesh.assert_control_streams_intact();
}
