//! RequestAuthentication: JWT validation with keys inline, in a file, and behind a URL.
mod common;

use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use trellis_api::security::{JwksSource, JwtHeader, JwtRule};
use trellis_identity::jwt::{self, JwtErrorReason, JwtOptions, JwtValidator, TokenLocation};

const ISS: &str = "https://issuer.example";

/// A signing key and its public JWK.
struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    fn ec(kid: &str) -> Self {
        jwt::install_crypto_provider();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::finish(Algorithm::ES256, kid, encoding)
    }

    fn rsa(kid: &str) -> Self {
        jwt::install_crypto_provider();
        let pem = include_str!("fixtures/rsa-test-key.pem");
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        Self::finish(Algorithm::RS256, kid, encoding)
    }

    fn finish(alg: Algorithm, kid: &str, encoding: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        Self {
            alg,
            kid: kid.to_string(),
            encoding,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "reviews", "exp": now() + 600, "groups": ["readers"]})
}

fn rule(source: JwksSource) -> JwtRule {
    JwtRule {
        issuer: ISS.into(),
        audiences: vec!["reviews".into(), "ratings".into()],
        jwks: source,
        from_headers: vec![],
        from_params: vec![],
        forward_original_token: false,
    }
}

fn inline(keys: &[&SigningKey]) -> JwksSource {
    JwksSource {
        inline: Some(jwks(keys)),
        ..Default::default()
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn root() -> Uri {
    Uri::from_static("/api")
}

async fn reason(v: &JwtValidator, token: &str) -> JwtErrorReason {
    match v.validate(&bearer(token), &root()).await {
        Err(e) => {
            assert!(
                !e.to_string().contains(token),
                "the error must not echo the token"
            );
            e.reason
        }
        Ok(c) => panic!("token accepted: {c:?}"),
    }
}

#[tokio::test]
async fn a_good_token_is_accepted_es256_and_rs256() {
    for key in [SigningKey::ec("ec1"), SigningKey::rsa("rsa1")] {
        let v = JwtValidator::new(&[rule(inline(&[&key]))]).unwrap();
        let got = v
            .validate(&bearer(&key.sign(&claims())), &root())
            .await
            .unwrap()
            .expect("a token was present");
        assert_eq!(got.issuer, ISS);
        assert_eq!(got.subject.as_deref(), Some("alice"));
        assert_eq!(got.request_principal(), "https://issuer.example/alice");
        assert_eq!(got.claims["groups"][0], "readers");
        assert_eq!(got.location, TokenLocation::Header("authorization".into()));
        assert!(!got.forward_original_token);
    }
}

#[tokio::test]
async fn bad_tokens_are_rejected_with_a_reason() {
    let key = SigningKey::ec("k1");
    let v = JwtValidator::new(&[rule(inline(&[&key]))]).unwrap();

    // Signed by another key that claims the same kid.
    let impostor = SigningKey::ec("k1");
    assert_eq!(
        reason(&v, &impostor.sign(&claims())).await,
        JwtErrorReason::BadSignature
    );
    // Payload changed after signing.
    let good = key.sign(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let other = key.sign(&json!({"iss": ISS, "sub": "root", "aud": "reviews", "exp": now() + 600}));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(reason(&v, &forged).await, JwtErrorReason::BadSignature);

    let mut c = claims();
    c["aud"] = json!("billing");
    assert_eq!(
        reason(&v, &key.sign(&c)).await,
        JwtErrorReason::WrongAudience
    );
    let mut c = claims();
    c["aud"] = json!(["billing", "ratings"]);
    assert!(
        v.validate(&bearer(&key.sign(&c)), &root()).await.is_ok(),
        "any audience may match"
    );

    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    assert_eq!(reason(&v, &key.sign(&c)).await, JwtErrorReason::WrongIssuer);

    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    assert_eq!(reason(&v, &key.sign(&c)).await, JwtErrorReason::Expired);
    let mut c = claims();
    c["exp"] = json!(now() - 10);
    assert!(
        v.validate(&bearer(&key.sign(&c)), &root()).await.is_ok(),
        "within the leeway"
    );

    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    assert_eq!(reason(&v, &key.sign(&c)).await, JwtErrorReason::NotYetValid);

    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        reason(&v, &key.sign(&c)).await,
        JwtErrorReason::MissingClaim
    );

    // A mistyped exp is not ignored.
    let mut c = claims();
    c["exp"] = json!("99999999999");
    let r = reason(&v, &key.sign(&c)).await;
    assert!(
        matches!(
            r,
            JwtErrorReason::Malformed | JwtErrorReason::Expired | JwtErrorReason::MissingClaim
        ),
        "{r:?}"
    );

    let other_kid = SigningKey::ec("k2");
    assert_eq!(
        reason(&v, &other_kid.sign(&claims())).await,
        JwtErrorReason::UnknownKey
    );

    let long = "x".repeat(10_000);
    for junk in [
        "abc",
        "a.b.c",
        "a.b",
        "....",
        "eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.",
        long.as_str(),
    ] {
        assert_eq!(
            reason(&v, junk).await,
            JwtErrorReason::Malformed,
            "{junk:.20}"
        );
    }
    // alg: none with a valid-looking payload.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        good.split('.').nth(1).unwrap()
    );
    assert_eq!(reason(&v, &none).await, JwtErrorReason::Malformed);
}

#[tokio::test]
async fn requests_without_a_token_pass_through() {
    let key = SigningKey::ec("k1");
    let v = JwtValidator::new(&[rule(inline(&[&key]))]).unwrap();
    assert_eq!(v.validate(&HeaderMap::new(), &root()).await, Ok(None));
    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwdw=="),
    );
    assert_eq!(v.validate(&basic, &root()).await, Ok(None));
}

