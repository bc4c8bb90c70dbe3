//! `RequestAuthentication`: validating end-user JWTs on the inbound side.
//!
//! Semantics (Istio's):
//! - A request **without** a token passes ([`JwtValidator::validate`] returns `Ok(None)`);
//!   whether anonymous requests are acceptable is for `AuthorizationPolicy` to say (for
//!   example with `requestPrincipals: ["*"]`).
//! - A request **with** a token that does not validate is refused: `Err(JwtError)` carries a
//!   short, stable [`JwtErrorReason`] (`expired`, `bad-signature`, `wrong-audience`, ...) for the
//!   proxy's 401 and its metrics, and a detail for the log.
//! - Where a token is looked for: each rule's `fromHeaders` (with their prefix, e.g.
//!   `Bearer `, matched case-insensitively) and `fromParams`; `Authorization: Bearer <token>`
//!   when a rule lists neither. Several different tokens in one request are refused
//!   (`multiple-tokens`) rather than guessed between.
//! - The token's `iss` picks the rule (each issuer has one rule); a token whose issuer has no
//!   rule, or that was found in a place its issuer's rule does not read, is `wrong-issuer`.
//! - Checks: signature (by `kid` when the token names one, else every key of a fitting type),
//!   `iss`, `aud` (any configured audience matches any token audience; not checked when the rule
//!   lists none), `exp` (required unless `JwtOptions::require_exp` is off) and `nbf`, with a
//!   leeway of 60 s. Accepted algorithms: RS256/384/512, PS256/384/512, ES256/384, EdDSA, and
//!   HS256/384/512 when the JWKS holds an `oct` key. `alg: none` is never accepted.
//! - Keys come from the rule's JWKS: inline (parsed when the validator is built), a file or a
//!   URL (loaded on first use and cached; see [`jwks`] for the refresh rules).
//!
//! The validated [`Claims`] feed `AuthorizationPolicy` (`requestPrincipals` as `iss/sub`,
//! `when` conditions on claims) through [`crate::authz::RequestAttrs`].
mod crypto;
mod fetch;
pub mod jwks;

use jsonwebtoken::{Algorithm, Validation};
use jwks::{CachePolicy, KeySource, Origin};
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use std::fmt;
use std::time::Duration;
use trellis_api::security::{JwtRule, RequestAuthentication};

pub use crypto::install as install_crypto_provider;

/// Tuning of a [`JwtValidator`].
#[derive(Debug, Clone)]
pub struct JwtOptions {
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// How long fetched keys are used before they are fetched again.
    pub jwks_ttl: Duration,
    /// A source is fetched at most this often (also when a token names an unknown `kid`).
    pub min_refetch_interval: Duration,
    /// Timeout of one JWKS fetch.
    pub fetch_timeout: Duration,
    /// Refuse tokens without `exp` (`missing-claim`).
    pub require_exp: bool,
    /// Roots trusted for `https://` JWKS URLs besides the system's.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for JwtOptions {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(60),
            jwks_ttl: Duration::from_secs(20 * 60),
            min_refetch_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            require_exp: true,
            extra_roots: Vec::new(),
        }
    }
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("jwtRules[{index}] (issuer {issuer:?}): {detail}")]
    Rule {
        index: usize,
        issuer: String,
        detail: String,
    },
}

/// Short, stable reasons for a refused token: the proxy's 401 body and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtErrorReason {
    Malformed,
    BadSignature,
    UnknownKey,
    UnsupportedAlgorithm,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    MultipleTokens,
    JwksUnavailable,
}

impl JwtErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad-signature",
            Self::UnknownKey => "unknown-key",
            Self::UnsupportedAlgorithm => "unsupported-algorithm",
            Self::Expired => "expired",
            Self::NotYetValid => "not-yet-valid",
            Self::WrongIssuer => "wrong-issuer",
            Self::WrongAudience => "wrong-audience",
            Self::MissingClaim => "missing-claim",
            Self::MultipleTokens => "multiple-tokens",
            Self::JwksUnavailable => "jwks-unavailable",
        }
    }
}

impl fmt::Display for JwtErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token. `Display` is `reason: detail`; the detail never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct JwtError {
    pub reason: JwtErrorReason,
    pub detail: String,
}

