//! SPIFFE IDs of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
//!
//! Why a type and not a string: the identity is what authorization decides on and what a client
//! checks its peer against, so it is parsed once, strictly, and compared structurally. The shape
//! is Istio's (`/ns/<namespace>/sa/<service-account>`), which lets an Istio or Linkerd user read
//! Trellis identities and policies at first sight; in Trellis the "service account" is the
//! service name.
//!
//! Rules (a subset of the SPIFFE spec, stricter where the mesh needs it):
//! - scheme `spiffe://`, lower case; no user info, port, query or fragment;
//! - trust domain: 1..=255 characters of `a-z 0-9 . - _`;
//! - namespace: a DNS label (1..=63 characters of `a-z 0-9 -`, not starting or ending in `-`);
//! - service: 1..=253 characters of `a-z A-Z 0-9 . - _`, not `.` or `..`;
//! - the whole ID at most 2048 bytes.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The URI scheme prefix of every SPIFFE ID.
pub const SCHEME: &str = "spiffe://";
/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit).
pub const MAX_LEN: usize = 2048;
const MAX_TRUST_DOMAIN: usize = 255;
const MAX_NAMESPACE: usize = 63;
const MAX_SERVICE: usize = 253;

/// A workload identity in the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service: String,
}

/// Why a string is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    MissingScheme(String),
    #[error("SPIFFE ID is {len} bytes long; at most {MAX_LEN} are allowed")]
    TooLong { len: usize },
    #[error("trust domain {0:?} is invalid: use 1 to 255 characters of a-z, 0-9, '.', '-', '_' (e.g. \"cluster.local\")")]
    InvalidTrustDomain(String),
    #[error("namespace {0:?} is invalid: use a DNS label (1 to 63 characters of a-z, 0-9, '-', not starting or ending with '-')")]
    InvalidNamespace(String),
    #[error("service {0:?} is invalid: use 1 to 253 characters of a-z, A-Z, 0-9, '.', '-', '_' (not \".\" or \"..\")")]
    InvalidService(String),
    #[error("SPIFFE ID {0:?} has path {1:?}; a mesh identity's path is \"/ns/<namespace>/sa/<service>\"")]
    BadPath(String, String),
    #[error("SPIFFE ID {0:?} must not carry a query, fragment, port or user info")]
    ForbiddenComponent(String),
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service: service.into(),
        };
        validate_trust_domain(&id.trust_domain)?;
        validate_namespace(&id.namespace)?;
        validate_service(&id.service)?;
        let len = id.uri_len();
        if len > MAX_LEN {
            return Err(SpiffeIdError::TooLong { len });
        }
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::MissingScheme(s.to_string()))?;
        if rest.contains(['?', '#', '@']) {
            return Err(SpiffeIdError::ForbiddenComponent(s.to_string()));
        }
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if trust_domain.contains(':') {
            return Err(SpiffeIdError::ForbiddenComponent(s.to_string()));
        }
        validate_trust_domain(trust_domain)?;
        let bad_path = || SpiffeIdError::BadPath(s.to_string(), path.to_string());
        let mut parts = path.split('/');
        // The path starts with '/', so the first part is empty.
        let (Some(""), Some("ns"), Some(namespace), Some("sa"), Some(service), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad_path());
        };
        Self::new(trust_domain, namespace, service)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The URI form, `spiffe://...`; the same as `to_string()`.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }

    fn uri_len(&self) -> usize {
        SCHEME.len()
            + self.trust_domain.len()
            + "/ns/".len()
            + self.namespace.len()
            + "/sa/".len()
            + self.service.len()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a trust domain name (used by the CA too, for its own trust domain).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let ok = !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::InvalidTrustDomain(td.to_string()))
    }
}

fn validate_namespace(ns: &str) -> Result<(), SpiffeIdError> {
    let ok = !ns.is_empty()
        && ns.len() <= MAX_NAMESPACE
        && !ns.starts_with('-')
        && !ns.ends_with('-')
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::InvalidNamespace(ns.to_string()))
    }
}

fn validate_service(sa: &str) -> Result<(), SpiffeIdError> {
    let ok = !sa.is_empty()
        && sa.len() <= MAX_SERVICE
        && sa != "."
        && sa != ".."
        && sa
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::InvalidService(sa.to_string()))
    }
}

