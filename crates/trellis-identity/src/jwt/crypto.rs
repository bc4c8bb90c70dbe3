//! A `ring` backend for `jsonwebtoken`.
//!
//! Why: jsonwebtoken 10+ needs a crypto provider, and ships only `aws-lc-rs` (a C/cmake build)
//! and RustCrypto (which pulls the `rsa` crate, with an open timing advisory, and a second set of
//! curve implementations). The mesh already carries `ring` for rustls and rcgen, so the JWT code
//! uses it too: one audited crypto library, nothing extra to build. The provider is installed
//! process-wide by [`install`]; `JwtValidator::new` calls it.
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind, Result};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::{digest, hmac, signature as rs};

/// Installs the `ring` provider as jsonwebtoken's process default, unless one is installed
/// already (then that one stays; both verify the same way).
pub fn install() {
    let _ = PROVIDER.install_default();
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_components_from_private_key,
        compute_digest,
    },
};

fn sig_err(e: impl std::fmt::Display) -> signature::Error {
    signature::Error::from_source(e.to_string())
}

// ---- signers -------------------------------------------------------------------------------

enum RingSigner {
    Hmac(Algorithm, hmac::Key),
    Ecdsa(Algorithm, rs::EcdsaKeyPair),
    Rsa(Algorithm, &'static dyn rs::RsaEncoding, rs::RsaKeyPair),
    Ed(rs::Ed25519KeyPair),
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        match self {
            RingSigner::Hmac(_, key) => Ok(hmac::sign(key, msg).as_ref().to_vec()),
            RingSigner::Ecdsa(_, pair) => pair
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(sig_err),
            RingSigner::Rsa(_, padding, pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*padding, &SystemRandom::new(), msg, &mut out)
                    .map_err(sig_err)?;
                Ok(out)
            }
            RingSigner::Ed(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        match self {
            RingSigner::Hmac(a, _) | RingSigner::Ecdsa(a, _) | RingSigner::Rsa(a, _, _) => *a,
            RingSigner::Ed(_) => Algorithm::EdDSA,
        }
    }
}

fn rsa_key_pair(der: &[u8]) -> Result<rs::RsaKeyPair> {
    rs::RsaKeyPair::from_der(der)
        .or_else(|_| rs::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()).into())
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let family_ok = key.family() == alg.family();
    if !family_ok {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let bytes = key.as_bytes();
    let rng = SystemRandom::new();
    let signer = match alg {
        Algorithm::HS256 => RingSigner::Hmac(*alg, hmac::Key::new(hmac::HMAC_SHA256, bytes)),
        Algorithm::HS384 => RingSigner::Hmac(*alg, hmac::Key::new(hmac::HMAC_SHA384, bytes)),
        Algorithm::HS512 => RingSigner::Hmac(*alg, hmac::Key::new(hmac::HMAC_SHA512, bytes)),
        Algorithm::ES256 | Algorithm::ES384 => {
            let signing = if *alg == Algorithm::ES256 {
                &rs::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &rs::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = rs::EcdsaKeyPair::from_pkcs8(signing, bytes, &rng)
                .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
            RingSigner::Ecdsa(*alg, pair)
        }
        Algorithm::RS256 => RingSigner::Rsa(*alg, &rs::RSA_PKCS1_SHA256, rsa_key_pair(bytes)?),
        Algorithm::RS384 => RingSigner::Rsa(*alg, &rs::RSA_PKCS1_SHA384, rsa_key_pair(bytes)?),
        Algorithm::RS512 => RingSigner::Rsa(*alg, &rs::RSA_PKCS1_SHA512, rsa_key_pair(bytes)?),
        Algorithm::PS256 => RingSigner::Rsa(*alg, &rs::RSA_PSS_SHA256, rsa_key_pair(bytes)?),
        Algorithm::PS384 => RingSigner::Rsa(*alg, &rs::RSA_PSS_SHA384, rsa_key_pair(bytes)?),
        Algorithm::PS512 => RingSigner::Rsa(*alg, &rs::RSA_PSS_SHA512, rsa_key_pair(bytes)?),
        Algorithm::EdDSA => RingSigner::Ed(
            rs::Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?,
        ),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(signer))
}

// ---- verifiers -----------------------------------------------------------------------------

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let unparsed = |alg: &'static dyn rs::VerificationAlgorithm| {
            let bytes = self.key.try_get_as_bytes().map_err(sig_err)?;
            rs::UnparsedPublicKey::new(alg, bytes)
                .verify(msg, sig)
                .map_err(sig_err)
        };
        let rsa = |params: &'static rs::RsaParameters| match self.key.kind() {
            DecodingKeyKind::SecretOrDer(der) => rs::UnparsedPublicKey::new(params, der)
                .verify(msg, sig)
                .map_err(sig_err),
            DecodingKeyKind::RsaModulusExponent { n, e } => rs::RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .map_err(sig_err),
        };
        let mac = |alg: hmac::Algorithm| {
            let secret = self.key.try_get_as_bytes().map_err(sig_err)?;
            hmac::verify(&hmac::Key::new(alg, secret), msg, sig).map_err(sig_err)
        };
        match self.alg {
            Algorithm::HS256 => mac(hmac::HMAC_SHA256),
            Algorithm::HS384 => mac(hmac::HMAC_SHA384),
            Algorithm::HS512 => mac(hmac::HMAC_SHA512),
            Algorithm::ES256 => unparsed(&rs::ECDSA_P256_SHA256_FIXED),
            Algorithm::ES384 => unparsed(&rs::ECDSA_P384_SHA384_FIXED),
            Algorithm::EdDSA => unparsed(&rs::ED25519),
            Algorithm::RS256 => rsa(&rs::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => rsa(&rs::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => rsa(&rs::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => rsa(&rs::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => rsa(&rs::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => rsa(&rs::RSA_PSS_2048_8192_SHA512),
            _ => Err(sig_err("unsupported algorithm")),
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    // The key's family must fit the algorithm: no HMAC with an RSA public key as the secret.
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

// ---- key utilities (JWK building and thumbprints) ------------------------------------------

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let pair = rsa_key_pair(der)?;
    let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((c.n, c.e))
}

fn rsa_components_from_public_key(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    Err(ErrorKind::InvalidRsaKey(
        "RSA public key parsing is not supported by the ring backend".into(),
    )
    .into())
}

fn ec_components_from_private_key(
    der: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (signing, curve, len) = match alg {
        Algorithm::ES256 => (
            &rs::ECDSA_P256_SHA256_FIXED_SIGNING,
            EllipticCurve::P256,
            32,
        ),
        Algorithm::ES384 => (
            &rs::ECDSA_P384_SHA384_FIXED_SIGNING,
            EllipticCurve::P384,
            48,
        ),
        _ => return Err(ErrorKind::InvalidEcdsaKey.into()),
    };
    let pair = rs::EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
        .map_err(|_| Error::from(ErrorKind::InvalidEcdsaKey))?;
    let point = rs::KeyPair::public_key(&pair).as_ref();
    match point.split_first() {
        Some((4, xy)) if xy.len() == 2 * len => {
            let (x, y) = xy.split_at(len);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn ed_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => {
            let pair = rs::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| Error::from(ErrorKind::InvalidEddsaKey))?;
            Ok(rs::KeyPair::public_key(&pair).as_ref().to_vec())
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(digest::digest(alg, data).as_ref().to_vec())
}
