//! On-demand discovery end to end (`trellis proxy --on-demand`), real processes: a caller
//! sidecar starts with nothing but its own config; its first call to a service discovers it and
//! is answered by the service; a name the mesh does not have is `404 no-route` at once; a service
//! deleted while subscribed goes away; and with the control plane gone, a first call to a new
//! service is `503 discovery-timeout` while the services already discovered keep working.
mod common;

use common::mesh::*;
use common::*;
use std::process::Command;

const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: other}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: other-0}
spec: {service: other, address: 127.0.0.1, port: 9}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: later}
spec: {ports: [{port: 80, protocol: http}]}
";

/// The names of the Services a proxy's config holds.
async fn services_held(admin: std::net::SocketAddr) -> Vec<String> {
    let config = config_of(admin).await;
    let mut names: Vec<String> = config["resources"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|r| r["kind"] == "Service")
        .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

fn workloads_held(config: &serde_json::Value) -> usize {
    config["resources"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|r| r["kind"] == "Workload").count())
}

/// A sidecar of `caller` on the control plane at `url` that discovers on demand (2 s wait): the
/// sidecar-only binary, as the scale benchmark measures it.
fn on_demand_caller(
    dir: &std::path::Path,
    url: &str,
    outbound: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    extra: &[String],
) -> Proc {
    let mut args = vec![
        format!("--control={url}"),
        "--node-id=caller".into(),
        "--service=caller".into(),
        format!("--outbound={outbound}"),
        format!("--admin={admin}"),
        "--on-demand".into(),
        "--discovery-timeout=2s".into(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn_program(dir, "caller", PROXY_BIN, &args)
}

#[tokio::test]
async fn first_calls_discover_unknown_names_fail_fast_and_deletions_reach_the_proxy() {
    let dir = tempdir("on-demand");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let mut cp = Some(control(&dir, "control", cp_addr, "embedded"));
    wait_api(cp_addr).await;
    apply(&url, &dir, MESH);
    let web = instance(&dir, &url, "web-0", "v1");
    wait_ready(web.2).await;

    let (outbound, admin) = (free_addr(), free_addr());
    let _caller = on_demand_caller(&dir, &url, outbound, admin, &[]);
    wait_ready(admin).await;
    // Nothing but its own: no other service, no endpoint of anyone.
    assert!(
        services_held(admin).await.is_empty(),
        "{:?}",
        services_held(admin).await
    );
    let config = config_of(admin).await;
    assert_eq!(workloads_held(&config), 0, "{}", config["resources"]);

    let client = http1();
    // The first call discovers web and reaches it.
    let a = get(&client, outbound, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 200, "{} {:?}", a.body, a.header("trellis-error"));
    assert_eq!(services_held(admin).await, ["web"], "only what was called");
    for _ in 0..20 {
        let a = get(&client, outbound, Some("web"), "/", &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    // A name the mesh does not have: no-route, as on a proxy holding everything.
    let a = get(&client, outbound, Some("nope"), "/", &[]).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.header("trellis-error"), Some("no-route"));
    assert_eq!(services_held(admin).await, ["web"]);

    // Deleting web while subscribed takes it (and its endpoint) away.
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .env("TRELLIS_CONTROL", &url)
        .args(["delete", "Service", "web"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !services_held(admin).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "web still held after its deletion"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let a = get(&client, outbound, Some("web"), "/", &[]).await;
    assert_eq!(a.status, 404, "{}", a.body);

    // Discover other, then lose the control plane: other stays (its endpoint refuses, so
    // the answer is the proxy's, not a discovery one), a new name times out with its reason.
    let a = get(&client, outbound, Some("other"), "/", &[]).await;
    assert_ne!(a.header("trellis-error"), Some("no-route"), "{}", a.body);
    assert_ne!(
        a.header("trellis-error"),
        Some("discovery-timeout"),
        "{}",
        a.body
    );
    if let Some(p) = cp.take() {
        kill9(p);
    }
    let a = get(&client, outbound, Some("later"), "/", &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(
        a.header("trellis-error"),
        Some("discovery-timeout"),
        "{}",
        a.body
    );
    let a = get(&client, outbound, Some("other"), "/", &[]).await;
    assert_ne!(
        a.header("trellis-error"),
        Some("discovery-timeout"),
        "{}",
        a.body
    );
    assert!(services_held(admin).await.contains(&"other".to_string()));
}

/// A DNS query for `name`, type A, as any stub resolver sends it (id 0x7e11, recursion desired).
fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x7e, 0x11, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The rcode and the IPv4 addresses of the A records in a reply to [`a_query`].
fn a_answers(reply: &[u8], query: &[u8]) -> (u8, Vec<std::net::Ipv4Addr>) {
    assert!(reply.len() >= query.len(), "short reply {reply:?}");
    assert_eq!(reply[..2], query[..2], "the reply is to this query");
    let rcode = reply[3] & 0x0f;
    let count = u16::from_be_bytes([reply[6], reply[7]]);
    // The question is echoed; answers follow with a compressed name pointer (2 bytes).
    let mut at = query.len();
    let mut out = Vec::new();
    for _ in 0..count {
        let (kind, len) = (
            u16::from_be_bytes([reply[at + 2], reply[at + 3]]),
            u16::from_be_bytes([reply[at + 10], reply[at + 11]]) as usize,
        );
        if kind == 1 && len == 4 {
            let d = &reply[at + 12..at + 16];
            out.push(std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]));
        }
        at += 12 + len;
    }
    (rcode, out)
}

/// A stand-in for the host's resolver: NXDOMAIN for everything, counting the queries.
async fn host_resolver() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80; // an answer
            r[3] = (r[3] & 0xf0) | 3; // NXDOMAIN
            let _ = socket.send_to(&r, peer).await;
        }
    });
    (addr, seen)
}

