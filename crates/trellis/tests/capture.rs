//! Transparent capture end to end, in network namespaces (one per host, as the chaos suite):
//! an unmodified `curl http://ratings:9080/` on the app host resolves the mesh name through the
//! sidecar's DNS and is carried by captured sidecars to the ratings host; the proxies' own
//! upstream connections pass the mark rule instead of being captured again; a name outside the
//! mesh still resolves through the host's resolver (a tiny DNS server in the test namespace);
//! stopping a proxy removes every rule it added (`iptables-save` before and after), and after
//! a `kill -9` the rules stay until `trellis intercept-remove` (or the next start) clears them.
//!
//! Needs root, `ip`, `iptables` (nft), `curl`, `getent` and `python3` (scripts/test.sh).
mod common;
mod netns;

use netns::{lock_suite, Host, NsProc, NsResolvConf, Topology, BIN};
use std::path::Path;
use std::time::Duration;

const APP_HOST: (&str, u8) = ("ha", 21);
const RATINGS_HOST: (&str, u8) = ("hr", 22);
const VIP: &str = "240.240.0.1";
const ADMIN_PORT: u16 = 15000;
const INBOUND_PORT: u16 = 15006;
const DNS_PORT: u16 = 15053;
/// The host resolver's answer for any name outside the mesh.
const OUTSIDE_ANSWER: &str = "192.0.2.55";

/// A resolver for the app host: answers every A query with OUTSIDE_ANSWER. Python's standard
/// library only; runs until killed.
const RESOLVER_PY: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("resolver listening", flush=True)
while True:
    q, peer = s.recvfrom(512)
    if len(q) < 12:
        continue
    i = 12
    while i < len(q) and q[i] != 0:
        i += 1 + q[i]
    question = q[12:i + 5]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0] if i + 3 <= len(q) else 0
    answers = 1 if qtype == 1 else 0
    r = q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, answers, 0, 0) + question
    if answers:
        r += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(sys.argv[2])
    s.sendto(r, peer)
"#;

fn config(topo: &Topology) -> String {
    let ratings = topo.host(RATINGS_HOST.0).addr;
    format!(
        "apiVersion: trellis.dev/v1
kind: Service
metadata: {{name: ratings}}
spec: {{ports: [{{port: 9080, protocol: http}}]}}
---
apiVersion: trellis.dev/v1
kind: ServiceAddress
metadata: {{name: ratings}}
spec: {{address: {VIP}}}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {{name: ratings-0}}
spec: {{service: ratings, address: {ratings}, port: {INBOUND_PORT}, appPort: 9080}}
"
    )
}

/// `iptables-save` of a host without counters and comments: what rules exist.
fn rules(host: &Host) -> String {
    netns::rule_text(&host.exec(&["iptables-save"]))
}

fn sidecar(host: &Host, dir: &Path, config: &Path, label: &str, extra: &[String]) -> NsProc {
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        format!("--admin={}:{ADMIN_PORT}", host.addr),
        "--intercept".into(),
        "--watch-interval=100ms".into(),
    ];
    args.extend_from_slice(extra);
    host.spawn(dir, label, &args)
}

