//! A test CA and what it issues: certificate and key files for `--tls-cert/--tls-key/--tls-trust`,
//! and the PEM/DER forms a raw rustls client in a test needs.
use base64::Engine;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use trellis_identity::ca::RootOptions;
use trellis_identity::rustls;
use trellis_identity::{CertificateAuthority, SpiffeId, WorkloadKey};

/// The trust domain of the test mesh.
pub const TD: &str = "cluster.local";

/// A CA and the files it issues into `dir`.
pub struct Pki {
    pub ca: CertificateAuthority,
    pub dir: PathBuf,
    pub name: &'static str,
}

/// Certificate and key files of one workload, and the DER forms for raw clients.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(dir: &Path, name: &'static str) -> Pki {
        let ca = CertificateAuthority::generate(TD, &RootOptions::default()).expect("CA");
        Pki::with_ca(dir, name, ca)
    }

    fn with_ca(dir: &Path, name: &'static str, ca: CertificateAuthority) -> Pki {
        let pki = Pki {
            ca,
            dir: dir.to_path_buf(),
            name,
        };
        std::fs::write(pki.trust(), pki.ca.trust_bundle_pem()).expect("write trust bundle");
        pki
    }

    /// A CA with this one's root (same certificate, same key) that issues identities in another
    /// trust domain: its certificates chain to the root this CA's peers trust.
    pub fn same_root_other_domain(&self, trust_domain: &str, name: &'static str) -> Pki {
        let mut state = self.ca.to_state();
        state.trust_domain = trust_domain.to_string();
        let ca = CertificateAuthority::from_state(&state).expect("CA in another trust domain");
        Pki::with_ca(&self.dir, name, ca)
    }

    pub fn trust(&self) -> PathBuf {
        self.dir.join(format!("{}-roots.pem", self.name))
    }

    /// A certificate for `service` valid from `from` to `until` (relative to now).
    pub fn issue_window(&self, service: &str, from: i64, until: i64) -> Issued {
        let id = SpiffeId::new(self.ca.trust_domain(), "default", service).expect("id");
        let key = WorkloadKey::generate().expect("key");
        let csr = key.csr_pem(&id).expect("csr");
        let at = |secs: i64| {
            if secs >= 0 {
                SystemTime::now() + Duration::from_secs(secs as u64)
            } else {
                SystemTime::now() - Duration::from_secs((-secs) as u64)
            }
        };
        let bundle = self
            .ca
            .sign_csr_with_validity(&csr, &id, at(from), at(until))
            .expect("sign");
        let stem = format!("{}-{service}-{from}-{until}", self.name);
        let cert = self.dir.join(format!("{stem}.crt"));
        let key_path = self.dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &bundle.cert_chain_pem).expect("write cert");
        key.write_pem_file(&key_path).expect("write key");
        Issued {
            cert,
            key: key_path,
            chain_pem: bundle.cert_chain_pem,
            key_pem: key.private_key_pem().expose().to_string(),
        }
    }

    pub fn issue(&self, service: &str) -> Issued {
        self.issue_window(service, -60, 3600)
    }
}

pub fn tls_args(pki: &Pki, issued: &Issued) -> Vec<String> {
    vec![
        format!("--tls-cert={}", issued.cert.display()),
        format!("--tls-key={}", issued.key.display()),
        format!("--tls-trust={}", pki.trust().display()),
    ]
}

/// A server-certificate verifier that accepts anything: the raw test client checks only what the
/// server does with *its* certificate.
#[derive(Debug)]
pub struct AcceptAnyServer(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client config presenting `issued` and accepting any server certificate.
pub fn client_config(issued: &Issued) -> Arc<rustls::ClientConfig> {
    let provider = trellis_identity::tls::crypto_provider();
    let chain: Vec<_> = rustls_pemfile_certs(&issued.chain_pem);
    let key = rustls::pki_types::PrivateKeyDer::try_from(pem_der(&issued.key_pem, "PRIVATE KEY"))
        .expect("key der");
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    Arc::new(cfg)
}

pub fn pem_der(pem: &str, label: &str) -> Vec<u8> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).expect("pem begin") + begin.len();
    let stop = pem[start..].find(&end).expect("pem end") + start;
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("pem base64")
}

pub fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(i) = rest.find("-----BEGIN CERTIFICATE-----") {
        let block = &rest[i..];
        let end = block.find("-----END CERTIFICATE-----").expect("end") + 25;
        out.push(rustls::pki_types::CertificateDer::from(pem_der(
            &block[..end],
            "CERTIFICATE",
        )));
        rest = &block[end..];
    }
    out
}
