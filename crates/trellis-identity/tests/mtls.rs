//! Mesh mTLS over real loopback TCP: who is accepted, who is refused, and rotation of
//! certificates and roots without a failed request.
mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use trellis_identity::ca::{CertificateAuthority, RootOptions};
use trellis_identity::rustls;
use trellis_identity::tls::{self, ClientConfigs};
use trellis_identity::WorkloadKey;

#[tokio::test]
async fn mutual_tls_succeeds_and_both_sides_see_the_peer_identity() {
    let ca = new_ca();
    let server = Peer::new(&ca, "reviews");
    let client = Peer::new(&ca, "productpage");
    let mut srv = echo_server(server.server_config()).await;
    let stream = connect(client.client_config(Some("reviews")), srv.addr)
        .await
        .expect("handshake");
    let accepted = srv.next().await.expect("server accepted");
    assert_eq!(accepted.identity, Some(id("productpage")));
    assert_eq!(tls::peer_identity(stream.get_ref().1), Some(id("reviews")));
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // Without an expected identity any mesh identity is accepted.
    connect(client.client_config(None), srv.addr).await.unwrap();
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let ca = new_ca();
    let server = Peer::new(&ca, "ratings");
    let client = Peer::new(&ca, "productpage");
    let srv = echo_server(server.server_config()).await;
    let err = connect(client.client_config(Some("reviews")), srv.addr)
        .await
        .expect_err("wrong identity must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("peer is spiffe://cluster.local/ns/default/sa/ratings, expected spiffe://cluster.local/ns/default/sa/reviews"),
        "{msg}"
    );
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let ca = new_ca();
    let server = Peer::new(&ca, "reviews");
    let mut srv = echo_server(server.server_config()).await;
    let cfg = raw_client(None, &[&rustls::version::TLS13]);
    assert!(connect(cfg, srv.addr).await.is_err());
    let err = srv.next().await.expect_err("server must refuse");
    assert!(
        err.contains("no certificate") || err.contains("NoCertificates"),
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_an_expired_client_certificate() {
    let ca = new_ca();
    let server = Peer::new(&ca, "reviews");
    let mut srv = echo_server(server.server_config()).await;
    let key = WorkloadKey::generate().unwrap();
    let now = SystemTime::now();
    let expired = ca
        .sign_csr_with_validity(
            &key.csr_pem(&id("productpage")).unwrap(),
            &id("productpage"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let cfg = raw_client(Some((&expired, &key)), &[&rustls::version::TLS13]);
    assert!(connect(cfg, srv.addr).await.is_err());
    let err = srv.next().await.expect_err("server must refuse");
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn client_refuses_an_expired_server_certificate() {
    let ca = new_ca();
    let client = Peer::new(&ca, "productpage");
    let key = WorkloadKey::generate().unwrap();
    let now = SystemTime::now();
    let expired = ca
        .sign_csr_with_validity(
            &key.csr_pem(&id("reviews")).unwrap(),
            &id("reviews"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(1),
        )
        .unwrap();
    let srv = echo_server(raw_server(&expired, &key)).await;
    let err = connect(client.client_config(Some("reviews")), srv.addr)
        .await
        .expect_err("expired server certificate must be refused");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn certificates_from_an_untrusted_ca_are_refused_both_ways() {
    let ca = new_ca();
    let rogue = new_ca(); // same trust domain, different root
    let server = Peer::new(&ca, "reviews");
    let mut srv = echo_server(server.server_config()).await;

    // A client with a rogue certificate (it trusts the real CA, so only the server can object).
    let intruder = Peer::new(&rogue, "productpage");
    intruder.trust.update(ca.trust_bundle()).unwrap();
    assert!(connect(intruder.client_config(Some("reviews")), srv.addr)
        .await
        .is_err());
    let err = srv.next().await.expect_err("server must refuse");
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );

    // A rogue server claiming to be reviews.
    let (bundle, key) = issue(&rogue, "reviews");
    let fake = echo_server(raw_server(&bundle, &key)).await;
    let client = Peer::new(&ca, "productpage");
    let err = connect(client.client_config(Some("reviews")), fake.addr)
        .await
        .expect_err("client must refuse");
    assert!(
        err.to_string().contains("UnknownIssuer") || err.to_string().contains("unknown issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tls12_only_client_is_refused() {
    let ca = new_ca();
    let server = Peer::new(&ca, "reviews");
    let mut srv = echo_server(server.server_config()).await;
    let (bundle, key) = issue(&ca, "productpage");
    let cfg = raw_client(Some((&bundle, &key)), &[&rustls::version::TLS12]);
    assert!(connect(cfg, srv.addr).await.is_err());
    let err = srv.next().await.expect_err("server must refuse TLS 1.2");
    assert!(
        err.contains("Tls12") || err.to_lowercase().contains("version"),
        "{err}"
    );
}

#[tokio::test]
async fn csr_with_a_forged_san_yields_only_the_granted_identity() {
    let ca = new_ca();
    let server = Peer::new(&ca, "reviews");
    let mut srv = echo_server(server.server_config()).await;
    // The proxy asks for "admin"; its join token grants "productpage".
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&id("admin")).unwrap();
    let bundle = ca
        .sign_csr(&csr, &id("productpage"), Duration::from_secs(600))
        .unwrap();
    let client = Peer::new(&ca, "productpage");
    client.certs.set(&bundle, &key).unwrap();
    assert_eq!(client.certs.identity(), Some(id("productpage")));
    connect(client.client_config(Some("reviews")), srv.addr)
        .await
        .unwrap();
    assert_eq!(srv.next().await.unwrap().identity, Some(id("productpage")));
}

#[tokio::test]
async fn a_user_supplied_intermediate_ca_issues_certificates_that_chain_to_its_root() {
    // Root and intermediate made by "the user" (rcgen directly), loaded into the mesh CA.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.distinguished_name = rcgen::DistinguishedName::new();
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Corp Root");
    root_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let inter_key = rcgen::KeyPair::generate().unwrap();
    let mut inter_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    inter_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    inter_params.distinguished_name = rcgen::DistinguishedName::new();
    inter_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Corp Mesh Intermediate");
    inter_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let inter_cert = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
    let chain_pem = format!("{}{}", inter_cert.pem(), root_cert.pem());

    let ca = CertificateAuthority::from_pem(TD, &chain_pem, &inter_key.serialize_pem()).unwrap();
    assert_eq!(ca.trust_bundle().len(), 1);
    assert_eq!(ca.trust_bundle()[0].as_ref(), root_cert.der().as_ref());
    let (bundle, _) = issue(&ca, "reviews");
    assert_eq!(certs_of(&bundle).len(), 2, "leaf + intermediate");

    let server = Peer::new(&ca, "reviews");
    let client = Peer::new(&ca, "productpage");
    let mut srv = echo_server(server.server_config()).await;
    connect(client.client_config(Some("reviews")), srv.addr)
        .await
        .unwrap();
    assert_eq!(srv.next().await.unwrap().identity, Some(id("productpage")));

    // A chain that does not end in a root, or a key that does not match, is refused.
    assert!(
        CertificateAuthority::from_pem(TD, &inter_cert.pem(), &inter_key.serialize_pem()).is_err()
    );
    let other = rcgen::KeyPair::generate().unwrap();
    assert!(CertificateAuthority::from_pem(TD, &chain_pem, &other.serialize_pem()).is_err());
}

#[tokio::test]
async fn renewal_keeps_open_connections_and_new_handshakes_use_the_new_certificate() {
    let ca = new_ca();
    let server = Peer::new(&ca, "reviews");
    let client = Peer::new(&ca, "productpage");
    let mut srv = echo_server(server.server_config()).await;
    let client_cfg = client.client_config(Some("reviews"));
    let mut long_lived = connect(client_cfg.clone(), srv.addr).await.unwrap();
    let old_server_leaf = server_leaf(&long_lived);
    let old_client_leaf = srv.next().await.unwrap().leaf.unwrap();

    server.renew(&ca, "reviews");
    client.renew(&ca, "productpage");

    // The open connection carries on.
    for _ in 0..3 {
        round_trip(&mut long_lived).await.unwrap();
    }
    // A new handshake (same configs, not rebuilt) presents the new certificates both ways.
    let fresh = connect(client_cfg, srv.addr).await.unwrap();
    let new_server_leaf = server_leaf(&fresh);
    assert_ne!(new_server_leaf, old_server_leaf);
    assert_eq!(Some(new_server_leaf), server.certs.leaf());
    let new_client_leaf = srv.next().await.unwrap().leaf.unwrap();
    assert_ne!(new_client_leaf, old_client_leaf);
    assert_eq!(Some(new_client_leaf), client.certs.leaf());
}

/// Background requests (a new connection each, plus round trips on one long-lived
/// connection) until stopped; `done` counts successes as they happen.
struct Traffic {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Traffic {
    async fn start(configs: Arc<ClientConfigs>, addr: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let mut long_lived = connect(configs.get(Some(&id("reviews"))).unwrap(), addr)
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let cfg = configs.get(Some(&id("reviews"))).unwrap();
                match connect(cfg, addr).await {
                    Ok(_) => {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                if let Err(e) = round_trip(&mut long_lived).await {
                    errors.push(format!("long-lived connection: {e}"));
                }
            }
            errors
        });
        Self { stop, done, task }
    }

    /// Waits until `n` more requests have succeeded (so each phase sees traffic).
    async fn progress(&self, n: usize) {
        let target = self.done.load(Ordering::Relaxed) + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.done.load(Ordering::Relaxed) < target {
            assert!(tokio::time::Instant::now() < deadline, "traffic stalled");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops and returns (successes, errors).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.unwrap();
        (self.done.load(Ordering::Relaxed), errors)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_renewals_lose_no_request() {
    let ca = new_ca();
    let server = Peer::new(&ca, "reviews");
    let client = Peer::new(&ca, "productpage");
    let srv = echo_server(server.server_config()).await;
    let configs = Arc::new(ClientConfigs::new(
        client.certs.clone(),
        client.trust.clone(),
    ));
    let traffic = Traffic::start(configs, srv.addr).await;
    for _ in 0..10 {
        server.renew(&ca, "reviews");
        traffic.progress(1).await;
        client.renew(&ca, "productpage");
        traffic.progress(1).await;
    }
    let (ok, errors) = traffic.finish().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(ok >= 20, "only {ok} requests ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_completes_without_an_outage() {
    let mut ca = new_ca();
    let old_root = ca.active_id().to_string();
    let server = Peer::new(&ca, "reviews");
    let client = Peer::new(&ca, "productpage");
    // Kept aside: material from the old root, to check interop and, at the end, refusal.
    let (old_server_bundle, old_server_key) = issue(&ca, "reviews");
    let old_client = Peer::new(&ca, "productpage");

    let srv = echo_server(server.server_config()).await;
    let configs = Arc::new(ClientConfigs::new(
        client.certs.clone(),
        client.trust.clone(),
    ));
    let traffic = Traffic::start(configs, srv.addr).await;
    let push = |ca: &CertificateAuthority, peers: &[&Peer]| {
        for p in peers {
            p.trust.update(ca.trust_bundle()).unwrap();
        }
    };

    // 1. Add the new root; push the bundle (both roots trusted).
    let new_root = ca.add_root(&RootOptions::default()).unwrap();
    assert_eq!(ca.trust_bundle().len(), 2);
    push(&ca, &[&server, &client, &old_client]);
    traffic.progress(3).await;

    // 2. Activate it; proxies renew one by one, so old- and new-root peers meet.
    ca.activate(&new_root).unwrap();
    server.renew(&ca, "reviews");
    traffic.progress(3).await;
    // Old-root client -> new-root server.
    let mut srv_probe = echo_server(server.server_config()).await;
    connect(old_client.client_config(Some("reviews")), srv_probe.addr)
        .await
        .expect("old-root client and new-root server interoperate during the overlap");
    srv_probe.next().await.unwrap();
    client.renew(&ca, "productpage");
    traffic.progress(3).await;
    // New-root client -> old-root server.
    let old_srv = echo_server(raw_server(&old_server_bundle, &old_server_key)).await;
    connect(client.client_config(Some("reviews")), old_srv.addr)
        .await
        .expect("new-root client and old-root server interoperate during the overlap");

    // 3. Retire the old root once every certificate comes from the new one.
    ca.retire(&old_root).unwrap();
    assert_eq!(ca.trust_bundle().len(), 1);
    push(&ca, &[&server, &client, &old_client]);
    traffic.progress(3).await;
    let (ok, errors) = traffic.finish().await;
    assert!(
        errors.is_empty(),
        "requests failed during the root rotation: {errors:?}"
    );
    assert!(ok >= 12, "only {ok} requests ran");

    // Old-root certificates are refused now, in both directions.
    let mut srv2 = echo_server(server.server_config()).await;
    assert!(
        connect(old_client.client_config(Some("reviews")), srv2.addr)
            .await
            .is_err()
    );
    assert!(srv2.next().await.is_err());
    assert!(connect(client.client_config(Some("reviews")), old_srv.addr)
        .await
        .is_err());
    // And the new setup still works.
    connect(client.client_config(Some("reviews")), srv2.addr)
        .await
        .unwrap();
}

#[test]
fn key_files_are_0600_and_debug_shows_no_key_material() {
    let dir = temp_dir("keys");
    let path = dir.join("workload.key");
    // A pre-existing, world-readable file is replaced, not reused.
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = WorkloadKey::generate().unwrap();
    key.write_pem_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        WorkloadKey::from_pem(&written).unwrap().public_key_spki(),
        key.public_key_spki()
    );
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    let ca = new_ca();
    let state = ca.to_state();
    let peer = Peer::new(&ca, "reviews");
    let dbg = format!(
        "{key:?} {state:?} {ca:?} {:?} {:?}",
        peer.certs,
        key.private_key_pem()
    );
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    for pem in [written.as_str(), state.signers[0].key_pem.expose()] {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!dbg.contains(line), "key material in Debug output");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
