//! The CA as store resources: `CertificateAuthority/default/mesh` (the signers with their keys)
//! and `TrustBundle/default/mesh` (their roots), and the conversions between those resources and
//! [`trellis_identity::CertificateAuthority`]. Kept apart from the lifecycle in `mod.rs` so the
//! mapping (and where key material passes) is in one small place.
use crate::store::{ResourceKey, Stored};
use trellis_api::ca::{
    self as api, CaSigner, CertificateAuthoritySpec, SecretText, TrustBundleSpec, MESH_CA_NAME,
};
use trellis_api::meta::{ObjectMeta, DEFAULT_NAMESPACE};
use trellis_api::Resource;
use trellis_identity::ca::{CaError, CaState, SignerState};
use trellis_identity::keys::SecretPem;
use trellis_identity::CertificateAuthority;

pub const CA_KIND: &str = "CertificateAuthority";
pub const BUNDLE_KIND: &str = "TrustBundle";

pub fn ca_key() -> ResourceKey {
    ResourceKey::new(CA_KIND, DEFAULT_NAMESPACE, MESH_CA_NAME)
}

pub fn bundle_key() -> ResourceKey {
    ResourceKey::new(BUNDLE_KIND, DEFAULT_NAMESPACE, MESH_CA_NAME)
}

fn meta() -> ObjectMeta {
    let mut m = ObjectMeta::new(MESH_CA_NAME);
    m.namespace = DEFAULT_NAMESPACE.to_string();
    m
}

/// The spec of a stored `CertificateAuthority`, or `None` if `stored` is another kind.
pub fn ca_spec(stored: &Stored) -> Option<&CertificateAuthoritySpec> {
    match &stored.resource {
        Resource::CertificateAuthority(c) => Some(&c.spec),
        _ => None,
    }
}

/// The spec of a stored `TrustBundle`, or `None` if `stored` is another kind.
pub fn bundle_spec_of(stored: &Stored) -> Option<&TrustBundleSpec> {
    match &stored.resource {
        Resource::TrustBundle(b) => Some(&b.spec),
        _ => None,
    }
}

/// Rebuilds the CA a stored spec describes (checking every key against its certificate).
pub fn ca_from_spec(spec: &CertificateAuthoritySpec) -> Result<CertificateAuthority, CaError> {
    let state = CaState {
        trust_domain: spec.trust_domain.clone(),
        active: spec.active.clone(),
        signers: spec
            .signers
            .iter()
            .map(|s| SignerState {
                id: s.id.clone(),
                cert_chain_pem: s.cert_chain_pem.clone(),
                key_pem: SecretPem::new(s.key_pem.0.clone()),
            })
            .collect(),
    };
    CertificateAuthority::from_state(&state)
}

/// The resource that stores `ca` (and the join token kept with it).
pub fn ca_resource(ca: &CertificateAuthority, join_token: Option<SecretText>) -> Resource {
    let state = ca.to_state();
    Resource::CertificateAuthority(api::CertificateAuthority {
        metadata: meta(),
        spec: CertificateAuthoritySpec {
            trust_domain: state.trust_domain,
            active: state.active,
            signers: state
                .signers
                .into_iter()
                .map(|s| CaSigner {
                    id: s.id,
                    cert_chain_pem: s.cert_chain_pem,
                    key_pem: SecretText(s.key_pem.expose().to_string()),
                })
                .collect(),
            join_token,
        },
    })
}

/// What the `TrustBundle` must say for `ca`: its roots, one PEM each, in signer order.
pub fn bundle_spec(ca: &CertificateAuthority) -> TrustBundleSpec {
    TrustBundleSpec {
        trust_domain: ca.trust_domain().to_string(),
        roots: ca
            .trust_bundle()
            .iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
            .collect(),
    }
}

pub fn bundle_resource(spec: TrustBundleSpec) -> Resource {
    Resource::TrustBundle(api::TrustBundle {
        metadata: meta(),
        spec,
    })
}