impl JwtError {
    fn new(reason: JwtErrorReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Where a token was found, so the proxy can strip it when `forwardOriginalToken` is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header (lower-case name).
    Header(String),
    /// A query parameter.
    Query(String),
}

/// A validated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub issuer: String,
    pub subject: Option<String>,
    /// The whole payload.
    pub claims: Value,
    pub location: TokenLocation,
    /// The matching rule's `forwardOriginalToken`.
    pub forward_original_token: bool,
}

impl Claims {
    /// `iss/sub`, what `requestPrincipals` match (`iss/` when there is no `sub`).
    pub fn request_principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject.as_deref().unwrap_or(""))
    }
}

struct Rule {
    issuer: String,
    audiences: Vec<String>,
    locations: Vec<Location>,
    forward: bool,
    keys: KeySource,
}

#[derive(Debug, Clone)]
enum Location {
    Header {
        name: http::HeaderName,
        prefix: String,
    },
    Query(String),
}

/// Validates tokens against a service's `jwtRules`. Cheap to share (`Arc`) across requests.
pub struct JwtValidator {
    rules: Vec<Rule>,
    options: JwtOptions,
    fetcher: fetch::Fetcher,
}

impl fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field(
                "rules",
                &self
                    .rules
                    .iter()
                    .map(|r| format!("{} ({})", r.issuer, r.keys.origin.describe()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The `jwtRules` of every `RequestAuthentication` for `service`, in order.
pub fn rules_for_service(service: &str, resources: &[RequestAuthentication]) -> Vec<JwtRule> {
    resources
        .iter()
        .filter(|r| r.spec.service == service)
        .flat_map(|r| r.spec.jwt_rules.iter().cloned())
        .collect()
}

impl JwtValidator {
    pub fn new(rules: &[JwtRule]) -> Result<Self, JwtConfigError> {
        Self::with_options(rules, JwtOptions::default())
    }

    /// Builds the validator; inline JWKS are parsed now, files and URLs on first use.
    pub fn with_options(rules: &[JwtRule], options: JwtOptions) -> Result<Self, JwtConfigError> {
        crypto::install();
        let mut out = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let err = |detail: String| JwtConfigError::Rule {
                index,
                issuer: rule.issuer.clone(),
                detail,
            };
            if rule.issuer.is_empty() {
                return Err(err("issuer must not be empty".into()));
            }
            let keys = match (&rule.jwks.inline, &rule.jwks.file, &rule.jwks.uri) {
                (Some(text), None, None) => KeySource::inline(
                    jwks::parse_jwks(text).map_err(|e| err(format!("jwks.inline: {e}")))?,
                ),
                (None, Some(path), None) if !path.is_empty() => {
                    KeySource::remote(Origin::File(path.into()))
                }
                (None, None, Some(uri)) => {
                    let parsed: http::Uri = uri
                        .parse()
                        .map_err(|e| err(format!("jwks.uri {uri:?}: {e}")))?;
                    match parsed.scheme_str() {
                        Some("http" | "https") if parsed.host().is_some() => {}
                        _ => {
                            return Err(err(format!(
                                "jwks.uri {uri:?} is not an http:// or https:// URL"
                            )))
                        }
                    }
                    KeySource::remote(Origin::Uri(parsed))
                }
                _ => {
                    return Err(err(
                        "jwks must set exactly one of inline, file and uri".into()
                    ))
                }
            };
            let mut locations = Vec::new();
            for h in &rule.from_headers {
                let name = http::HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| err(format!("fromHeaders name {:?}: {e}", h.name)))?;
                locations.push(Location::Header {
                    name,
                    prefix: h.prefix.clone().unwrap_or_default(),
                });
            }
            for p in &rule.from_params {
                locations.push(Location::Query(p.clone()));
            }
            if locations.is_empty() {
                locations.push(Location::Header {
                    name: http::header::AUTHORIZATION,
                    prefix: "Bearer ".into(),
                });
            }
            out.push(Rule {
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                locations,
                forward: rule.forward_original_token,
                keys,
            });
        }
        let fetcher = fetch::Fetcher::new(options.extra_roots.clone(), options.fetch_timeout);
        Ok(Self {
            rules: out,
            options,
            fetcher,
        })
    }

    /// Loads every file and URL JWKS now; returns the failures (issuer, error). The validator
    /// works regardless; a source that failed is tried again when a token needs it.
    pub async fn prefetch(&self) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        for rule in &self.rules {
            if let Err(e) = rule
                .keys
                .keys(false, self.cache_policy(), &self.fetcher)
                .await
            {
                failures.push((rule.issuer.clone(), e));
            }
        }
        failures
    }

    fn cache_policy(&self) -> CachePolicy {
        CachePolicy {
            ttl: self.options.jwks_ttl,
            min_refetch_interval: self.options.min_refetch_interval,
        }
    }

    /// Validates the token of a request, if it has one. See the module doc for the semantics.
    pub async fn validate(
        &self,
        headers: &http::HeaderMap,
        uri: &http::Uri,
    ) -> Result<Option<Claims>, JwtError> {
        // Every (rule, location, token) found.
        let mut found: Vec<(usize, &Location, String)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for loc in &rule.locations {
                if let Some(token) = extract(loc, headers, uri) {
                    found.push((i, loc, token));
                }
            }
        }
        let Some((_, _, token)) = found.first() else {
            return Ok(None);
        };
        let token = token.clone();
        if found.iter().any(|(_, _, t)| *t != token) {
            return Err(JwtError::new(
                JwtErrorReason::MultipleTokens,
                "the request carries more than one distinct token",
            ));
        }
        // The header first: `alg: none` and other junk are malformed whatever the payload says.
        jsonwebtoken::decode_header(&token)
            .map_err(|e| JwtError::new(JwtErrorReason::Malformed, format!("header: {e}")))?;
        let issuer = peek_issuer(&token)?;
        let Some(&(index, location, _)) = found
            .iter()
            .find(|(i, _, _)| self.rules[*i].issuer == issuer)
        else {
            let detail = if self.rules.iter().any(|r| r.issuer == issuer) {
                format!("a token from issuer {issuer:?} is not accepted where it was found")
            } else {
                format!("issuer {issuer:?} is not accepted")
            };
            return Err(JwtError::new(JwtErrorReason::WrongIssuer, detail));
        };
        let rule = &self.rules[index];
        let payload = self.verify(rule, &token).await?;
        let subject = payload
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Some(Claims {
            issuer,
            subject,
            claims: payload,
            location: match location {
                Location::Header { name, .. } => TokenLocation::Header(name.as_str().to_string()),
                Location::Query(p) => TokenLocation::Query(p.clone()),
            },
            forward_original_token: rule.forward,
        }))
    }

    async fn verify(&self, rule: &Rule, token: &str) -> Result<Value, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtError::new(JwtErrorReason::Malformed, format!("header: {e}")))?;
        let alg = header.alg;
        let unavailable = |e: String| JwtError::new(JwtErrorReason::JwksUnavailable, e);
        let mut keys = rule
            .keys
            .keys(false, self.cache_policy(), &self.fetcher)
            .await
            .map_err(unavailable)?;
        if let Some(kid) = &header.kid {
            if !keys
                .keys
                .iter()
                .any(|k| k.kid.as_deref() == Some(kid.as_str()))
            {
                // Perhaps the issuer rotated its keys: look once more.
                keys = rule
                    .keys
                    .keys(true, self.cache_policy(), &self.fetcher)
                    .await
                    .map_err(unavailable)?;
            }
        }
        let candidates: Vec<_> = keys
            .keys
            .iter()
            .filter(|k| match &header.kid {
                Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                None => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(JwtError::new(
                JwtErrorReason::UnknownKey,
                format!(
                    "no key with kid {:?} in the issuer's JWKS",
                    header.kid.unwrap_or_default()
                ),
            ));
        }
        let fitting: Vec<_> = candidates.into_iter().filter(|k| k.fits(alg)).collect();
        if fitting.is_empty() {
            return Err(JwtError::new(
                JwtErrorReason::UnknownKey,
                format!("no key for algorithm {alg:?} in the issuer's JWKS"),
            ));
        }
        let validation = self.validation(rule, alg);
        let mut first_claim_error = None;
        for key in fitting {
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(data) => {
                    check_time_claims(&data.claims)?;
                    return Ok(data.claims);
                }
                Err(e) => {
                    let err = map_error(&e);
                    if err.reason != JwtErrorReason::BadSignature && first_claim_error.is_none() {
                        // The signature verified with this key; the claims did not.
                        first_claim_error = Some(err);
                    }
                }
            }
        }
        Err(first_claim_error.unwrap_or_else(|| {
            JwtError::new(
                JwtErrorReason::BadSignature,
                "signature does not verify with the issuer's keys",
            )
        }))
    }

    fn validation(&self, rule: &Rule, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.options.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[rule.issuer.as_str()]);
        if rule.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&rule.audiences);
        }
        v.required_spec_claims.clear();
        if self.options.require_exp {
            v.required_spec_claims.insert("exp".into());
        }
        v
    }
}

