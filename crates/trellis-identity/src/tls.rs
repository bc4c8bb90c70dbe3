//! Mesh mTLS with rustls: TLS 1.3 only, both sides authenticated, identity = SPIFFE ID.
//!
//! Why it looks like this:
//! - **Rotation without rebuilding or dropping anything.** A proxy's certificate
//!   ([`CertSource`]) and trust bundle ([`TrustSource`]) live behind `ArcSwap`s. The configs
//!   returned by [`server_config`] and [`client_config`] hold a certificate *resolver* and
//!   custom *verifiers* that read the current value at each handshake, so a renewal or a bundle
//!   push takes effect for the next handshake while established connections carry on
//!   untouched (TLS does not re-check certificates after the handshake).
//! - **SPIFFE ID instead of host name.** Between proxies there is no DNS name to check. As in
//!   Istio and Linkerd, the client verifies the server's chain against the bundle (EKU
//!   serverAuth, validity) and then compares the certificate's URI SAN with the identity the
//!   control plane says that endpoint must have; the `ServerName` given to rustls is only used
//!   for SNI. The server verifies the client's chain (EKU clientAuth) and requires a SPIFFE ID;
//!   what that identity may do is [`crate::authz`]'s business.
//! - **Every handshake is a full one.** Session resumption is disabled on both sides, so a
//!   retired root or an expired certificate cannot live on in a resumed session; proxies pool
//!   their connections, so the cost is small.
//! - The verifiers build rustls' WebPKI machinery once per bundle version (on
//!   [`TrustSource::update`]), not per handshake.
//!
//! How the proxy uses it: accept with `tokio_rustls::TlsAcceptor::from(server_config(..)?)`,
//! read the caller's identity with [`peer_identity`]`(stream.get_ref().1)`; connect with
//! `tokio_rustls::TlsConnector::from(configs.get(Some(&expected))?)` (see [`ClientConfigs`]).
//! To add ALPN, clone the config (`(*cfg).clone()`), set `alpn_protocols`, and wrap it again.
//! Which connections get TLS at all: [`inbound_action`] (mTLS mode + first bytes, for
//! `Strict`/`Permissive`/`Off`) and [`outbound_uses_tls`].
use crate::ca::CertBundle;
use crate::keys::WorkloadKey;
use crate::pem::{self, PemError};
use crate::spiffe::{self, CertIdentityError, SpiffeId};
use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use trellis_api::mesh::MtlsMode;
use trellis_api::policy::TlsMode;

mod rotator;
pub use rotator::{RotationStatus, Rotator, RotatorOptions};

/// Why a certificate, bundle or config could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("workload certificate: {0}")]
    Identity(#[from] CertIdentityError),
    #[error("workload certificate and private key: {0}")]
    KeyPair(rustls::Error),
    #[error("workload certificate expired at {0:?}")]
    Expired(SystemTime),
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("building the rustls config: {0}")]
    Config(rustls::Error),
}

/// The rustls crypto provider of the mesh: `ring`.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

// ---------------------------------------------------------------------------------------------
// The workload's own certificate.

struct LoadedCert {
    key: Arc<CertifiedKey>,
    identity: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// This proxy's current certificate and key, swappable at any time.
#[derive(Default)]
pub struct CertSource {
    current: ArcSwapOption<LoadedCert>,
}

impl CertSource {
    /// An empty source: handshakes fail until a certificate is set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a certificate issued for `key` (the chain from the CA).
    pub fn set(&self, bundle: &CertBundle, key: &WorkloadKey) -> Result<(), TlsError> {
        let chain = pem::parse_certs(&bundle.cert_chain_pem, "workload certificate chain")?;
        self.set_der(chain, key.private_key_der())
    }

    /// Installs a PEM certificate chain (leaf first) and its PEM private key.
    pub fn set_pem(&self, cert_chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let chain = pem::parse_certs(cert_chain_pem, "workload certificate chain")?;
        let key = pem::parse_private_key(key_pem, "workload private key")?;
        self.set_der(chain, key)
    }

