//! JSON Web Key Sets: parsing, and where they come from (inline, file, URL) with a cache.
//!
//! Why a cache with these rules: an identity provider's JWKS changes rarely but must not be
//! fetched per request. Keys are kept for a TTL (20 minutes by default, Istio's refresh
//! interval); a token whose `kid` is unknown triggers one early refetch (the provider may have
//! rotated its key), at most once per `min_refetch_interval` so a flood of bad tokens cannot turn
//! into a flood of fetches; when a refetch fails the last good keys stay in use.
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Largest JWKS document accepted (inline, file or URL).
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// One usable verification key.
pub(crate) struct KeyEntry {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one.
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    pub curve: Option<EllipticCurve>,
    pub key: DecodingKey,
}

impl KeyEntry {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) || self.family != alg.family() {
            return false;
        }
        match (alg, &self.curve) {
            (Algorithm::ES256, Some(c)) => *c == EllipticCurve::P256,
            (Algorithm::ES384, Some(c)) => *c == EllipticCurve::P384,
            (Algorithm::EdDSA, Some(c)) => *c == EllipticCurve::Ed25519,
            _ => true,
        }
    }
}

pub(crate) struct KeySet {
    pub keys: Vec<KeyEntry>,
}

/// Parses a JWKS document. Keys that cannot verify signatures (encryption keys, unknown key
/// types or curves) are skipped; a document without any usable key is an error.
pub(crate) fn parse_jwks(text: &str) -> Result<KeySet, String> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!(
            "JWKS is {} bytes; at most {MAX_JWKS_BYTES} are accepted",
            text.len()
        ));
    }
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("JWKS must be a JSON object with a \"keys\" array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in entries.iter().enumerate() {
        match key_entry(raw) {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => {}
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    if keys.is_empty() {
        return Err(if skipped.is_empty() {
            "JWKS has no signature verification key".to_string()
        } else {
            format!("JWKS has no usable key ({})", skipped.join("; "))
        });
    }
    if !skipped.is_empty() {
        tracing::debug!(skipped = %skipped.join("; "), "JWKS keys ignored");
    }
    Ok(KeySet { keys })
}

fn key_entry(raw: &serde_json::Value) -> Result<Option<KeyEntry>, String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let alg = match &jwk.common.key_algorithm {
        None => None,
        Some(ka) => match Algorithm::try_from(*ka) {
            Ok(a) => Some(a),
            // An encryption algorithm (RSA-OAEP, ...): not a signing key.
            Err(_) if is_encryption(*ka) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        },
    };
    let (family, curve) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 | EllipticCurve::P384 => {
                (AlgorithmFamily::Ec, Some(p.curve.clone()))
            }
            _ => return Err(format!("curve {:?} is not supported", p.curve)),
        },
        AlgorithmParameters::OctetKeyPair(p) => (AlgorithmFamily::Ed, Some(p.curve.clone())),
        AlgorithmParameters::OctetKey(_) => (AlgorithmFamily::Hmac, None),
        _ => return Err("key type is not supported".into()),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Some(KeyEntry {
        kid: jwk.common.key_id.clone(),
        alg,
        family,
        curve,
        key,
    }))
}

fn is_encryption(ka: KeyAlgorithm) -> bool {
    matches!(
        ka,
        KeyAlgorithm::RSA1_5 | KeyAlgorithm::RSA_OAEP | KeyAlgorithm::RSA_OAEP_256
    )
}

/// Where a rule's keys come from.
pub(crate) enum Origin {
    Inline,
    File(std::path::PathBuf),
    Uri(http::Uri),
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Inline => "inline JWKS".into(),
            Origin::File(p) => format!("JWKS file {}", p.display()),
            Origin::Uri(u) => format!("JWKS at {u}"),
        }
    }
}

struct Cached {
    keys: Arc<KeySet>,
    fetched_at: Instant,
}

struct FetchState {
    cached: Option<Cached>,
    last_attempt: Option<Instant>,
}

/// A rule's keys with their cache.
pub(crate) struct KeySource {
    pub origin: Origin,
    state: Mutex<FetchState>,
}

/// Cache timing, from `JwtOptions`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachePolicy {
    pub ttl: Duration,
    pub min_refetch_interval: Duration,
}

impl KeySource {
    pub fn inline(keys: KeySet) -> Self {
        Self {
            origin: Origin::Inline,
            state: Mutex::new(FetchState {
                cached: Some(Cached {
                    keys: Arc::new(keys),
                    fetched_at: Instant::now(),
                }),
                last_attempt: None,
            }),
        }
    }

    pub fn remote(origin: Origin) -> Self {
        Self {
            origin,
            state: Mutex::new(FetchState {
                cached: None,
                last_attempt: None,
            }),
        }
    }

    /// The keys: cached while fresh; `refresh` asks for a refetch (an unknown `kid`). A source
    /// is fetched at most once per `min_refetch_interval`, whatever the reason; errors only when
    /// no keys were ever had.
    pub async fn keys(
        &self,
        refresh: bool,
        policy: CachePolicy,
        fetcher: &super::fetch::Fetcher,
    ) -> Result<Arc<KeySet>, String> {
        // One fetch at a time per source; concurrent callers wait and reuse its result.
        let mut st = self.state.lock().await;
        if let Origin::Inline = self.origin {
            return st
                .cached
                .as_ref()
                .map(|c| c.keys.clone())
                .ok_or_else(|| "inline JWKS has no keys".to_string());
        }
        let now = Instant::now();
        let recently_tried = st
            .last_attempt
            .is_some_and(|t| now.duration_since(t) < policy.min_refetch_interval);
        match &st.cached {
            Some(c) => {
                let fresh = now.duration_since(c.fetched_at) < policy.ttl;
                if (fresh && !refresh) || recently_tried {
                    return Ok(c.keys.clone());
                }
            }
            None if recently_tried => {
                return Err(format!(
                    "{} is unavailable (the last fetch failed moments ago)",
                    self.origin.describe()
                ))
            }
            None => {}
        }
        st.last_attempt = Some(now);
        let loaded = match &self.origin {
            Origin::File(path) => load_file(path).await,
            Origin::Uri(uri) => fetcher.get(uri).await,
            Origin::Inline => Err("inline JWKS is never loaded".to_string()),
        }
        .and_then(|text| parse_jwks(&text));
        match loaded {
            Ok(keys) => {
                let keys = Arc::new(keys);
                st.cached = Some(Cached {
                    keys: keys.clone(),
                    fetched_at: now,
                });
                Ok(keys)
            }
            Err(e) => {
                let what = self.origin.describe();
                match &st.cached {
                    Some(c) => {
                        tracing::warn!(source = %what, error = %e, "JWKS refresh failed; keeping the last good keys");
                        Ok(c.keys.clone())
                    }
                    None => Err(format!("{what}: {e}")),
                }
            }
        }
    }
}

async fn load_file(path: &std::path::Path) -> Result<String, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(format!(
            "file is {} bytes; at most {MAX_JWKS_BYTES} are accepted",
            meta.len()
        ));
    }
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read: {e}"))
}
