//! Shared helpers: a CA, peers with certificates, a TLS echo server on loopback and a client
//! that proves a handshake with a round trip.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use trellis_identity::ca::{CertBundle, CertificateAuthority, RootOptions};
use trellis_identity::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use trellis_identity::rustls::{self, ClientConfig, ServerConfig};
use trellis_identity::tls::{self, CertSource, TrustSource};
use trellis_identity::tokio_rustls::{client, TlsAcceptor, TlsConnector};
use trellis_identity::{SpiffeId, WorkloadKey};

pub const TD: &str = "cluster.local";

pub fn id(service: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", service).unwrap()
}

pub fn new_ca() -> CertificateAuthority {
    CertificateAuthority::generate(TD, &RootOptions::default()).unwrap()
}

/// A fresh key and a certificate for `service` from `ca`.
pub fn issue(ca: &CertificateAuthority, service: &str) -> (CertBundle, WorkloadKey) {
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&id(service)).unwrap();
    let bundle = ca
        .sign_csr(&csr, &id(service), Duration::from_secs(3600))
        .unwrap();
    (bundle, key)
}

/// A proxy's identity material.
pub struct Peer {
    pub certs: Arc<CertSource>,
    pub trust: Arc<TrustSource>,
}

impl Peer {
    pub fn new(ca: &CertificateAuthority, service: &str) -> Self {
        let certs = Arc::new(CertSource::new());
        let (bundle, key) = issue(ca, service);
        certs.set(&bundle, &key).unwrap();
        let trust = Arc::new(
            TrustSource::new(ca.trust_bundle())
                .unwrap()
                .with_trust_domain(TD),
        );
        Self { certs, trust }
    }

    /// Re-issues this peer's certificate from `ca` (a renewal).
    pub fn renew(&self, ca: &CertificateAuthority, service: &str) {
        let (bundle, key) = issue(ca, service);
        self.certs.set(&bundle, &key).unwrap();
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        tls::server_config(self.certs.clone(), self.trust.clone()).unwrap()
    }

    pub fn client_config(&self, expected: Option<&str>) -> Arc<ClientConfig> {
        tls::client_config(self.certs.clone(), self.trust.clone(), expected.map(id)).unwrap()
    }
}

/// What the server saw of one connection.
#[derive(Debug)]
pub struct Accepted {
    pub identity: Option<SpiffeId>,
    pub leaf: Option<CertificateDer<'static>>,
}

pub struct EchoServer {
    pub addr: SocketAddr,
    pub accepted: mpsc::UnboundedReceiver<Result<Accepted, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    /// The next handshake outcome on the server side.
    pub async fn next(&mut self) -> Result<Accepted, String> {
        tokio::time::timeout(Duration::from_secs(10), self.accepted.recv())
            .await
            .expect("server saw no connection")
            .expect("server stopped")
    }
}

/// A TLS echo server on 127.0.0.1 reporting each handshake's outcome.
pub async fn echo_server(cfg: Arc<ServerConfig>) -> EchoServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(cfg);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut stream) => {
                        let conn = stream.get_ref().1;
                        let _ = tx.send(Ok(Accepted {
                            identity: tls::peer_identity(conn),
                            leaf: conn
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.clone().into_owned()),
                        }));
                        let mut buf = [0u8; 1024];
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    EchoServer {
        addr,
        accepted: rx,
        task,
    }
}

pub type ClientStream = client::TlsStream<TcpStream>;

/// Connects, completes the handshake and proves with an echo that the server accepted it
/// (in TLS 1.3 the client finishes before the server has checked the client's certificate).
pub async fn connect(cfg: Arc<ClientConfig>, addr: SocketAddr) -> io::Result<ClientStream> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("mesh.internal").unwrap();
        let mut stream = TlsConnector::from(cfg).connect(name, tcp).await?;
        round_trip(&mut stream).await?;
        Ok(stream)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

pub async fn round_trip(stream: &mut ClientStream) -> io::Result<()> {
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    if &buf != b"ping" {
        return Err(io::Error::other("bad echo"));
    }
    Ok(())
}

/// The server certificate a client connection saw.
pub fn server_leaf(stream: &ClientStream) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// A verifier that accepts any server: for test clients that must reach the server's checks.
#[derive(Debug)]
pub struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client that presents exactly `chain`/`key` (or nothing), speaks only `versions`, and
/// accepts any server: to test what the *server* refuses.
pub fn raw_client(
    identity: Option<(&CertBundle, &WorkloadKey)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let cfg = match identity {
        Some((bundle, key)) => builder
            .with_client_auth_cert(certs_of(bundle), key.private_key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// A server that presents exactly `chain`/`key` and asks nothing of the client: to test what
/// the *client* refuses.
pub fn raw_server(bundle: &CertBundle, key: &WorkloadKey) -> Arc<ServerConfig> {
    let cfg = ServerConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs_of(bundle), key.private_key_der())
        .unwrap();
    Arc::new(cfg)
}

pub fn certs_of(bundle: &CertBundle) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(bundle.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "trellis-identity-{tag}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u64() -> u64 {
    use std::hash::BuildHasher;
    // RandomState is randomly seeded per instance.
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}