    /// Installs a DER chain and key after checking that they match, that the leaf carries a
    /// SPIFFE ID and that it has not expired.
    pub fn set_der(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let leaf = chain.first().ok_or(PemError::Missing {
            what: "workload certificate chain",
            label: "CERTIFICATE",
        })?;
        let identity = spiffe::spiffe_id_from_cert(leaf)?;
        let (not_before, not_after) = validity(leaf)?;
        if not_after <= SystemTime::now() {
            return Err(TlsError::Expired(not_after));
        }
        let certified =
            CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(TlsError::KeyPair)?;
        self.current.store(Some(Arc::new(LoadedCert {
            key: Arc::new(certified),
            identity,
            not_before,
            not_after,
        })));
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The identity in the current certificate.
    pub fn identity(&self) -> Option<SpiffeId> {
        self.current.load().as_ref().map(|c| c.identity.clone())
    }

    /// `(not_before, not_after)` of the current certificate.
    pub fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        self.current
            .load()
            .as_ref()
            .map(|c| (c.not_before, c.not_after))
    }

    /// The current leaf certificate.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current
            .load()
            .as_ref()
            .and_then(|c| c.key.cert.first().cloned())
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

impl fmt::Debug for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cur = self.current.load();
        f.debug_struct("CertSource")
            .field("identity", &cur.as_ref().map(|c| c.identity.to_string()))
            .field("not_after", &cur.as_ref().map(|c| c.not_after))
            .field("key", &"[redacted]")
            .finish()
    }
}

fn validity(der: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CertIdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?;
    let v = cert.validity();
    Ok((
        v.not_before.to_datetime().into(),
        v.not_after.to_datetime().into(),
    ))
}

#[derive(Debug)]
struct CertResolver(Arc<CertSource>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.is_loaded()
    }
}

// ---------------------------------------------------------------------------------------------
// The trust bundle.

struct TrustState {
    version: u64,
    ders: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

/// The roots this proxy trusts, swappable at any time (the control plane pushes them).
pub struct TrustSource {
    state: ArcSwap<TrustState>,
    next_version: AtomicU64,
    update_lock: Mutex<()>,
    trust_domain: Option<String>,
}

impl TrustSource {
    /// A bundle of one or more roots. Peers may have any trust domain; see
    /// [`TrustSource::with_trust_domain`].
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        Ok(Self {
            state: ArcSwap::from_pointee(build_trust_state(roots, 1)?),
            next_version: AtomicU64::new(2),
            update_lock: Mutex::new(()),
            trust_domain: None,
        })
    }

    /// A bundle from concatenated PEM certificates.
    pub fn from_pem(bundle_pem: &str) -> Result<Self, TlsError> {
        Self::new(pem::parse_certs(bundle_pem, "trust bundle")?)
    }

    /// Also require every peer's SPIFFE ID to be in `trust_domain`.
    pub fn with_trust_domain(mut self, trust_domain: &str) -> Self {
        self.trust_domain = Some(trust_domain.to_string());
        self
    }

    /// Replaces the bundle; the next handshake uses it. On error the old bundle stays.
    pub fn update(&self, roots: Vec<CertificateDer<'static>>) -> Result<(), TlsError> {
        let _guard = self.update_lock.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        self.state
            .store(Arc::new(build_trust_state(roots, version)?));
        Ok(())
    }

    pub fn update_pem(&self, bundle_pem: &str) -> Result<(), TlsError> {
        self.update(pem::parse_certs(bundle_pem, "trust bundle")?)
    }

    /// Increases with every successful update.
    pub fn version(&self) -> u64 {
        self.state.load().version
    }

    /// The roots currently trusted.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.state.load().ders.clone()
    }

    /// The peer's identity, if its leaf carries one allowed here.
    fn identity_of(&self, leaf: &CertificateDer<'_>) -> Result<SpiffeId, rustls::Error> {
        let id = spiffe::spiffe_id_from_cert(leaf).map_err(other_error)?;
        if let Some(td) = &self.trust_domain {
            if id.trust_domain() != td {
                return Err(other_error(PeerIdentityError::WrongTrustDomain {
                    got: id,
                    want: td.clone(),
                }));
            }
        }
        Ok(id)
    }
}

impl fmt::Debug for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.load();
        f.debug_struct("TrustSource")
            .field("version", &st.version)
            .field("roots", &st.ders.len())
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