#[tokio::test]
async fn tokens_from_configured_headers_and_query_parameters() {
    let key = SigningKey::ec("k1");
    let mut r = rule(inline(&[&key]));
    r.from_headers = vec![JwtHeader {
        name: "x-jwt".into(),
        prefix: Some("Token ".into()),
    }];
    r.from_params = vec!["access_token".into()];
    r.forward_original_token = true;
    let v = JwtValidator::new(&[r]).unwrap();
    let token = key.sign(&claims());

    let mut h = HeaderMap::new();
    h.insert(
        "x-jwt",
        HeaderValue::from_str(&format!("token {token}")).unwrap(),
    );
    let got = v.validate(&h, &root()).await.unwrap().unwrap();
    assert_eq!(got.location, TokenLocation::Header("x-jwt".into()));
    assert!(got.forward_original_token);

    let uri: Uri = format!("/api?x=1&access_token={token}").parse().unwrap();
    let got = v.validate(&HeaderMap::new(), &uri).await.unwrap().unwrap();
    assert_eq!(got.location, TokenLocation::Query("access_token".into()));

    // Authorization is not read when the rule names its own places.
    assert_eq!(v.validate(&bearer(&token), &root()).await, Ok(None));

    // Two different tokens: refused rather than guessed between.
    let other = key.sign(&json!({"iss": ISS, "sub": "bob", "aud": "reviews", "exp": now() + 60}));
    let uri: Uri = format!("/api?access_token={other}").parse().unwrap();
    let err = v.validate(&h, &uri).await.unwrap_err();
    assert_eq!(err.reason, JwtErrorReason::MultipleTokens);
}

#[tokio::test]
async fn jwks_from_a_file() {
    let key = SigningKey::ec("k1");
    let dir = common::temp_dir("jwks");
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(&[&key])).unwrap();
    let v = JwtValidator::new(&[rule(JwksSource {
        file: Some(path.display().to_string()),
        ..Default::default()
    })])
    .unwrap();
    assert!(v
        .validate(&bearer(&key.sign(&claims())), &root())
        .await
        .unwrap()
        .is_some());

    let missing = JwtValidator::new(&[rule(JwksSource {
        file: Some(dir.join("nope.json").display().to_string()),
        ..Default::default()
    })])
    .unwrap();
    assert_eq!(
        reason(&missing, &key.sign(&claims())).await,
        JwtErrorReason::JwksUnavailable
    );
    assert_eq!(missing.prefetch().await.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A JWKS endpoint on 127.0.0.1 counting its hits; the body can be changed.
struct JwksServer {
    uri: String,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jwks_server(body: String, tls: Option<Arc<rustls::ServerConfig>>) -> JwksServer {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(Mutex::new(body));
    let (h, b) = (hits.clone(), body.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (h, b, tls) = (h.clone(), b.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let text = b.lock().unwrap().clone();
                    async move {
                        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(text),
                        )))
                    }
                });
                match tls {
                    Some(cfg) => {
                        if let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                    None => {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    }
                }
            });
        }
    });
    JwksServer {
        uri: format!("{scheme}://127.0.0.1:{}/.well-known/jwks.json", addr.port()),
        hits,
        body,
        task,
    }
}

fn url_rule(uri: &str) -> JwtRule {
    rule(JwksSource {
        uri: Some(uri.to_string()),
        ..Default::default()
    })
}