/// Why a certificate does not carry a usable mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertIdentityError {
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("certificate has no URI subject alternative name (a mesh certificate carries exactly one SPIFFE ID)")]
    NoUriSan,
    #[error("certificate has {0} URI subject alternative names; a mesh certificate carries exactly one SPIFFE ID")]
    SeveralUriSans(usize),
    #[error("certificate URI SAN is not a mesh SPIFFE ID: {0}")]
    Invalid(#[from] SpiffeIdError),
}

/// The SPIFFE ID in a DER certificate's URI SAN. Per the X.509-SVID spec there must be exactly
/// one URI SAN; anything else is refused rather than guessed.
pub fn spiffe_id_from_cert(der: &[u8]) -> Result<SpiffeId, CertIdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?
        .ok_or(CertIdentityError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertIdentityError::NoUriSan),
        [uri] => Ok(SpiffeId::parse(uri)?),
        more => Err(CertIdentityError::SeveralUriSans(more.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service(), "reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        assert_eq!(
            id,
            SpiffeId::new("cluster.local", "default", "reviews").unwrap()
        );
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://cluster.local/ns/default/sa/reviews\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids_with_typed_errors() {
        use SpiffeIdError as E;
        type Check = fn(&SpiffeIdError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::MissingScheme(_))
            }),
            ("SPIFFE://cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::MissingScheme(_))
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, E::InvalidTrustDomain(_))
            }),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| {
                matches!(e, E::InvalidTrustDomain(_))
            }),
            ("spiffe://td:8080/ns/a/sa/b", |e| {
                matches!(e, E::ForbiddenComponent(_))
            }),
            ("spiffe://td/ns/a/sa/b?x=1", |e| {
                matches!(e, E::ForbiddenComponent(_))
            }),
            ("spiffe://td/ns/a/sa/b#f", |e| {
                matches!(e, E::ForbiddenComponent(_))
            }),
            ("spiffe://u@td/ns/a/sa/b", |e| {
                matches!(e, E::ForbiddenComponent(_))
            }),
            ("spiffe://td", |e| matches!(e, E::BadPath(..))),
            ("spiffe://td/", |e| matches!(e, E::BadPath(..))),
            ("spiffe://td/ns/a", |e| matches!(e, E::BadPath(..))),
            ("spiffe://td/ns/a/sa/b/", |e| matches!(e, E::BadPath(..))),
            ("spiffe://td/ns/a/sa/b/c", |e| matches!(e, E::BadPath(..))),
            ("spiffe://td/sa/b/ns/a", |e| matches!(e, E::BadPath(..))),
            ("spiffe://td/ns//sa/b", |e| {
                matches!(e, E::InvalidNamespace(_))
            }),
            ("spiffe://td/ns/A/sa/b", |e| {
                matches!(e, E::InvalidNamespace(_))
            }),
            ("spiffe://td/ns/-a/sa/b", |e| {
                matches!(e, E::InvalidNamespace(_))
            }),
            ("spiffe://td/ns/a/sa/", |e| {
                matches!(e, E::InvalidService(_))
            }),
            ("spiffe://td/ns/a/sa/..", |e| {
                matches!(e, E::InvalidService(_))
            }),
            ("spiffe://td/ns/a/sa/b%2f", |e| {
                matches!(e, E::InvalidService(_))
            }),
            ("spiffe://td/ns/a/sa/b c", |e| {
                matches!(e, E::InvalidService(_))
            }),
            ("spiffe://td/ns/a/sa/ü", |e| {
                matches!(e, E::InvalidService(_))
            }),
        ];
        for (input, check) in cases {
            let err = SpiffeId::parse(input).expect_err(input);
            assert!(check(&err), "{input}: unexpected error {err:?}");
            assert!(!err.to_string().is_empty());
        }
        let long = format!("spiffe://td/ns/a/sa/{}", "x".repeat(MAX_LEN));
        assert!(matches!(
            SpiffeId::parse(&long),
            Err(SpiffeIdError::TooLong { .. })
        ));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "",
            "spiffe://",
            "spiffe:///",
            "spiffe://\u{0}/ns/a/sa/b",
            "spiffe://ü/x",
        ] {
            let _ = SpiffeId::parse(s);
        }
    }
}