/// A plain HTTP server outside the mesh: counts the connections that reach it and answers each
/// `200 ok`. On a thread of its own: the test blocks its runtime while `ip netns exec` runs.
struct OutsideServer {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl OutsideServer {
    fn start(ip: std::net::Ipv4Addr) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        // Ends with the test process (the listener is only reachable from this test's network).
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Self { addr, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn unmodified_curl_by_name_through_captured_sidecars() {
    let _lock = lock_suite(Duration::from_secs(400)).await;
    let topo = Topology::create(&[APP_HOST, RATINGS_HOST]);
    let dir = common::tempdir("capture");
    let config_path = dir.join("mesh.yaml");
    common::write_config(&config_path, &config(&topo));
    let (ha, hr) = (
        topo.host(APP_HOST.0).clone(),
        topo.host(RATINGS_HOST.0).clone(),
    );
    let _resolv = NsResolvConf::write(&ha.ns, ha.addr);
    // A real host has a default route; these namespaces have none, so the VIP range gets one
    // (a SYN to an unroutable address fails before the capture rule could see it).
    ha.exec(&[
        "ip",
        "route",
        "add",
        "240.240.0.0/16",
        "dev",
        netns::HOST_IF,
    ]);
    // Rules of someone else's in the same chains: capture must leave them exactly as they are.
    for h in [&ha, &hr] {
        h.exec(&[
            "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j",
            "RETURN",
        ]);
        h.exec(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "9998",
            "-j",
            "RETURN",
        ]);
    }
    let before = (rules(&ha), rules(&hr));
    assert!(before.0.contains("--dport 9999"), "{}", before.0);

    // The app host's resolver, and the ratings app behind its sidecar (loopback only).
    let resolver_log = dir.join("resolver.log");
    let mut resolver = std::process::Command::new("ip")
        .args(["netns", "exec", &ha.ns, "python3", "-c", RESOLVER_PY])
        .arg(ha.addr.to_string())
        .arg(OUTSIDE_ANSWER)
        .stdout(std::fs::File::create(&resolver_log).unwrap())
        .stderr(std::fs::File::create(dir.join("resolver.err")).unwrap())
        .spawn()
        .expect("start the test resolver");
    for _ in 0..400 {
        if std::fs::read_to_string(&resolver_log).is_ok_and(|t| t.contains("resolver listening")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut app = hr.spawn(
        &dir,
        "hr-app",
        &[
            "demo-app".into(),
            "--listen=127.0.0.1:9080".into(),
            "--name=ratings".into(),
            "--instance=hr".into(),
        ],
    );
    app.wait_log("listening on", Duration::from_secs(20)).await;
    let mut hr_proxy = sidecar(
        &hr,
        &dir,
        &config_path,
        "hr-proxy",
        &[
            "--service=ratings".into(),
            format!("--inbound=0.0.0.0:{INBOUND_PORT}"),
            "--app=127.0.0.1:9080".into(),
        ],
    );
    let mut ha_proxy = sidecar(
        &ha,
        &dir,
        &config_path,
        "ha-proxy",
        &[
            "--service=productpage".into(),
            format!("--dns=127.0.0.1:{DNS_PORT}"),
            format!("--dns-upstream={}", ha.addr),
        ],
    );
    for (p, host) in [(&mut hr_proxy, &hr), (&mut ha_proxy, &ha)] {
        p.wait_log("capture rules installed", Duration::from_secs(20))
            .await;
        common::wait_ready(std::net::SocketAddr::new(host.addr.into(), ADMIN_PORT)).await;
    }
    assert!(rules(&ha).contains("TRELLIS_OUTPUT"), "{}", rules(&ha));

    // The app, unchanged: a name and a port, nothing about the mesh.
    let out = ha.exec(&["curl", "-sS", "-i", "-m", "10", "http://ratings:9080/"]);
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "{out}\n{}",
        ha_proxy.log_text()
    );
    assert!(
        out.contains("hr"),
        "answered by the ratings instance: {out}"
    );
    assert_eq!(
        ha.exec(&["getent", "ahostsv4", "ratings"])
            .split_whitespace()
            .next(),
        Some(VIP)
    );

    // One captured connection (curl's) and the proxy's own connection to hr let out by mark.
    let c = netns::capture_chain_counters(&ha);
    let redirected: u64 = c
        .iter()
        .filter(|(_, r)| r.contains("redir ports 15002"))
        .map(|(n, _)| n)
        .sum();
    let marked: u64 = c
        .iter()
        .filter(|(_, r)| r.contains("mark match 0x1337"))
        .map(|(n, _)| n)
        .sum();
    assert_eq!(
        redirected, 1,
        "only the app's connection was captured: {c:#?}"
    );
    assert!(
        marked >= 1,
        "the proxy's own upstream passed the mark rule: {c:#?}"
    );

    // A name outside the mesh resolves through the host's resolver, via the sidecar.
    let outside = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ha.ns,
            "getent",
            "ahostsv4",
            "example.test",
        ])
        .output()
        .expect("run getent");
    let outside = String::from_utf8_lossy(&outside.stdout).into_owned();
    if outside.is_empty() {
        panic!(
            "example.test did not resolve; resolver: {} {}\nproxy: {}",
            std::fs::read_to_string(&resolver_log).unwrap_or_default(),
            std::fs::read_to_string(dir.join("resolver.err")).unwrap_or_default(),
            ha_proxy.log_text()
        );
    }
    assert_eq!(
        outside.split_whitespace().next(),
        Some(OUTSIDE_ANSWER),
        "{outside}"
    );
    let dns_captured: u64 = netns::capture_chain_counters(&ha)
        .iter()
        .filter(|(_, r)| r.contains("udp dpt:53"))
        .map(|(n, _)| *n)
        .sum();
    assert!(dns_captured >= 2, "the app's DNS went to the sidecar");

