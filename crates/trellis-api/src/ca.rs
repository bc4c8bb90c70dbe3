//! The mesh's certificate authority as the control plane keeps it in the store.
//!
//! Two kinds, both written only by the control plane (the API refuses them from users):
//! - `TrustBundle` (one, named `mesh`): the roots every proxy trusts, pushed to all of them like
//!   the `MeshConfig`. During a root rotation it holds both the old and the new root.
//! - `CertificateAuthority` (one, named `mesh`): the signers with their private keys. It never
//!   leaves the control plane: views, `get` and `describe` leave it out.
//!
//! Keeping both in the store is what lets several control-plane replicas sign with one CA and
//! lets a root rotation started on one replica reach every proxy through any other.
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Name of the one `TrustBundle` and the one `CertificateAuthority`.
pub const MESH_CA_NAME: &str = "mesh";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustBundle {
    pub metadata: ObjectMeta,
    pub spec: TrustBundleSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrustBundleSpec {
    pub trust_domain: String,
    /// Root certificates, PEM, one per entry.
    pub roots: Vec<String>,
}

impl TrustBundleSpec {
    /// The roots as one concatenated PEM text.
    pub fn roots_pem(&self) -> String {
        self.roots.concat()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateAuthority {
    pub metadata: ObjectMeta,
    pub spec: CertificateAuthoritySpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateAuthoritySpec {
    pub trust_domain: String,
    /// Id of the signer that issues new certificates.
    pub active: String,
    pub signers: Vec<CaSigner>,
    /// The join token proxies and the CLI present to the control plane, generated on first start
    /// and kept here so every replica (and every restart) accepts the same one. Absent when the
    /// operator always passes the token explicitly and none was generated yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<SecretText>,
}

/// One signer: its certificate followed by its chain up to the root, and its private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaSigner {
    pub id: String,
    pub cert_chain_pem: String,
    pub key_pem: SecretText,
}

/// Text that must never show up in logs: `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_text_is_redacted_in_debug() {
        let s = SecretText("-----BEGIN PRIVATE KEY-----".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"-----BEGIN PRIVATE KEY-----\""
        );
    }

    #[test]
    fn join_token_is_optional_and_redacted() {
        let spec: CertificateAuthoritySpec =
            serde_json::from_str(r#"{"trustDomain":"cluster.local","active":"a","signers":[]}"#)
                .unwrap();
        assert_eq!(spec.join_token, None);
        assert!(!serde_json::to_string(&spec).unwrap().contains("joinToken"));
        let spec = CertificateAuthoritySpec {
            join_token: Some(SecretText("s3cret".into())),
            ..spec
        };
        assert!(!format!("{spec:?}").contains("s3cret"));
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""joinToken":"s3cret""#), "{json}");
    }
}
