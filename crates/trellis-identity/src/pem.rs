//! PEM in and out, in one place so every module reports bad PEM the same way and never panics on
//! it. Parsing uses rustls-pki-types (the types rustls consumes); encoding uses the `pem` crate.
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

/// What is wrong with a PEM input; `what` names the input ("CA certificate chain", ...).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{what}: no {label} PEM block found")]
    Missing {
        what: &'static str,
        label: &'static str,
    },
    #[error("{what}: malformed PEM: {detail}")]
    Malformed { what: &'static str, detail: String },
}

/// All `CERTIFICATE` blocks, in order; at least one.
pub(crate) fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::Missing {
            what,
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The first private key block (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn parse_private_key(
    pem: &str,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PemError::Missing {
            what,
            label: "PRIVATE KEY",
        },
        // The error text of pki-types never includes the key bytes.
        other => PemError::Malformed {
            what,
            detail: other.to_string(),
        },
    })
}

/// The first `CERTIFICATE REQUEST` block.
pub(crate) fn parse_csr(
    pem: &str,
    what: &'static str,
) -> Result<CertificateSigningRequestDer<'static>, PemError> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PemError::Missing {
            what,
            label: "CERTIFICATE REQUEST",
        },
        other => PemError::Malformed {
            what,
            detail: other.to_string(),
        },
    })
}

pub(crate) fn encode_cert(der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new("CERTIFICATE", der.to_vec()))
}

pub(crate) fn encode_certs<'a>(ders: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    ders.into_iter().map(|d| encode_cert(d)).collect()
}
