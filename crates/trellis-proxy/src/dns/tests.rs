//! The answerer against a real DNS client (hickory-resolver) over UDP and TCP, a real upstream
//! (a tiny authoritative server on loopback), and hostile bytes.
use super::*;
use crate::config::Snapshot;
use crate::settings::{LocalIdentity, Settings};
use crate::state::ProxyState;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;

const MESH: &str = "
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {ports: [{port: 9080}]}
---
apiVersion: trellis.dev/v1
kind: ServiceAddress
metadata: {name: ratings, namespace: shop}
spec: {address: 240.240.0.1}
";

fn state() -> Arc<ProxyState> {
    let identity = LocalIdentity {
        service: "productpage".into(),
        namespace: "shop".into(),
        zone: None,
    };
    let state = ProxyState::new(identity.clone(), Settings::default(), None);
    let set = trellis_api::parse_documents("mesh.yaml", MESH).unwrap();
    let snap = Snapshot::build(1, "test".into(), set, None, &identity).unwrap();
    state.install(snap);
    state
}

/// A stand-in for the host's resolver, on UDP and TCP: answers A for `outside.test` with
/// 192.0.2.7, NXDOMAIN for anything else; counts queries. Ends with the test's runtime.
async fn upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    // The same port number on UDP and TCP; another test may hold the TCP one: pick again.
    let mut pair = None;
    for _ in 0..20 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            pair = Some((socket, addr, tcp));
            break;
        }
    }
    let (socket, addr, tcp) = pair.expect("a port free on both UDP and TCP");
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(r) = respond(&buf[..n]) {
                let _ = socket.send_to(&r, peer).await;
            }
        }
    });
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(Some(q)) = read_framed(&mut s).await {
                if let Some(r) = respond(&q) {
                    let _ = write_framed(&mut s, &r).await;
                }
            }
        }
    });
    (addr, seen)
}

fn respond(bytes: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(bytes).ok()?;
    let mut r = Message::response(q.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(q.queries.clone());
    let query = q.queries.first()?;
    if query.name().to_ascii().trim_end_matches('.') != "outside.test" {
        r.metadata.response_code = ResponseCode::NXDomain;
    } else if query.query_type() == RecordType::A {
        r.add_answer(Record::from_rdata(
            query.name().clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
        ));
    }
    r.to_vec().ok()
}

async fn answerer(upstreams: Vec<SocketAddr>) -> SocketAddr {
    let mut opts = DnsOptions::new("127.0.0.1:0".parse().unwrap(), upstreams);
    opts.timeout = Duration::from_millis(300);
    let server = DnsServer::bind(opts).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run(state(), Drain::new()));
    addr
}

fn client(server: SocketAddr, tcp: bool) -> Resolver<TokioRuntimeProvider> {
    let mut conn = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    conn.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![conn]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    opts.cache_size = 0;
    opts.ndots = 0;
    Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap()
}

async fn ipv4s(r: &Resolver<TokioRuntimeProvider>, name: &str) -> Result<Vec<IpAddr>, String> {
    r.lookup_ip(name)
        .await
        .map(|l| l.iter().collect())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn mesh_names_get_vips_and_other_names_are_relayed_over_udp_and_tcp() {
    let (up, seen) = upstream().await;
    let server = answerer(vec![up]).await;
    let vip: IpAddr = Ipv4Addr::new(240, 240, 0, 1).into();
    for tcp in [false, true] {
        let r = client(server, tcp);
        for name in [
            "ratings.",
            "ratings.shop.",
            "ratings.shop.svc.cluster.local.",
        ] {
            assert_eq!(ipv4s(&r, name).await, Ok(vec![vip]), "{name} tcp={tcp}");
        }
        assert_eq!(
            ipv4s(&r, "outside.test.").await,
            Ok(vec![IpAddr::from(Ipv4Addr::new(192, 0, 2, 7))]),
            "tcp={tcp}"
        );
        let e = ipv4s(&r, "nowhere.test.").await.unwrap_err();
        assert!(
            e.to_lowercase().contains("no record") || e.contains("NXDomain"),
            "{e}"
        );
    }
    // Mesh names never reached the upstream: only the outside names (A and AAAA each, UDP
    // and TCP).
    let asked = seen.load(std::sync::atomic::Ordering::Relaxed);
    assert!((4..=8).contains(&asked), "upstream asked {asked} times");
}

#[tokio::test]
async fn an_upstream_that_never_answers_gives_servfail_in_bounded_time() {
    // A bound socket that never reads: queries to it go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = answerer(vec![silent.local_addr().unwrap()]).await;
    let r = client(server, false);
    let started = std::time::Instant::now();
    let e = ipv4s(&r, "outside.test.").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(e.contains("Server Failure"), "{e}");
    // A mesh name still answers at once.
    assert!(ipv4s(&r, "ratings.").await.is_ok());
}

#[test]
fn garbage_gets_formerr_or_nothing_never_a_panic() {
    let unknown = |_: &str| NameAnswer::Unknown;
    assert_eq!(decide(&[], unknown), Decision::Drop);
    assert_eq!(decide(&[1, 2, 3], unknown), Decision::Drop);
    // A header with QR clear and junk after it: FORMERR addressed to its id.
    let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xff; 20]);
    let Decision::Reply(r) = decide(&junk, unknown) else {
        panic!("expected FORMERR");
    };
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.metadata.id, 0xabcd);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // An answer (QR set) is never answered.
    junk[2] |= 0x80;
    assert_eq!(decide(&junk, unknown), Decision::Drop);
    // Pseudo-random packets of every size: no panic, and never a reply to a reply.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for len in 0..2000usize {
        let mut pkt = Vec::with_capacity(len % 600);
        for _ in 0..len % 600 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pkt.push(x as u8);
        }
        if let Decision::Reply(r) = decide(&pkt, unknown) {
            assert!(pkt[2] & 0x80 == 0, "replied to a reply");
            assert_eq!(r[..2], pkt[..2]);
        }
    }
}

#[tokio::test]
async fn hostile_udp_and_tcp_input_does_not_stop_the_answerer() {
    let (up, _) = upstream().await;
    let server = answerer(vec![up]).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for pkt in [&b""[..], b"\x00", &[0xffu8; 600][..]] {
        s.send_to(pkt, server).await.unwrap();
    }
    // A TCP client announcing 65535 bytes and sending 3, then leaving.
    let mut t = TcpStream::connect(server).await.unwrap();
    t.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    drop(t);
    let r = client(server, false);
    assert_eq!(
        ipv4s(&r, "ratings.").await,
        Ok(vec![IpAddr::from(Ipv4Addr::new(240, 240, 0, 1))])
    );
}

#[test]
fn resolv_conf_nameservers() {
    let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n";
    let got = host_resolvers(text);
    assert_eq!(
        got,
        [
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "[fe80::1]:53".parse().unwrap(),
            "10.0.0.3:53".parse().unwrap(),
        ]
    );
    assert_eq!(
        host_resolvers(""),
        ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
    );
}

#[tokio::test]
async fn relaying_to_itself_is_refused() {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    drop(s);
    let e = DnsServer::bind(DnsOptions::new(addr, vec![addr])).await;
    assert!(matches!(e, Err(DnsError::NoUpstream(_))));
}
