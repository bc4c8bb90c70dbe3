//! The mesh certificate authority, run by the control plane.
//!
//! Why it looks like this:
//! - **Roots live in the store.** On first start the control plane calls
//!   [`CertificateAuthority::generate`] (or [`CertificateAuthority::from_pem`] with a
//!   user-supplied root or intermediate and its key), saves [`CertificateAuthority::to_state`] in
//!   its store, and on later starts rebuilds the CA with [`CertificateAuthority::from_state`].
//!   The state holds private keys: the store must be protected like a key file.
//! - **The CSR's wishes are ignored.** [`CertificateAuthority::sign_csr`] checks only that the
//!   CSR is well formed and that its signature verifies (the requester holds the private key); it
//!   takes the public key from it and nothing else. The certificate gets exactly one URI SAN, the
//!   identity the caller grants (the control plane decides from the join token which identity a
//!   proxy may have), key usage `digitalSignature`, extended key usage server + client auth, and
//!   a short validity (24 h by default in `MeshConfig`, down to minutes).
//! - **Several roots, one active.** Rotating a root without an outage needs an overlap where
//!   both are trusted. The CA holds a list of signers (each a root, or an intermediate with its
//!   chain up to a root); [`CertificateAuthority::trust_bundle`] returns the roots of all of
//!   them, and only the active one signs. The sequence the control plane follows:
//!   1. [`add_root`](CertificateAuthority::add_root) (or
//!      [`add_signer_pem`](CertificateAuthority::add_signer_pem)): the new root joins the bundle;
//!      push the bundle and wait until every proxy has it;
//!   2. [`activate`](CertificateAuthority::activate) the new signer: certificates issued from now
//!      on chain to the new root; proxies pick them up at their next renewal (half a lifetime);
//!   3. after at least one full certificate lifetime, [`retire`](CertificateAuthority::retire)
//!      the old signer and push the bundle: certificates from the old root are refused.
use crate::keys::{KeyError, SecretPem};
use crate::pem::{self, PemError};
use crate::spiffe::{self, SpiffeId, SpiffeIdError};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::SecureRandom;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// Default lifetime of a generated root: ten years.
pub const DEFAULT_ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Workload certificates start this much before "now", so a peer whose clock is a little behind
/// does not refuse a fresh certificate.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Why the CA refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("CSR is not a valid PKCS#10 certificate request: {0}")]
    CsrMalformed(String),
    #[error("CSR signature does not verify: the requester did not prove it holds the private key")]
    CsrSignature,
    #[error("CSR public key is not supported ({0}); use ECDSA P-256/P-384, Ed25519 or RSA")]
    CsrKey(String),
    #[error("identity {id} is in trust domain {:?}, but this CA issues for {ca:?}", id.trust_domain())]
    WrongTrustDomain { id: SpiffeId, ca: String },
    #[error("invalid validity: {0}")]
    Validity(String),
    #[error("{what}: {detail}")]
    BadCaCert { what: &'static str, detail: String },
    #[error("CA private key does not match the public key of the CA certificate {0}")]
    KeyMismatch(String),
    #[error("no CA signer with id {id:?} (known: {known})")]
    UnknownSigner { id: String, known: String },
    #[error("signer {0} is the active signer; activate another before retiring it")]
    RetireActive(String),
    #[error("signer {0} is already present")]
    DuplicateSigner(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("CA key: {0}")]
    Key(#[from] KeyError),
    #[error("trust domain: {0}")]
    TrustDomain(#[from] SpiffeIdError),
    #[error("stored CA state is inconsistent: {0}")]
    State(String),
}

/// A signed workload certificate, as sent back to the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertBundle {
    /// The leaf certificate first, then any intermediates (never the root), PEM.
    pub cert_chain_pem: String,
    /// The identity written into the certificate.
    pub spiffe_id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Serial number, lower-case hex.
    pub serial: String,
}

/// Options for a generated root.
#[derive(Debug, Clone)]
pub struct RootOptions {
    pub lifetime: Duration,
    /// Organization written into the root's subject.
    pub organization: String,
}

impl Default for RootOptions {
    fn default() -> Self {
        Self {
            lifetime: DEFAULT_ROOT_LIFETIME,
            organization: "Trellis".into(),
        }
    }
}

/// Serializable CA state for the control plane's store. Contains private keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaState {
    pub trust_domain: String,
    /// Id of the signer that issues new certificates.
    pub active: String,
    pub signers: Vec<SignerState>,
}

