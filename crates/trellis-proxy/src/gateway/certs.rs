//! Certificates of `HTTPS` listeners: each `certificateRefs` name is a Kubernetes TLS Secret
//! mounted as a directory (`--cert-dir/NAME/tls.crt` and `tls.key`, PEM), read when the
//! Gateway's config is (re)loaded. [`PortCerts`] picks the certificate for a handshake by its
//! SNI: the listener whose hostname matches (exact, then the longest wildcard, then one without
//! a hostname), then, among that listener's certificates, one whose DNS names match, else its
//! first.
//!
//! A missing or bad file is a typed [`CertError`] naming the listener and the file; it never
//! panics and never stops the other listeners.
use super::hosts::{normalize, HostTable};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use trellis_identity::rustls::pki_types::pem::PemObject;
use trellis_identity::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use trellis_identity::rustls::server::{ClientHello, ResolvesServerCert};
use trellis_identity::rustls::sign::CertifiedKey;
use trellis_identity::rustls::{self, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("listener {listener}: an HTTPS listener that terminates TLS needs at least one certificateRefs entry")]
    NoRefs { listener: String },
    #[error("listener {listener}: certificateRefs name {name:?} is not a Secret name (letters, digits, '-', '.')")]
    BadName { listener: String, name: String },
    #[error("listener {listener}: cannot read {}: {error}", path.display())]
    Read {
        listener: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("listener {listener}: {}: {message}", path.display())]
    Invalid {
        listener: String,
        path: PathBuf,
        message: String,
    },
}

/// One listener's certificates, by the DNS names they hold.
#[derive(Debug)]
pub struct ListenerCerts {
    by_name: HostTable<Arc<CertifiedKey>>,
    first: Arc<CertifiedKey>,
}

impl ListenerCerts {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        sni.and_then(|s| self.by_name.lookup(s))
            .unwrap_or(&self.first)
            .clone()
    }
}

fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Reads the Secrets `refs` names for `listener` from `dir`.
pub fn load_listener(
    dir: &Path,
    listener: &str,
    refs: &[String],
) -> Result<ListenerCerts, CertError> {
    let mut by_name = HostTable::default();
    let mut first = None;
    for name in refs {
        if !valid_secret_name(name) {
            return Err(CertError::BadName {
                listener: listener.to_string(),
                name: name.clone(),
            });
        }
        let (key, names) = load_secret(&dir.join(name), listener)?;
        let key = Arc::new(key);
        for n in names {
            by_name.insert(&n, key.clone());
        }
        first.get_or_insert(key);
    }
    let first = first.ok_or_else(|| CertError::NoRefs {
        listener: listener.to_string(),
    })?;
    Ok(ListenerCerts { by_name, first })
}

fn read(path: &Path, listener: &str) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|error| CertError::Read {
        listener: listener.to_string(),
        path: path.to_path_buf(),
        error,
    })
}

/// `DIR/tls.crt` and `DIR/tls.key` as a signing key, and the certificate's DNS names.
fn load_secret(dir: &Path, listener: &str) -> Result<(CertifiedKey, Vec<String>), CertError> {
    let crt_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    let invalid = |path: &Path, message: String| CertError::Invalid {
        listener: listener.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let crt = read(&crt_path, listener)?;
    let chain = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&crt_path, format!("not PEM certificates: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid(&crt_path, "holds no CERTIFICATE block".into()))?;
    let names = dns_names(leaf).map_err(|m| invalid(&crt_path, m))?;
    let key = read(&key_path, listener)?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| invalid(&key_path, format!("no private key in PEM: {e}")))?;
    let provider = trellis_identity::tls::crypto_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        invalid(
            &key_path,
            format!("the key does not fit the certificate in tls.crt: {e}"),
        )
    })?;
    Ok((certified, names))
}

/// The DNS subject alternative names of a certificate, lowercased.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                out.push(n.to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

/// The certificates of every HTTPS listener on one port, picked by SNI.
#[derive(Debug, Default)]
pub struct PortCerts {
    listeners: HostTable<Arc<ListenerCerts>>,
    /// For a client that sends no SNI (or one no listener matches, when none catches all).
    fallback: Option<Arc<ListenerCerts>>,
    has_catch_all: bool,
}

