//! Who may talk to the control plane: whoever presents the mesh's join token.
//!
//! Why one shared token: the control plane signs workload certificates for any identity in the
//! mesh and hands out every proxy's config, so an anonymous caller must get nothing. A join token
//! is the smallest thing that closes that door and still lets a proxy start from one flag (as
//! `kubeadm join` or `consul` agents do); per-workload credentials can replace it later without
//! changing the API. The same check guards both ends of the control port:
//!
//! - the HTTP API ([`require_token`], an axum middleware): every route but the health check;
//! - xDS ([`xds_hook`], the ADS server's auth hook): a stream without the token is refused with
//!   gRPC `UNAUTHENTICATED` before it is served anything.
//!
//! State-changing API calls also refuse what a web page could make a browser send
//! ([`refuse_browsers`]: an `Origin` or `Sec-Fetch-*` header, a form content type), 403. That
//! is defence in depth: a page cannot send the bearer token without a CORS preflight, which this
//! API never grants. The `Host` rule of the sidecar's admin port (IP literals and `localhost`
//! only, against DNS rebinding) is not applied here: proxies and the CLI call the control plane
//! by DNS name, and a rebound page still lacks the token.
//!
//! The token is compared in constant time (both sides hashed with SHA-256, then compared without
//! an early exit, so neither content nor length leaks through timing), never logged, never
//! echoed in an error, and redacted in `Debug`.
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ring::rand::SecureRandom;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use trellis_xds::server::{AuthHook, NodeAuth};

/// Longest token accepted (it travels in a header).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is empty")]
    Empty,
    #[error("the join token is {0} bytes long; at most {MAX_TOKEN_LEN} are allowed")]
    TooLong(usize),
    #[error("the join token must be visible ASCII without spaces (it is sent in an HTTP header)")]
    Charset,
    #[error("cannot generate a join token: the system random number generator failed")]
    Random,
}

/// The join token in force. Cheap to clone; `Debug` shows `<redacted>`.
#[derive(Clone)]
pub struct JoinToken(Arc<str>);

impl JoinToken {
    /// A token given by the operator (surrounding whitespace, such as a file's newline, is
    /// dropped).
    pub fn new(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(token.len()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Charset);
        }
        Ok(Self(token.into()))
    }

    /// 32 random bytes from the operating system, as 64 lower-case hex digits.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Random)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(hex.into()))
    }

    /// The token text. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that depends on neither.
    pub fn matches(&self, presented: &str) -> bool {
        let want = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let got = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
        let diff = want
            .as_ref()
            .iter()
            .zip(got.as_ref())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// Checks an `authorization` header value.
    pub fn check(&self, header: Option<&str>) -> Result<(), AuthFailure> {
        let value = header.ok_or(AuthFailure::Missing)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthFailure::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthFailure::NotBearer);
        }
        if self.matches(token.trim()) {
            Ok(())
        } else {
            Err(AuthFailure::Wrong)
        }
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

/// Why a request was refused. The messages never contain what the caller sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing `Authorization: Bearer <join token>` header; this control plane requires its join token")]
    Missing,
    #[error("the Authorization header must be `Bearer <join token>`")]
    NotBearer,
    #[error("the bearer token is not this control plane's join token")]
    Wrong,
}

/// Writes the token to `path` with mode 0600 (creating its directory), for proxies and the CLI
/// to read with `--token-file`.
pub fn write_token_file(path: &Path, token: &JoinToken) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = token.expose().to_string();
    text.push('\n');
    trellis_identity::keys::write_secret_file(path, text.as_bytes())
}

/// Axum middleware: lets a request through only with the join token; otherwise 401 with a JSON
/// error (`{"error", "details"}`) and `WWW-Authenticate: Bearer`.
pub async fn require_token(State(token): State<JoinToken>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    match token.check(header) {
        Ok(()) => next.run(req).await,
        Err(failure) => {
            tracing::debug!(path = %req.uri().path(), %failure, "API request refused");
            let body = serde_json::json!({"error": failure.to_string(), "details": []});
            let mut rsp = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
            rsp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            rsp
        }
    }
}

/// Axum middleware: a request that changes state (any method but GET, HEAD, OPTIONS) and looks
/// like a browser sent it for a web page (see [`trellis_net::browser`]) is refused with 403 and
/// a JSON error naming why.
pub async fn refuse_browsers(req: Request, next: Next) -> Response {
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe {
        if let Err(why) = trellis_net::refuse_browser_request(req.headers(), req.uri(), false) {
            tracing::debug!(path = %req.uri().path(), reason = %why, "API request refused");
            let body = serde_json::json!({"error": why.to_string(), "details": []});
            return (StatusCode::FORBIDDEN, Json(body)).into_response();
        }
    }
    next.run(req).await
}

/// The ADS server's auth hook: a stream must carry `authorization: Bearer <join token>`.
pub fn xds_hook(token: JoinToken) -> AuthHook {
    Arc::new(move |metadata| {
        let header = metadata
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        token
            .check(header)
            .map(|()| NodeAuth {
                principal: Some("join-token".into()),
            })
            .map_err(|failure| {
                tracing::debug!(%failure, "xDS stream refused");
                tonic::Status::unauthenticated(failure.to_string())
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bearer_tokens_without_echoing_them() {
        let t = JoinToken::new(" s3cret-token\n").unwrap();
        assert_eq!(t.expose(), "s3cret-token");
        assert_eq!(t.check(Some("Bearer s3cret-token")), Ok(()));
        assert_eq!(t.check(Some("bearer  s3cret-token ")), Ok(()));
        assert_eq!(t.check(None), Err(AuthFailure::Missing));
        assert_eq!(t.check(Some("s3cret-token")), Err(AuthFailure::NotBearer));
        assert_eq!(
            t.check(Some("Basic s3cret-token")),
            Err(AuthFailure::NotBearer)
        );
        assert_eq!(t.check(Some("Bearer s3cret")), Err(AuthFailure::Wrong));
        assert_eq!(t.check(Some("Bearer ")), Err(AuthFailure::NotBearer));
        assert!(!format!("{t:?}").contains("s3cret"));
        for f in [
            AuthFailure::Missing,
            AuthFailure::NotBearer,
            AuthFailure::Wrong,
        ] {
            assert!(!f.to_string().contains("s3cret"));
        }
    }

    #[test]
    fn refuses_unusable_tokens_and_generates_good_ones() {
        assert_eq!(JoinToken::new(" ").unwrap_err(), TokenError::Empty);
        assert_eq!(JoinToken::new("a b").unwrap_err(), TokenError::Charset);
        assert_eq!(JoinToken::new("é").unwrap_err(), TokenError::Charset);
        assert!(matches!(
            JoinToken::new(&"x".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong(_))
        ));
        let a = JoinToken::generate().unwrap();
        let b = JoinToken::generate().unwrap();
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn xds_hook_refuses_missing_and_wrong_tokens() {
        let hook = xds_hook(JoinToken::new("tok").unwrap());
        let mut md = tonic::metadata::MetadataMap::new();
        let err = hook(&md).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(hook(&md).unwrap_err().code(), tonic::Code::Unauthenticated);
        md.insert("authorization", "Bearer tok".parse().unwrap());
        assert!(hook(&md).is_ok());
    }

    #[test]
    fn token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("trellis-token-{}", std::process::id()));
        let path = dir.join("sub").join("join-token");
        write_token_file(&path, &JoinToken::new("abc").unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