fn build_trust_state(
    ders: Vec<CertificateDer<'static>>,
    version: u64,
) -> Result<TrustState, TlsError> {
    if ders.is_empty() {
        return Err(TlsError::Bundle(
            "the bundle has no root certificate".into(),
        ));
    }
    let mut store = RootCertStore::empty();
    for (i, der) in ders.iter().enumerate() {
        store
            .add(der.clone())
            .map_err(|e| TlsError::Bundle(format!("root {i} is not usable: {e}")))?;
    }
    let roots = Arc::new(store);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), crypto_provider())
            .build()
            .map_err(|e| TlsError::Bundle(e.to_string()))?;
    Ok(TrustState {
        version,
        ders,
        roots,
        client_verifier,
    })
}

/// Why a peer's (otherwise valid) certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("peer is {got}, expected {expected}")]
    Unexpected { got: SpiffeId, expected: SpiffeId },
    #[error("peer {got} is not in trust domain {want:?}")]
    WrongTrustDomain { got: SpiffeId, want: String },
}

/// rustls renders `CertificateError::Other` with `Debug`; this error's `Debug` is its message,
/// so handshake errors read "... Other(OtherError(peer is spiffe://..., expected ...))".
struct Refused(String);

impl fmt::Debug for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn other_error(e: impl std::error::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused(e.to_string())),
    )))
}

// ---------------------------------------------------------------------------------------------
// Verifiers.

