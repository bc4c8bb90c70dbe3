//! Mesh mTLS in the proxy: the certificate this proxy presents, the roots it trusts, and the
//! rustls configs built from them once (rotation swaps the certificate or bundle underneath, so
//! no config is rebuilt and no connection is dropped).
//!
//! Where the certificate comes from is the caller's business: files given on the command line
//! ([`MeshTls::from_files`]) or the control plane's CA ([`issuer`]).
//!
//! **ALPN says what is inside.** A sidecar opening mTLS to a peer sidecar names what it will
//! send through it ([`Alpn`]: `http/1.1`, `h2`, or `trellis-tcp` for opaque bytes), so the peer's
//! inbound side never runs protocol detection a second time on a port that declares nothing:
//! an undeclared server-first protocol waits for the detection timeout once along the path (on
//! the caller's side), not twice. The ALPN is chosen by the authenticated peer for its own
//! connection only; it decides nothing the first bytes could not have decided (an opaque
//! connection is still authorized as a whole, and a port's declared protocol still wins).
pub mod io;
pub mod issuer;

use crate::TlsFiles;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use trellis_identity::rustls::ClientConfig;
use trellis_identity::tls::{self as mtls, TlsError};
use trellis_identity::tokio_rustls::{TlsAcceptor, TlsConnector};
use trellis_identity::{CertSource, ClientConfigs, SpiffeId, TrustSource};

/// What a sidecar sends through an mTLS connection to a peer sidecar, as an ALPN protocol id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    Http1,
    Http2,
    /// Opaque TCP: the caller's side found (or was told by config) that this is no HTTP.
    Opaque,
}

impl Alpn {
    const ALL: [Alpn; 3] = [Alpn::Http2, Alpn::Http1, Alpn::Opaque];

    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::Http1 => b"http/1.1",
            Alpn::Http2 => b"h2",
            Alpn::Opaque => b"trellis-tcp",
        }
    }

    /// The protocol an ALPN id names, if it is one of ours.
    pub fn from_id(id: &[u8]) -> Option<Alpn> {
        Alpn::ALL.into_iter().find(|a| a.id() == id)
    }
}

/// A client config is cached per expected peer identity and ALPN protocol.
type AlpnKey = (Option<SpiffeId>, Alpn);

/// Certificate, trust bundle and the TLS configs built on them.
pub struct MeshTls {
    pub certs: Arc<CertSource>,
    pub trust: Arc<TrustSource>,
    acceptor: TlsAcceptor,
    clients: ClientConfigs,
    /// Client configs with an ALPN protocol set, per expected identity: built once each.
    alpn_clients: std::sync::Mutex<HashMap<AlpnKey, Arc<ClientConfig>>>,
    /// The trust bundle last installed, as PEM, so an unchanged push is a no-op.
    bundle_pem: std::sync::Mutex<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{what} {path}: {error}")]
    Invalid {
        what: &'static str,
        path: String,
        error: TlsError,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl MeshTls {
    pub fn new(certs: Arc<CertSource>, trust: Arc<TrustSource>) -> Result<Self, TlsError> {
        let mut server = (*mtls::server_config(certs.clone(), trust.clone())?).clone();
        // Every id a Trellis peer may offer. A client that offers none (an older sidecar) still
        // connects, and its connection is detected as before.
        server.alpn_protocols = Alpn::ALL.iter().map(|a| a.id().to_vec()).collect();
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            clients: ClientConfigs::new(certs.clone(), trust.clone()),
            alpn_clients: std::sync::Mutex::new(HashMap::new()),
            certs,
            trust,
            bundle_pem: std::sync::Mutex::new(String::new()),
        })
    }

    /// A certificate chain, its key and the trusted roots, all PEM files (`--tls-cert`,
    /// `--tls-key`, `--tls-trust`); peers must present identities in `trust_domain`.
    pub fn from_files(files: &TlsFiles, trust_domain: &str) -> Result<Self, TlsSetupError> {
        let (cert, key, trust) = (&files.cert, &files.key, &files.trust);
        let read = |what: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|error| TlsSetupError::Read {
                what,
                path: path.display().to_string(),
                error,
            })
        };
        let invalid = |what: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |error| TlsSetupError::Invalid { what, path, error }
        };
        let certs = CertSource::new();
        certs
            .set_pem(&read("certificate", cert)?, &read("key", key)?)
            .map_err(invalid("certificate", cert))?;
        let trust = TrustSource::from_pem(&read("trust bundle", trust)?)
            .map_err(invalid("trust bundle", trust))?
            .with_trust_domain(trust_domain);
        Ok(Self::new(Arc::new(certs), Arc::new(trust))?)
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// A connector that accepts only `expected` (any identity the roots vouch for when `None`)
    /// and tells the peer, by ALPN, what will be sent through the connection.
    pub fn connector(
        &self,
        expected: Option<&SpiffeId>,
        alpn: Alpn,
    ) -> Result<TlsConnector, TlsError> {
        let key = (expected.cloned(), alpn);
        let mut cache = self.alpn_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cfg) = cache.get(&key) {
            return Ok(TlsConnector::from(cfg.clone()));
        }
        let mut cfg: ClientConfig = (*self.clients.get(expected)?).clone();
        cfg.alpn_protocols = vec![alpn.id().to_vec()];
        let cfg = Arc::new(cfg);
        cache.insert(key, cfg.clone());
        Ok(TlsConnector::from(cfg))
    }

    pub(crate) fn remember_bundle(&self, pem: &str) {
        if let Ok(mut b) = self.bundle_pem.lock() {
            *b = pem.to_string();
        }
    }

    /// Installs a pushed trust bundle when it differs from the one in force. New handshakes use
    /// it at once; established connections stay up.
    pub fn update_bundle(&self, roots_pem: &str) {
        let Ok(mut current) = self.bundle_pem.lock() else {
            return;
        };
        if *current == roots_pem {
            return;
        }
        match self.trust.update_pem(roots_pem) {
            Ok(()) => {
                *current = roots_pem.to_string();
                tracing::info!(
                    version = self.trust.version(),
                    roots = self.trust.roots().len(),
                    "trust bundle updated"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "pushed trust bundle refused; keeping the current one")
            }
        }
    }

    /// What `/config` shows: identity, validity, and the bundle in force (no key material).
    pub fn status(&self) -> serde_json::Value {
        let fmt = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let validity = self.certs.validity();
        serde_json::json!({
            "identity": self.certs.identity().map(|i| i.to_string()),
            "notBefore": validity.map(|v| fmt(v.0)),
            "notAfter": validity.map(|v| fmt(v.1)),
            "trustBundleVersion": self.trust.version(),
            "roots": self.trust.roots().len(),
        })
    }
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("certs", &self.certs)
            .field("trust", &self.trust)
            .finish()
    }
}