/// One signer in [`CaState`]: the issuing certificate followed by its chain up to the root, and
/// the issuing certificate's private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignerState {
    pub id: String,
    pub cert_chain_pem: String,
    pub key_pem: SecretPem,
}

/// What [`CertificateAuthority::signers`] reports about each signer (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignerInfo {
    pub id: String,
    pub active: bool,
    /// The signer's certificate is its own root (not an intermediate).
    pub is_root: bool,
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

struct Signer {
    id: String,
    /// The issuing certificate first, its root last (one element for a root).
    chain: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
    subject: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The mesh CA: signers (roots or intermediates), one of them active.
#[derive(Debug)]
pub struct CertificateAuthority {
    trust_domain: String,
    signers: Vec<Signer>,
    active: usize,
}

impl CertificateAuthority {
    /// A CA with a freshly generated ECDSA P-256 root.
    pub fn generate(trust_domain: &str, options: &RootOptions) -> Result<Self, CaError> {
        spiffe::validate_trust_domain(trust_domain)?;
        let signer = generate_root(trust_domain, options)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            signers: vec![signer],
            active: 0,
        })
    }

    /// A CA from a user-supplied root or intermediate: `cert_chain_pem` holds the issuing
    /// certificate first and its issuers after it, ending with the self-signed root;
    /// `key_pem` is the issuing certificate's PKCS#8 private key.
    pub fn from_pem(
        trust_domain: &str,
        cert_chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        spiffe::validate_trust_domain(trust_domain)?;
        let signer = load_signer(cert_chain_pem, key_pem)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            signers: vec![signer],
            active: 0,
        })
    }

    /// Rebuilds a CA saved with [`CertificateAuthority::to_state`].
    pub fn from_state(state: &CaState) -> Result<Self, CaError> {
        spiffe::validate_trust_domain(&state.trust_domain)?;
        let mut signers: Vec<Signer> = Vec::with_capacity(state.signers.len());
        for s in &state.signers {
            let signer = load_signer(&s.cert_chain_pem, s.key_pem.expose())?;
            if signer.id != s.id {
                return Err(CaError::State(format!(
                    "signer stored as {:?} has certificate id {:?}",
                    s.id, signer.id
                )));
            }
            if signers.iter().any(|x| x.id == signer.id) {
                return Err(CaError::State(format!(
                    "signer {:?} appears twice",
                    signer.id
                )));
            }
            signers.push(signer);
        }
        let active = signers
            .iter()
            .position(|s| s.id == state.active)
            .ok_or_else(|| {
                CaError::State(format!(
                    "active signer {:?} is not among the signers",
                    state.active
                ))
            })?;
        Ok(Self {
            trust_domain: state.trust_domain.clone(),
            signers,
            active,
        })
    }

    /// Everything needed to rebuild this CA, for the control plane's store.
    pub fn to_state(&self) -> CaState {
        CaState {
            trust_domain: self.trust_domain.clone(),
            active: self.signers[self.active].id.clone(),
            signers: self
                .signers
                .iter()
                .map(|s| SignerState {
                    id: s.id.clone(),
                    cert_chain_pem: pem::encode_certs(&s.chain),
                    key_pem: SecretPem::new(s.issuer.key().serialize_pem()),
                })
                .collect(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Id of the signer that issues new certificates.
    pub fn active_id(&self) -> &str {
        &self.signers[self.active].id
    }

    pub fn signers(&self) -> Vec<SignerInfo> {
        self.signers
            .iter()
            .enumerate()
            .map(|(i, s)| SignerInfo {
                id: s.id.clone(),
                active: i == self.active,
                is_root: s.chain.len() == 1,
                subject: s.subject.clone(),
                not_before: s.not_before.into(),
                not_after: s.not_after.into(),
            })
            .collect()
    }

    /// Generates a new root and adds it as trusted but not active (step 1 of a root rotation).
    /// Returns its id.
    pub fn add_root(&mut self, options: &RootOptions) -> Result<String, CaError> {
        let signer = generate_root(&self.trust_domain, options)?;
        self.push(signer)
    }

    /// Adds a user-supplied root or intermediate (see [`CertificateAuthority::from_pem`]) as
    /// trusted but not active. Returns its id.
    pub fn add_signer_pem(
        &mut self,
        cert_chain_pem: &str,
        key_pem: &str,
    ) -> Result<String, CaError> {
        let signer = load_signer(cert_chain_pem, key_pem)?;
        self.push(signer)
    }

    fn push(&mut self, signer: Signer) -> Result<String, CaError> {
        if self.signers.iter().any(|s| s.id == signer.id) {
            return Err(CaError::DuplicateSigner(signer.id));
        }
        let id = signer.id.clone();
        self.signers.push(signer);
        Ok(id)
    }

    /// Makes `id` the signer of new certificates.
    pub fn activate(&mut self, id: &str) -> Result<(), CaError> {
        self.active = self.index(id)?;
        Ok(())
    }

    /// Removes `id` (its key and its root, unless another signer shares that root) from the CA
    /// and so from the trust bundle. The active signer cannot be retired.
    pub fn retire(&mut self, id: &str) -> Result<(), CaError> {
        let i = self.index(id)?;
        if i == self.active {
            return Err(CaError::RetireActive(id.to_string()));
        }
        self.signers.remove(i);
        if i < self.active {
            self.active -= 1;
        }
        Ok(())
    }

    fn index(&self, id: &str) -> Result<usize, CaError> {
        self.signers
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| CaError::UnknownSigner {
                id: id.to_string(),
                known: self
                    .signers
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The roots of all signers (each once), in signer order: what every proxy must trust.
    pub fn trust_bundle(&self) -> Vec<CertificateDer<'static>> {
        let mut roots: Vec<CertificateDer<'static>> = Vec::new();
        for s in &self.signers {
            if let Some(root) = s.chain.last() {
                if !roots.contains(root) {
                    roots.push(root.clone());
                }
            }
        }
        roots
    }

    /// [`CertificateAuthority::trust_bundle`] as concatenated PEM.
    pub fn trust_bundle_pem(&self) -> String {
        pem::encode_certs(&self.trust_bundle())
    }

    /// Signs a workload certificate for `granted` valid from (about) now for `lifetime`
    /// (cut at the signer's own expiry). See the module doc for what is taken from the CSR.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        granted: &SpiffeId,
        lifetime: Duration,
    ) -> Result<CertBundle, CaError> {
        if lifetime.is_zero() {
            return Err(CaError::Validity(
                "certificate lifetime must be positive".into(),
            ));
        }
        let now = SystemTime::now();
        let signer_start: SystemTime = self.signers[self.active].not_before.into();
        let not_before = now
            .checked_sub(CLOCK_SKEW_ALLOWANCE)
            .unwrap_or(now)
            .max(signer_start);
        let not_after = now
            .checked_add(lifetime)
            .ok_or_else(|| CaError::Validity(format!("lifetime {lifetime:?} is too long")))?;
        self.sign_csr_with_validity(csr_pem, granted, not_before, not_after)
    }

    /// [`CertificateAuthority::sign_csr`] with an explicit validity window, for tools and tests
    /// (an already expired certificate, say). `not_after` is cut at the signer's expiry;
    /// `not_before` is used as given.
    pub fn sign_csr_with_validity(
        &self,
        csr_pem: &str,
        granted: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertBundle, CaError> {
        if granted.trust_domain() != self.trust_domain {
            return Err(CaError::WrongTrustDomain {
                id: granted.clone(),
                ca: self.trust_domain.clone(),
            });
        }
        let public_key = public_key_from_csr(csr_pem)?;
        let signer = &self.signers[self.active];
        let not_before = to_x509_time(not_before)?;
        let not_after = to_x509_time(not_after)?.min(signer.not_after);
        if not_after <= not_before {
            return Err(CaError::Validity(format!(
                "not_after {not_after} is not after not_before {not_before} (the signer is valid until {})",
                signer.not_after
            )));
        }

        let mut params = CertificateParams::default();
        // Empty subject: the identity is the URI SAN (which rcgen then marks critical).
        params.distinguished_name = DistinguishedName::new();
        let uri = Ia5String::try_from(granted.to_string())
            .map_err(|e| CaError::Sign(format!("identity is not an IA5 string: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&public_key, &signer.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;

        let mut chain_pem = cert.pem();
        // Intermediates, never the root: peers have the root in their trust bundle.
        for intermediate in &signer.chain[..signer.chain.len() - 1] {
            chain_pem.push_str(&pem::encode_cert(intermediate));
        }
        Ok(CertBundle {
            cert_chain_pem: chain_pem,
            spiffe_id: granted.clone(),
            not_before: not_before.into(),
            not_after: not_after.into(),
            serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// Parses a PEM CSR, checks its signature, and returns its public key only.
fn public_key_from_csr(csr_pem: &str) -> Result<SubjectPublicKeyInfo, CaError> {
    let der = pem::parse_csr(csr_pem, "CSR")?;
    let (rest, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CaError::CsrMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::CsrMalformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CaError::CsrKey(e.to_string()))
}

fn generate_root(trust_domain: &str, options: &RootOptions) -> Result<Signer, CaError> {
    if options.lifetime.is_zero() {
        return Err(CaError::Validity("root lifetime must be positive".into()));
    }
    let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::Key(KeyError::Generate(e.to_string())))?;
    let serial = random_serial()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, options.organization.clone());
    // A distinct subject per root keeps path building unambiguous while two roots overlap.
    let tag: String = serial[..4].iter().map(|b| format!("{b:02x}")).collect();
    dn.push(DnType::CommonName, format!("Trellis Root CA {tag}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let td_uri = Ia5String::try_from(format!("{}{trust_domain}", spiffe::SCHEME))
        .map_err(|e| CaError::Sign(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(td_uri)];
    let now = SystemTime::now();
    params.not_before = to_x509_time(now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now))?;
    params.not_after = to_x509_time(
        now.checked_add(options.lifetime)
            .ok_or_else(|| CaError::Validity("root lifetime is too long".into()))?,
    )?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params
        .self_signed(&pair)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let der = cert.der().clone();
    // Re-read what was written, so generated and loaded signers are described identically.
    load_signer_der(vec![der], pair)
}

fn load_signer(cert_chain_pem: &str, key_pem: &str) -> Result<Signer, CaError> {
    let chain = pem::parse_certs(cert_chain_pem, "CA certificate chain")?;
    let pair =
        KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(KeyError::Parse(e.to_string())))?;
    load_signer_der(chain, pair)
}

/// Checks a signer's chain (issuing cert first, self-signed root last, each signed by the next,
/// all CAs, the issuer currently valid, the key matching) and builds it.
fn load_signer_der(chain: Vec<CertificateDer<'static>>, key: KeyPair) -> Result<Signer, CaError> {
    let bad = |detail: String| CaError::BadCaCert {
        what: "CA certificate chain",
        detail,
    };
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        let (rest, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| bad(format!("certificate {i} is not valid X.509: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(format!("certificate {i} has trailing bytes")));
        }
        if !cert.is_ca() {
            return Err(bad(format!(
                "certificate {i} ({}) is not a CA (basicConstraints cA is not true)",
                cert.subject()
            )));
        }
        parsed.push(cert);
    }
    let (Some(issuing), Some(root)) = (parsed.first(), parsed.last()) else {
        return Err(bad("no certificate".into()));
    };
    if root.subject().as_raw() != root.issuer().as_raw() || root.verify_signature(None).is_err() {
        return Err(bad(format!(
            "the last certificate ({}) is not a self-signed root; the chain must end at its root",
            root.subject()
        )));
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .is_err()
        {
            return Err(bad(format!(
                "certificate {i} ({}) is not signed by certificate {} ({})",
                pair[0].subject(),
                i + 1,
                pair[1].subject()
            )));
        }
    }
    let subject = issuing.subject().to_string();
    if issuing.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err(CaError::KeyMismatch(subject));
    }
    let not_before = issuing.validity().not_before.to_datetime();
    let not_after = issuing.validity().not_after.to_datetime();
    if not_after <= OffsetDateTime::now_utc() {
        return Err(bad(format!("{subject} expired at {not_after}")));
    }
    let id = fingerprint(&chain[0]);
    let issuer = Issuer::from_ca_cert_der(&chain[0], key)
        .map_err(|e| bad(format!("{subject} cannot be used as an issuer: {e}")))?;
    drop(parsed);
    Ok(Signer {
        id,
        chain,
        issuer,
        subject,
        not_before,
        not_after,
    })
}

/// A signer's id: the first 8 bytes of the SHA-256 of its certificate, hex.
fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 16 random bytes, positive and without a leading zero byte (RFC 5280 allows up to 20).
fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| CaError::Sign("the system random generator failed".into()))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// X.509 times have whole seconds; years beyond 9999 are refused, not a panic.
fn to_x509_time(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| CaError::Validity(format!("{t:?} is outside the range of X.509 dates")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::WorkloadKey;

    fn id(service: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", service).unwrap()
    }

    #[test]
    fn issued_certificate_carries_only_the_granted_identity() {
        let ca = CertificateAuthority::generate("cluster.local", &RootOptions::default()).unwrap();
        let key = WorkloadKey::generate().unwrap();
        // The CSR asks for "admin"; the CA grants "reviews".
        let csr = key.csr_pem(&id("admin")).unwrap();
        let bundle = ca
            .sign_csr(&csr, &id("reviews"), Duration::from_secs(3600))
            .unwrap();
        let certs = pem::parse_certs(&bundle.cert_chain_pem, "test").unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(
            spiffe::spiffe_id_from_cert(&certs[0]).unwrap(),
            id("reviews")
        );
        let (_, cert) = X509Certificate::from_der(&certs[0]).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let lifetime = bundle.not_after.duration_since(bundle.not_before).unwrap();
        assert_eq!(lifetime, Duration::from_secs(3600) + CLOCK_SKEW_ALLOWANCE);
        // The certificate's public key is the CSR's.
        assert_eq!(cert.public_key().raw, key.public_key_spki().as_slice());
    }

    #[test]
    fn refuses_bad_csrs_without_panicking() {
        let ca = CertificateAuthority::generate("cluster.local", &RootOptions::default()).unwrap();
        let good = WorkloadKey::generate().unwrap().csr_pem(&id("a")).unwrap();
        let life = Duration::from_secs(60);
        assert!(matches!(
            ca.sign_csr("", &id("a"), life),
            Err(CaError::Pem(_))
        ));
        assert!(matches!(
            ca.sign_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                &id("a"),
                life
            ),
            Err(CaError::CsrMalformed(_))
        ));
        // Flip a byte in the signature: the proof of possession fails.
        let der = pem::parse_csr(&good, "t").unwrap();
        let mut bytes = der.as_ref().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", bytes));
        assert!(matches!(
            ca.sign_csr(&tampered, &id("a"), life),
            Err(CaError::CsrSignature | CaError::CsrMalformed(_))
        ));
        let other_td = SpiffeId::new("other.domain", "default", "a").unwrap();
        assert!(matches!(
            ca.sign_csr(&good, &other_td, life),
            Err(CaError::WrongTrustDomain { .. })
        ));
        assert!(matches!(
            ca.sign_csr(&good, &id("a"), Duration::ZERO),
            Err(CaError::Validity(_))
        ));
        // Absurd lifetimes are cut at the root's expiry or refused, never a panic.
        let long = ca.sign_csr(&good, &id("a"), Duration::from_secs(400_000 * 365 * 86400));
        assert!(long.is_err() || long.is_ok_and(|b| b.not_after <= ca.signers()[0].not_after));
        let _ = ca.sign_csr(&good, &id("a"), Duration::MAX);
    }

    #[test]
    fn state_round_trips_and_redacts_keys() {
        let mut ca =
            CertificateAuthority::generate("cluster.local", &RootOptions::default()).unwrap();
        let second = ca.add_root(&RootOptions::default()).unwrap();
        ca.activate(&second).unwrap();
        let state = ca.to_state();
        let json = serde_json::to_string(&state).unwrap();
        let back: CaState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        let again = CertificateAuthority::from_state(&back).unwrap();
        assert_eq!(again.active_id(), second);
        assert_eq!(again.trust_bundle(), ca.trust_bundle());
        assert_eq!(again.trust_bundle().len(), 2);
        let dbg = format!("{state:?} {ca:?}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");

        let mut broken = state.clone();
        broken.active = "nope".into();
        assert!(matches!(
            CertificateAuthority::from_state(&broken),
            Err(CaError::State(_))
        ));
        let mut swapped = state.clone();
        swapped.signers[0].key_pem = state.signers[1].key_pem.clone();
        assert!(matches!(
            CertificateAuthority::from_state(&swapped),
            Err(CaError::KeyMismatch(_))
        ));
    }

    #[test]
    fn retire_rules() {
        let mut ca =
            CertificateAuthority::generate("cluster.local", &RootOptions::default()).unwrap();
        let old = ca.active_id().to_string();
        let new = ca.add_root(&RootOptions::default()).unwrap();
        assert!(matches!(ca.retire(&old), Err(CaError::RetireActive(_))));
        assert!(matches!(ca.retire("x"), Err(CaError::UnknownSigner { .. })));
        ca.activate(&new).unwrap();
        ca.retire(&old).unwrap();
        assert_eq!(ca.active_id(), new);
        assert_eq!(ca.trust_bundle().len(), 1);
        assert_eq!(ca.signers().len(), 1);
        assert!(ca.signers()[0].active && ca.signers()[0].is_root);
    }
}