/// The `iss` of a token, read without verification (only to pick the rule).
fn peek_issuer(token: &str) -> Result<String, JwtError> {
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|e| JwtError::new(JwtErrorReason::Malformed, format!("payload: {e}")))?;
    if !claims.is_object() {
        return Err(JwtError::new(
            JwtErrorReason::Malformed,
            "payload is not a JSON object",
        ));
    }
    match claims.get("iss") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(JwtError::new(
            JwtErrorReason::Malformed,
            "\"iss\" is not a string",
        )),
        None => Err(JwtError::new(
            JwtErrorReason::WrongIssuer,
            "token has no \"iss\" claim",
        )),
    }
}

/// `exp` and `nbf`, when present, must be numbers (older jsonwebtoken releases skipped a
/// mistyped claim; refuse it here whatever the library does).
fn check_time_claims(claims: &Value) -> Result<(), JwtError> {
    for name in ["exp", "nbf", "iat"] {
        if let Some(v) = claims.get(name) {
            if !v.is_number() {
                return Err(JwtError::new(
                    JwtErrorReason::Malformed,
                    format!("\"{name}\" is not a number"),
                ));
            }
        }
    }
    Ok(())
}

fn map_error(e: &jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    use JwtErrorReason as R;
    let reason = match e.kind() {
        K::InvalidSignature => R::BadSignature,
        K::ExpiredSignature => R::Expired,
        K::ImmatureSignature => R::NotYetValid,
        K::InvalidIssuer => R::WrongIssuer,
        K::InvalidAudience => R::WrongAudience,
        K::MissingRequiredClaim(_) => R::MissingClaim,
        K::InvalidAlgorithm
        | K::MissingAlgorithm
        | K::UnsupportedAlgorithm
        | K::InvalidAlgorithmName
        | K::InvalidKeyFormat
        | K::InvalidEcdsaKey
        | K::InvalidEddsaKey
        | K::InvalidRsaKey(_) => R::BadSignature,
        _ => R::Malformed,
    };
    JwtError::new(reason, e.to_string())
}