async fn ask(dns: std::net::SocketAddr, name: &str) -> (u8, Vec<std::net::Ipv4Addr>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let query = a_query(name);
    for _ in 0..3 {
        socket.send_to(&query, dns).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let wait = std::time::Duration::from_secs(5);
        if let Ok(Ok((n, _))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            return a_answers(&buf[..n], &query);
        }
    }
    panic!("no DNS answer for {name} from {dns}");
}

/// An app behind a sidecar that discovers on demand resolves a service's name before its first
/// call: the lookup is that first call. The sidecar discovers the service and answers its VIP;
/// a name that is no service goes to the host's resolver, as any name outside the mesh.
#[tokio::test]
async fn on_demand_sidecars_discover_the_services_their_apps_look_up() {
    let dir = tempdir("on-demand-dns");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(&url, &dir, MESH);
    let (resolver, relayed) = host_resolver().await;

    let (dns, admin) = (free_addr(), free_addr());
    let _caller = on_demand_caller(
        &dir,
        &url,
        free_addr(),
        admin,
        &[format!("--dns={dns}"), format!("--dns-upstream={resolver}")],
    );
    wait_ready(admin).await;
    assert!(services_held(admin).await.is_empty());

    // The name of a service the sidecar has never heard of: discovered, answered with its VIP.
    let (rcode, ips) = ask(dns, "web").await;
    assert_eq!(rcode, 0, "NOERROR");
    assert_eq!(
        services_held(admin).await,
        ["web"],
        "the lookup discovered web"
    );
    let config = config_of(admin).await;
    let vip = config["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "ServiceAddress" && r["metadata"]["name"] == "web")
        .and_then(|r| r["spec"]["address"].as_str())
        .map(|a| a.parse::<std::net::Ipv4Addr>().unwrap())
        .expect("web's ServiceAddress came with it");
    assert_eq!(ips, [vip]);
    assert_eq!(relayed.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Its other names too, now without a round trip.
    assert_eq!(ask(dns, "web.default.svc.cluster.local").await.1, [vip]);

    // Not a service: the host's resolver answers (NXDOMAIN here), and nothing is held for it.
    let (rcode, ips) = ask(dns, "nope").await;
    assert_eq!((rcode, ips.len()), (3, 0));
    assert_eq!(relayed.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A name that cannot be a mesh name goes straight there.
    let (rcode, _) = ask(dns, "www.example.co.uk").await;
    assert_eq!(rcode, 3);
    assert_eq!(relayed.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(services_held(admin).await, ["web"]);
}