    // Inbound capture: the ratings app listens on loopback only, yet a caller outside the mesh
    // reaching hr:9080 is carried to it through the sidecar's inbound listener.
    let direct = std::process::Command::new("curl")
        .args([
            "-sS",
            "-i",
            "-m",
            "10",
            &format!("http://{}:9080/", hr.addr),
        ])
        .output()
        .expect("run curl");
    let direct = String::from_utf8_lossy(&direct.stdout).into_owned();
    assert!(
        direct.starts_with("HTTP/1.1 200"),
        "{direct}\n{}",
        hr_proxy.log_text()
    );

    // Egress: a server outside the mesh (the test process, on the bridge). With the default
    // policy the app reaches it through the sidecar unchanged; under RegistryOnly an HTTP call
    // is answered 502 egress-denied and other bytes are closed, and the server sees nothing.
    let outside = OutsideServer::start(topo.root_addr);
    let outside_url = format!("http://{}/", outside.addr);
    let passed = ha.exec(&["curl", "-sS", "-i", "-m", "10", &outside_url]);
    assert!(passed.starts_with("HTTP/1.1 200"), "{passed}");
    assert_eq!(outside.connections(), 1, "AllowAny passes it through");
    let ha_admin = std::net::SocketAddr::new(ha.addr.into(), ADMIN_PORT);
    let applied = || {
        common::counter(
            ha_admin,
            "trellis_config_reloads_total",
            &[("result", "applied")],
        )
    };
    let reloads = applied().await;
    common::write_config(
        &config_path,
        &format!(
            "{}---\napiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{outboundTrafficPolicy: {{mode: RegistryOnly}}}}\n",
            config(&topo)
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while applied().await <= reloads {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            ha_proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = ha.exec(&["curl", "-sS", "-i", "-m", "10", &outside_url]);
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    assert!(
        refused.contains("trellis-error: egress-denied"),
        "{refused}"
    );
    let tcp = ha.exec(&[
        "python3",
        "-c",
        "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); s.sendall(b'hello'); print(len(s.recv(100)))",
        &outside.addr.ip().to_string(),
        &outside.addr.port().to_string(),
    ]);
    assert_eq!(
        tcp.trim(),
        "0",
        "opaque bytes to the outside: closed, nothing answered"
    );
    assert_eq!(
        outside.connections(),
        1,
        "nothing reached the outside server"
    );
    let denied_http = common::counter(
        ha_admin,
        "trellis_egress_denied_total",
        &[("protocol", "http")],
    )
    .await;
    let denied_tcp = common::counter(
        ha_admin,
        "trellis_egress_denied_total",
        &[("protocol", "tcp")],
    )
    .await;
    assert_eq!((denied_http, denied_tcp), (1.0, 1.0));
    // The mesh itself is still reachable by name.
    let out = ha.exec(&["curl", "-sS", "-i", "-m", "10", "http://ratings:9080/"]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // Stopping removes every rule it added.
    for (p, host, was) in [
        (&mut ha_proxy, &ha, &before.0),
        (&mut hr_proxy, &hr, &before.1),
    ] {
        let status = p.terminate(Duration::from_secs(40));
        assert!(
            status.is_some_and(|s| s.success()),
            "{}: {:?}",
            p.label,
            status
        );
        assert_eq!(&rules(host), was, "{}: rules left behind", p.label);
    }

    // kill -9 leaves them; intercept-remove (or the next start) clears them.
    let mut killed = sidecar(
        &ha,
        &dir,
        &config_path,
        "ha-proxy-2",
        &["--service=productpage".into()],
    );
    killed
        .wait_log("capture rules installed", Duration::from_secs(20))
        .await;
    killed.kill9();
    assert!(rules(&ha).contains("TRELLIS_OUTPUT"));
    ha.exec(&[BIN, "intercept-remove"]);
    assert_eq!(
        rules(&ha),
        before.0,
        "intercept-remove cleared the leftovers"
    );

    let _ = resolver.kill();
    let _ = resolver.wait();
    drop(app);
}
