//! Identity and security building blocks of the Trellis mesh (issue 5).
//!
//! Everything a proxy or the control plane needs to give workloads a cryptographic identity and
//! to decide who may call whom, as plain library code with no process or network setup of its
//! own, so each part can be tested alone and wired in by the proxy (`trellis-proxy`) and the
//! control plane (`trellis-control`):
//!
//! | module | what it is |
//! |---|---|
//! | [`spiffe`] | `spiffe://<trust-domain>/ns/<namespace>/sa/<service>` identities |
//! | [`ca`] | the control plane's certificate authority: roots (several during a rotation), CSR signing |
//! | [`keys`] | a workload's own key pair and CSR, and writing secrets with mode 0600 |
//! | [`tls`] | rustls 0.23 configs for mesh mTLS (TLS 1.3 only) with hot-swappable certificate and trust bundle, peer identity, and the renewal [`tls::Rotator`] |
//! | [`jwt`] | `RequestAuthentication`: JWT validation against JWKS (inline, file, URL) |
//! | [`authz`] | `AuthorizationPolicy`: allow/deny decisions on the inbound side |
//!
//! All cryptography uses `ring` (through rustls, rcgen and a `ring` backend for
//! `jsonwebtoken`), so the crate builds on a machine with only Rust and a C compiler: no cmake,
//! NASM or protoc. Private keys never appear in `Debug` output or logs.
#![forbid(unsafe_code)]

pub mod authz;
pub mod ca;
pub mod jwt;
pub mod keys;
mod pem;
pub mod spiffe;
pub mod tls;

pub use authz::{Authorizer, Decision, RequestAttrs};
pub use ca::{CaState, CertBundle, CertificateAuthority};
pub use jwt::{Claims, JwtError, JwtValidator};
pub use keys::WorkloadKey;
pub use pem::PemError;
pub use spiffe::SpiffeId;
pub use tls::{CertSource, ClientConfigs, Rotator, TrustSource};

/// The rustls version these configs are built with, re-exported so callers use the same one.
pub use rustls;
/// The tokio-rustls version matching [`rustls`], re-exported for the same reason.
pub use tokio_rustls;

#[cfg(test)]
mod tests {
    /// The proxy shares these across tasks and awaits `validate` inside `Send` futures.
    #[test]
    fn shared_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::JwtValidator>();
        send_sync::<crate::Authorizer>();
        send_sync::<crate::CertificateAuthority>();
        send_sync::<crate::CertSource>();
        send_sync::<crate::TrustSource>();
        send_sync::<crate::ClientConfigs>();
        send_sync::<crate::Rotator>();
        fn send<T: Send>(_: &T) {}
        let v = crate::JwtValidator::new(&[]).unwrap();
        let (h, u) = (http::HeaderMap::new(), http::Uri::from_static("/"));
        let fut = v.validate(&h, &u);
        send(&fut);
    }
}