#[tokio::test]
async fn jwks_from_a_url_is_cached_and_refetched_for_an_unknown_kid() {
    let k1 = SigningKey::ec("k1");
    let k2 = SigningKey::rsa("k2");
    let server = jwks_server(jwks(&[&k1]), None).await;
    let options = JwtOptions {
        min_refetch_interval: Duration::ZERO,
        ..Default::default()
    };
    let v = JwtValidator::with_options(&[url_rule(&server.uri)], options).unwrap();
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        0,
        "nothing fetched before first use"
    );

    for _ in 0..3 {
        assert!(v
            .validate(&bearer(&k1.sign(&claims())), &root())
            .await
            .unwrap()
            .is_some());
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "keys are cached");

    // The issuer rotates to k2: a token with the new kid makes the validator look again.
    *server.body.lock().unwrap() = jwks(&[&k1, &k2]);
    assert!(v
        .validate(&bearer(&k2.sign(&claims())), &root())
        .await
        .unwrap()
        .is_some());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    assert!(v
        .validate(&bearer(&k2.sign(&claims())), &root())
        .await
        .unwrap()
        .is_some());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // A kid the issuer does not have: one more look, then unknown-key.
    let stranger = SigningKey::ec("k3");
    assert_eq!(
        reason(&v, &stranger.sign(&claims())).await,
        JwtErrorReason::UnknownKey
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn unknown_kids_do_not_cause_a_fetch_storm() {
    let k1 = SigningKey::ec("k1");
    let server = jwks_server(jwks(&[&k1]), None).await;
    let v = JwtValidator::new(&[url_rule(&server.uri)]).unwrap(); // 30 s between fetches
    assert!(v
        .validate(&bearer(&k1.sign(&claims())), &root())
        .await
        .is_ok());
    let stranger = SigningKey::ec("k9");
    for _ in 0..10 {
        assert_eq!(
            reason(&v, &stranger.sign(&claims())).await,
            JwtErrorReason::UnknownKey
        );
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_jwks_url_is_jwks_unavailable() {
    let key = SigningKey::ec("k1");
    // Bind and drop: a port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = JwtOptions {
        fetch_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let v = JwtValidator::with_options(
        &[url_rule(&format!("http://127.0.0.1:{port}/jwks"))],
        options,
    )
    .unwrap();
    assert_eq!(
        reason(&v, &key.sign(&claims())).await,
        JwtErrorReason::JwksUnavailable
    );
    let server = jwks_server("not json".into(), None).await;
    let v = JwtValidator::new(&[url_rule(&server.uri)]).unwrap();
    assert_eq!(
        reason(&v, &key.sign(&claims())).await,
        JwtErrorReason::JwksUnavailable
    );
}

#[tokio::test]
async fn jwks_over_https_with_an_extra_root() {
    // An IdP with a certificate from a private CA, for 127.0.0.1.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_issuer)
        .unwrap();
    let server_cfg =
        rustls::ServerConfig::builder_with_provider(trellis_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
    let key = SigningKey::ec("k1");
    let server = jwks_server(jwks(&[&key]), Some(Arc::new(server_cfg))).await;

    let v = JwtValidator::with_options(
        &[url_rule(&server.uri)],
        JwtOptions {
            extra_roots: vec![ca_cert.der().clone()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(v
        .validate(&bearer(&key.sign(&claims())), &root())
        .await
        .unwrap()
        .is_some());

    // Without the private root the IdP is not trusted.
    let untrusted = JwtValidator::new(&[url_rule(&server.uri)]).unwrap();
    assert_eq!(
        reason(&untrusted, &key.sign(&claims())).await,
        JwtErrorReason::JwksUnavailable
    );
}

#[test]
fn invalid_rules_are_refused_when_the_validator_is_built() {
    let bad_inline = rule(JwksSource {
        inline: Some("{\"keys\": 3}".into()),
        ..Default::default()
    });
    assert!(JwtValidator::new(&[bad_inline]).is_err());
    let two = rule(JwksSource {
        inline: Some("{}".into()),
        uri: Some("http://x".into()),
        ..Default::default()
    });
    assert!(JwtValidator::new(&[two]).is_err());
    let not_http = url_rule("ftp://x/jwks");
    let err = JwtValidator::new(&[not_http]).unwrap_err();
    assert!(err.to_string().contains("jwtRules[0]"), "{err}");
}

#[tokio::test]
async fn hmac_keys_from_an_oct_jwks() {
    jwt::install_crypto_provider();
    // The fixture's inline `oct` key ("secret").
    let v = JwtValidator::new(&[rule(JwksSource {
        inline: Some(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}"#.into()),
        ..Default::default()
    })])
    .unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("h".into());
    let token =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"secret")).unwrap();
    assert!(v
        .validate(&bearer(&token), &root())
        .await
        .unwrap()
        .is_some());
    let wrong =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"guess")).unwrap();
    assert_eq!(reason(&v, &wrong).await, JwtErrorReason::BadSignature);
}