fn extract(loc: &Location, headers: &http::HeaderMap, uri: &http::Uri) -> Option<String> {
    match loc {
        Location::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?.trim();
            let rest = strip_prefix_ignore_case(v, prefix)?.trim();
            (!rest.is_empty()).then(|| rest.to_string())
        }),
        Location::Query(param) => uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(k)? != *param {
                return None;
            }
            let v = percent_decode(v)?;
            (!v.is_empty()).then_some(v)
        }),
    }
}

/// `query` without every `param=...` pair (the key compared after decoding, as a token is read),
/// so a validated token in the query never reaches the app unless it should.
pub fn without_query_param(query: &str, param: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(key).as_deref() != Some(param)
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `%XX` and `+` decoding of a query component; `None` when it is not valid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_params_are_removed_from_the_query() {
        assert_eq!(without_query_param("access_token=abc", "access_token"), "");
        assert_eq!(
            without_query_param("a=1&access_token=abc&b=2&access%5Ftoken=x", "access_token"),
            "a=1&b=2"
        );
        assert_eq!(
            without_query_param("a=1&access_token", "access_token"),
            "a=1"
        );
        assert_eq!(without_query_param("a=1&b=2", "access_token"), "a=1&b=2");
    }

    #[test]
    fn query_decoding() {
        assert_eq!(percent_decode("a%2Eb").as_deref(), Some("a.b"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%").as_deref(), Some("%"));
        assert_eq!(percent_decode("%4").as_deref(), Some("%4"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn prefix_matching() {
        assert_eq!(
            strip_prefix_ignore_case("bearer abc", "Bearer "),
            Some("abc")
        );
        assert_eq!(strip_prefix_ignore_case("Basic abc", "Bearer "), None);
        assert_eq!(strip_prefix_ignore_case("ü", "Bearer "), None);
        assert_eq!(strip_prefix_ignore_case("Beär x", "Be"), Some("är x"));
        assert_eq!(strip_prefix_ignore_case("Beär x", "Bea"), None);
    }
}