impl PortCerts {
    /// Adds the certificates of a listener whose hostname is `hostname` (`None`: any).
    pub fn add(&mut self, hostname: Option<&str>, certs: ListenerCerts) {
        let certs = Arc::new(certs);
        self.listeners
            .insert(hostname.unwrap_or("*"), certs.clone());
        // A listener for any name is the fallback; else the first one added.
        let catch_all = hostname.is_none() && !self.has_catch_all;
        if catch_all || self.fallback.is_none() {
            self.fallback = Some(certs);
        }
        self.has_catch_all |= hostname.is_none();
    }

    pub fn is_empty(&self) -> bool {
        self.fallback.is_none()
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let sni = sni.map(normalize);
        let listener = sni
            .as_deref()
            .and_then(|s| self.listeners.lookup(s))
            .or(self.fallback.as_ref())?;
        Some(listener.pick(sni.as_deref()))
    }

    /// A server config for this port: TLS 1.2 and 1.3; with `http`, ALPN `h2` and `http/1.1`
    /// (a tunnel offers no ALPN: what it carries is the backend's business).
    pub fn server_config(self, http: bool) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut cfg = ServerConfig::builder_with_provider(trellis_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self));
        if http {
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for PortCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_secret(dir: &Path, name: &str, hosts: &[&str]) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(d.join("tls.key"), key.serialize_pem()).unwrap();
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gw-certs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn picks_by_sni_with_wildcards() {
        let dir = tmp("sni");
        write_secret(&dir, "a", &["a.example.com"]);
        write_secret(&dir, "b", &["*.b.example.com"]);
        write_secret(&dir, "c1", &["one.example.org"]);
        write_secret(&dir, "c2", &["two.example.org"]);
        let mut port = PortCerts::default();
        let a = load_listener(&dir, "a", &["a".into()]).unwrap();
        let a_key = a.first.clone();
        port.add(Some("a.example.com"), a);
        let b = load_listener(&dir, "b", &["b".into()]).unwrap();
        let b_key = b.first.clone();
        port.add(Some("*.b.example.com"), b);
        let c = load_listener(&dir, "c", &["c1".into(), "c2".into()]).unwrap();
        let c2_key = c.pick(Some("two.example.org"));
        port.add(None, c);
        assert!(Arc::ptr_eq(
            &port.pick(Some("A.example.com")).unwrap(),
            &a_key
        ));
        assert!(Arc::ptr_eq(
            &port.pick(Some("x.b.example.com")).unwrap(),
            &b_key
        ));
        // Not b's: a bare `b.example.com` is no match of `*.b.example.com`.
        let other = port.pick(Some("b.example.com")).unwrap();
        assert!(!Arc::ptr_eq(&other, &b_key));
        assert!(Arc::ptr_eq(
            &port.pick(Some("two.example.org")).unwrap(),
            &c2_key
        ));
        assert!(port.pick(None).is_some());
    }

    #[test]
    fn errors_name_the_listener_and_the_file() {
        let dir = tmp("errors");
        let e = load_listener(&dir, "https-a", &["missing".into()]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("https-a") && text.contains("missing/tls.crt"),
            "{text}"
        );
        std::fs::create_dir_all(dir.join("bad")).unwrap();
        std::fs::write(dir.join("bad/tls.crt"), "not a certificate").unwrap();
        let text = load_listener(&dir, "https-b", &["bad".into()])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("https-b") && text.contains("bad/tls.crt"),
            "{text}"
        );
        write_secret(&dir, "nokey", &["x.example.com"]);
        std::fs::write(dir.join("nokey/tls.key"), "garbage").unwrap();
        let text = load_listener(&dir, "https-c", &["nokey".into()])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("https-c") && text.contains("nokey/tls.key"),
            "{text}"
        );
        let text = load_listener(&dir, "l", &["../etc".into()])
            .unwrap_err()
            .to_string();
        assert!(text.contains("not a Secret name"), "{text}");
        assert!(matches!(
            load_listener(&dir, "l", &[]),
            Err(CertError::NoRefs { .. })
        ));
    }
}