/// Server side: the client's chain must lead to a current root and carry a SPIFFE ID.
#[derive(Debug)]
struct MeshClientVerifier {
    trust: Arc<TrustSource>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a mesh client has exactly one certificate and always sends it.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let state = self.trust.state.load();
        state
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        self.trust.identity_of(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Client side: the server's chain must lead to a current root and its SPIFFE ID must be the
/// expected one (when given); the host name is not checked.
#[derive(Debug)]
struct MeshServerVerifier {
    trust: Arc<TrustSource>,
    expected: Option<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let state = self.trust.state.load();
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &state.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let got = self.trust.identity_of(end_entity)?;
        if let Some(expected) = &self.expected {
            if &got != expected {
                return Err(other_error(PeerIdentityError::Unexpected {
                    got,
                    expected: expected.clone(),
                }));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Configs.

/// The inbound (server) side: TLS 1.3 only, client certificate required and verified against
/// the current bundle, no session resumption.
pub fn server_config(
    certs: Arc<CertSource>,
    trust: Arc<TrustSource>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(MeshClientVerifier {
        trust,
        algs: algorithms(),
    });
    let mut cfg = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CertResolver(certs)));
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// The outbound (client) side: TLS 1.3 only, presents this proxy's certificate, verifies the
/// server's chain against the current bundle and, when `expected` is given, that the server is
/// exactly that identity. No session resumption.
pub fn client_config(
    certs: Arc<CertSource>,
    trust: Arc<TrustSource>,
    expected: Option<SpiffeId>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(MeshServerVerifier {
        trust,
        expected,
        algs: algorithms(),
    });
    let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(CertResolver(certs)));
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Client configs per expected peer identity, built once and shared (a config is cheap to use
/// but not free to build). All follow the same [`CertSource`] and [`TrustSource`].
#[derive(Debug)]
pub struct ClientConfigs {
    certs: Arc<CertSource>,
    trust: Arc<TrustSource>,
    cache: Mutex<HashMap<Option<SpiffeId>, Arc<ClientConfig>>>,
}

impl ClientConfigs {
    pub fn new(certs: Arc<CertSource>, trust: Arc<TrustSource>) -> Self {
        Self {
            certs,
            trust,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The config that requires the server to be `expected` (any mesh identity when `None`).
    pub fn get(&self, expected: Option<&SpiffeId>) -> Result<Arc<ClientConfig>, TlsError> {
        let key = expected.cloned();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cfg) = cache.get(&key) {
            return Ok(cfg.clone());
        }
        let cfg = client_config(self.certs.clone(), self.trust.clone(), key.clone())?;
        cache.insert(key, cfg.clone());
        Ok(cfg)
    }
}

/// The peer's SPIFFE ID after a completed handshake (the first certificate it presented).
/// Works on `ServerConnection` and `ClientConnection` (both deref to `CommonState`); with
/// tokio-rustls: `peer_identity(stream.get_ref().1)`.
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    peer_identity_from_certs(conn.peer_certificates()?)
}

/// The SPIFFE ID of the first certificate of a presented chain.
pub fn peer_identity_from_certs(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    spiffe::spiffe_id_from_cert(certs.first()?).ok()
}

/// Whether the first bytes of a connection look like a TLS handshake record (content type 22,
/// major version 3): how a `Permissive` inbound port tells mTLS from plaintext before handing
/// the stream to TLS or to protocol detection. Needs at least one byte; three are conclusive.
pub fn looks_like_tls(prefix: &[u8]) -> bool {
    match prefix {
        [] => false,
        [0x16] | [0x16, 0x03] => true,
        [0x16, 0x03, minor, ..] => *minor <= 0x04,
        _ => false,
    }
}

/// What an inbound listener does with a new connection, from the mTLS mode and its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundAction {
    /// Terminate mesh mTLS ([`server_config`]), then detect the protocol inside.
    Tls,
    /// Hand the bytes to protocol detection as they are (no peer identity).
    Plaintext,
    /// Close: `Strict` refuses plaintext.
    Refuse,
}

/// `Strict`: TLS only; `Permissive`: TLS when the connection starts with a TLS record, else
/// plaintext; `Off`: everything is plaintext (TLS from the caller goes to the app untouched).
/// Resolve a per-port override to an [`MtlsMode`] before calling.
pub fn inbound_action(mode: MtlsMode, prefix: &[u8]) -> InboundAction {
    match (mode, looks_like_tls(prefix)) {
        (MtlsMode::Off, _) => InboundAction::Plaintext,
        (_, true) => InboundAction::Tls,
        (MtlsMode::Permissive, false) => InboundAction::Plaintext,
        (MtlsMode::Strict, false) => InboundAction::Refuse,
    }
}

/// Whether a proxy opens mTLS to a destination: `Mutual` and `Disable` in the destination's
/// policy decide; `Mesh` follows the mesh mode (`Strict` and `Permissive` both send mTLS, since
/// every mesh endpoint has a proxy that accepts it; `Off` sends plaintext).
pub fn outbound_uses_tls(mesh: MtlsMode, destination: TlsMode) -> bool {
    match destination {
        TlsMode::Mutual => true,
        TlsMode::Disable => false,
        TlsMode::Mesh => mesh != MtlsMode::Off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_sniffing() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(looks_like_tls(&[0x16]));
        assert!(!looks_like_tls(b"GET / HTTP/1.1"));
        assert!(!looks_like_tls(b"PRI * HTTP/2.0"));
        assert!(!looks_like_tls(&[0x16, 0x03, 0x09]));
        assert!(!looks_like_tls(&[]));
    }

    #[test]
    fn modes() {
        let hello = [0x16, 0x03, 0x01];
        assert_eq!(inbound_action(MtlsMode::Strict, &hello), InboundAction::Tls);
        assert_eq!(
            inbound_action(MtlsMode::Strict, b"GET "),
            InboundAction::Refuse
        );
        assert_eq!(
            inbound_action(MtlsMode::Permissive, &hello),
            InboundAction::Tls
        );
        assert_eq!(
            inbound_action(MtlsMode::Permissive, b"GET "),
            InboundAction::Plaintext
        );
        assert_eq!(
            inbound_action(MtlsMode::Off, &hello),
            InboundAction::Plaintext
        );
        assert!(outbound_uses_tls(MtlsMode::Permissive, TlsMode::Mesh));
        assert!(!outbound_uses_tls(MtlsMode::Off, TlsMode::Mesh));
        assert!(outbound_uses_tls(MtlsMode::Off, TlsMode::Mutual));
        assert!(!outbound_uses_tls(MtlsMode::Strict, TlsMode::Disable));
    }

    #[test]
    fn bad_bundles_and_certs_are_errors() {
        assert!(TrustSource::from_pem("").is_err());
        assert!(TrustSource::new(vec![]).is_err());
        assert!(TrustSource::new(vec![CertificateDer::from(vec![1, 2, 3])]).is_err());
        let src = CertSource::new();
        assert!(src.set_pem("", "").is_err());
        assert!(src.set_pem("junk", "junk").is_err());
        assert!(!src.is_loaded());
        assert!(peer_identity_from_certs(&[CertificateDer::from(vec![0u8; 10])]).is_none());
    }
}
