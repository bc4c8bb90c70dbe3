//! No input makes the crate panic: truncated and bit-flipped CSRs, certificates, keys and
//! tokens are errors.
mod common;

use common::*;
use std::time::Duration;
use trellis_identity::rustls::pki_types::CertificateDer;
use trellis_identity::spiffe;
use trellis_identity::tls::{CertSource, TrustSource};
use trellis_identity::WorkloadKey;

fn pem(label: &str, der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new(label, der.to_vec()))
}

/// Every truncation and, for every byte, one flipped bit.
fn mutations(der: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let truncations = (0..der.len()).map(|n| der[..n].to_vec());
    let flips = (0..der.len()).map(|i| {
        let mut v = der.to_vec();
        v[i] ^= 1 << (i % 8);
        v
    });
    truncations.chain(flips)
}

#[test]
fn mutated_csrs_are_errors() {
    let ca = new_ca();
    let key = WorkloadKey::generate().unwrap();
    let csr_pem = key.csr_pem(&id("a")).unwrap();
    let der = ::pem::parse(&csr_pem).unwrap().into_contents();
    let mut accepted = 0;
    for m in mutations(&der) {
        if ca
            .sign_csr(
                &pem("CERTIFICATE REQUEST", &m),
                &id("a"),
                Duration::from_secs(60),
            )
            .is_ok()
        {
            accepted += 1;
        }
    }
    // The signed part cannot change. One flip outside it survives: the signature algorithm's
    // OID tag 0x06 turned into 0x02, which x509-parser reads as the same OID; the request still
    // proves possession of the same key, so signing it is harmless.
    assert!(accepted <= 1, "{accepted} mutated CSRs were signed");
    for junk in [
        "",
        "-----BEGIN CERTIFICATE REQUEST-----",
        "\u{0}\u{1}",
        &"A".repeat(5000),
    ] {
        assert!(ca
            .sign_csr(junk, &id("a"), Duration::from_secs(60))
            .is_err());
    }
}

#[test]
fn mutated_certificates_and_keys_are_errors_or_harmless() {
    let ca = new_ca();
    let (bundle, key) = issue(&ca, "reviews");
    let leaf = certs_of(&bundle).remove(0);
    let key_pem = key.private_key_pem();
    let key_der = ::pem::parse(key_pem.expose()).unwrap().into_contents();
    let src = CertSource::new();
    for m in mutations(leaf.as_ref()) {
        let _ = spiffe::spiffe_id_from_cert(&m);
        let _ = src.set_pem(&pem("CERTIFICATE", &m), key_pem.expose());
        let _ = TrustSource::new(vec![CertificateDer::from(m.clone())]);
    }
    for m in mutations(&key_der) {
        let _ = WorkloadKey::from_pem(&pem("PRIVATE KEY", &m));
        let _ = src.set_pem(&bundle.cert_chain_pem, &pem("PRIVATE KEY", &m));
    }
    // A mismatched key is refused outright.
    let other = WorkloadKey::generate().unwrap();
    assert!(src
        .set_pem(&bundle.cert_chain_pem, other.private_key_pem().expose())
        .is_err());
    let state = ca.to_state();
    let mut broken = state.clone();
    broken.signers[0].cert_chain_pem = "garbage".into();
    assert!(trellis_identity::CertificateAuthority::from_state(&broken).is_err());
}

#[tokio::test]
async fn mutated_tokens_are_errors() {
    use trellis_api::security::{JwksSource, JwtRule};
    use trellis_identity::jwt::JwtValidator;
    trellis_identity::jwt::install_crypto_provider();
    let pair = rcgen::KeyPair::generate().unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k".into());
    let rule = JwtRule {
        issuer: "iss".into(),
        audiences: vec![],
        jwks: JwksSource {
            inline: Some(serde_json::json!({ "keys": [jwk] }).to_string()),
            ..Default::default()
        },
        from_headers: vec![],
        from_params: vec![],
        forward_original_token: false,
    };
    let v = JwtValidator::new(&[rule]).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"iss": "iss", "sub": "s", "exp": exp}),
        &enc,
    )
    .unwrap();
    let uri = http::Uri::from_static("/");
    let check = |t: &str| {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {t}")) {
            h.insert(http::header::AUTHORIZATION, v);
        }
        h
    };
    assert!(v.validate(&check(&token), &uri).await.unwrap().is_some());
    let mut accepted = 0;
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        for replacement in [b'A', b'-', b'.', b'_', b'z'] {
            if bytes[i] == replacement {
                continue;
            }
            let mut m = bytes.to_vec();
            m[i] = replacement;
            let t = String::from_utf8(m).unwrap();
            if let Ok(Some(_)) = v.validate(&check(&t), &uri).await {
                accepted += 1;
            }
        }
        let _ = v.validate(&check(&token[..i]), &uri).await;
    }
    // Any changed character breaks the token (non-canonical base64 is refused too).
    assert!(accepted == 0, "{accepted} mutated tokens were accepted");
}
