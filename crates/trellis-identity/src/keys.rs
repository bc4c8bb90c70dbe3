//! A workload's own key pair, its certificate signing request, and secret files.
//!
//! Why here: the private key of a proxy never leaves the proxy. It is generated locally
//! (ECDSA P-256, the key type Istio and Linkerd use for workload certificates), only its public
//! half travels, inside a CSR, to the control plane's CA. The CSR carries the SPIFFE ID the proxy
//! asks for, but the CA ignores it and grants what the join token allows (see [`crate::ca`]).
//!
//! Key material is kept out of logs by construction: [`WorkloadKey`] and [`SecretPem`] print
//! `[redacted]` in `Debug`, PEM copies are zeroized on drop, and [`write_secret_file`] writes with
//! mode 0600 from the moment the file exists (never a wider window), atomically by rename.
use crate::spiffe::SpiffeId;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a key pair failed: {0}")]
    Generate(String),
    #[error("private key PEM is not a usable PKCS#8 ECDSA/Ed25519 key: {0}")]
    Parse(String),
    #[error("building a CSR for {id} failed: {detail}")]
    Csr { id: String, detail: String },
    #[error("writing secret file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A private key held by a workload (or by the CA). `Debug` never shows the key.
pub struct WorkloadKey {
    pair: KeyPair,
}

impl WorkloadKey {
    /// A fresh ECDSA P-256 key pair.
    pub fn generate() -> Result<Self, KeyError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|pair| Self { pair })
            .map_err(|e| KeyError::Generate(e.to_string()))
    }

    /// Reads a PKCS#8 PEM private key (as written by [`WorkloadKey::private_key_pem`]).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        // rcgen's error text describes the format problem, never the key bytes.
        KeyPair::from_pem(pem)
            .map(|pair| Self { pair })
            .map_err(|e| KeyError::Parse(e.to_string()))
    }

    /// A PEM `CERTIFICATE REQUEST` signed by this key, asking for `id` as its URI SAN.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, KeyError> {
        let csr_err = |detail: String| KeyError::Csr {
            id: id.to_string(),
            detail,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = Ia5String::try_from(id.to_string()).map_err(|e| csr_err(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params
            .serialize_request(&self.pair)
            .and_then(|csr| csr.pem())
            .map_err(|e| csr_err(e.to_string()))
    }

    /// The private key as PKCS#8 PEM; the copy is wiped when dropped.
    pub fn private_key_pem(&self) -> SecretPem {
        SecretPem(Zeroizing::new(self.pair.serialize_pem()))
    }

    /// The private key as PKCS#8 DER, for rustls.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// Writes the private key PEM to `path` with mode 0600 (see [`write_secret_file`]).
    pub fn write_pem_file(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self.private_key_pem();
        write_secret_file(path, pem.expose().as_bytes()).map_err(|source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKey")
            .field("algorithm", &"ECDSA_P256_SHA256")
            .field("private_key", &"[redacted]")
            .finish()
    }
}

/// A PEM private key in memory: redacted in `Debug`, zeroized on drop, serialized as a plain
/// string (so the control plane can keep CA state in its store, which must itself be protected).
#[derive(Clone)]
pub struct SecretPem(Zeroizing<String>);

impl Serialize for SecretPem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretPem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl SecretPem {
    pub fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem([redacted])")
    }
}

impl PartialEq for SecretPem {
    fn eq(&self, other: &Self) -> bool {
        // Not constant-time; only used to compare stored state, never secrets from a peer.
        *self.0 == *other.0
    }
}

/// Writes `contents` to `path` so that only the owner can read it (mode 0600).
///
/// The data goes to a new temporary file in the same directory, created with mode 0600 (so it is
/// never readable by others, whatever the umask), flushed to disk, then renamed over `path`:
/// a reader sees the old file or the new one, never a partial key, and an existing file with
/// wider permissions is replaced rather than reused.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only clear bits; make the mode exact all the same.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_redaction() {
        let key = WorkloadKey::generate().unwrap();
        let pem = key.private_key_pem();
        let again = WorkloadKey::from_pem(pem.expose()).unwrap();
        assert_eq!(key.public_key_spki(), again.public_key_spki());
        let dbg = format!("{key:?} {pem:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains("PRIVATE KEY"));
        // No line of the base64 body shows up in Debug.
        for line in pem.expose().lines().filter(|l| !l.starts_with("-----")) {
            assert!(!dbg.contains(line));
        }
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        for input in [
            "",
            "garbage",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
        ] {
            let err = WorkloadKey::from_pem(input).unwrap_err();
            assert!(matches!(err, KeyError::Parse(_)), "{err}");
        }
    }
}
