//! Who may look at the dashboard: a browser holding a session cookie, or a caller with the join
//! token (`Authorization: Bearer`, as on the API).
//!
//! A browser gets its session by showing the join token once — typed into the login form, in a
//! `?token=` link, or as a one-time code minted by `trellis dashboard` (so the token itself
//! need not sit in a browser's history). The session id is 32 random bytes, sent back as an
//! `HttpOnly; SameSite=Strict` cookie: page scripts cannot read it and other sites cannot make
//! the browser send it. Sessions and codes live only in this replica's memory, bounded in number
//! and in time; they never reach the store or a log.
use crate::auth::JoinToken;
use axum::http::{header, HeaderMap};
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "trellis_dashboard";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a one-time login code lasts.
pub const CODE_TTL: Duration = Duration::from_secs(120);
/// Sessions (and codes) kept at most; the oldest go first.
const MAX_ENTRIES: usize = 1024;

/// Live sessions and unused login codes.
#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<Expiring>,
    codes: Mutex<Expiring>,
}

/// Random ids with their deadlines, bounded.
#[derive(Default)]
struct Expiring(HashMap<String, Instant>);

impl Expiring {
    fn insert(&mut self, id: String, ttl: Duration) {
        let now = Instant::now();
        self.0.retain(|_, until| *until > now);
        if self.0.len() >= MAX_ENTRIES {
            if let Some(oldest) = self
                .0
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone())
            {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(id, now + ttl);
    }

    fn valid(&self, id: &str) -> bool {
        self.0.get(id).is_some_and(|until| *until > Instant::now())
    }
}

/// 32 random bytes as hex; `None` when the system's generator fails.
fn random_id() -> Option<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn lock(m: &Mutex<Expiring>) -> std::sync::MutexGuard<'_, Expiring> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    /// A new session id (for the cookie).
    pub fn open(&self) -> Option<String> {
        let id = random_id()?;
        lock(&self.sessions).insert(id.clone(), SESSION_TTL);
        Some(id)
    }

    pub fn close(&self, id: &str) {
        lock(&self.sessions).0.remove(id);
    }

    /// A login code good for one session, within [`CODE_TTL`].
    pub fn mint_code(&self) -> Option<String> {
        let id = random_id()?;
        lock(&self.codes).insert(id.clone(), CODE_TTL);
        Some(id)
    }

    /// Uses up `code`: true when it was valid.
    pub fn redeem(&self, code: &str) -> bool {
        let mut codes = lock(&self.codes);
        let valid = codes.valid(code);
        codes.0.remove(code);
        valid
    }

    /// Whether the request carries a live session cookie.
    pub fn has_session(&self, headers: &HeaderMap) -> bool {
        session_cookie(headers).is_some_and(|id| lock(&self.sessions).valid(&id))
    }

    /// Whether the request may see dashboard data: a live session, or the join token.
    pub fn admits(&self, token: &JoinToken, headers: &HeaderMap) -> bool {
        if self.has_session(headers) {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        bearer.is_some() && token.check(bearer).is_ok()
    }
}

/// The session id in the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` value for session `id`.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that forgets the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn sessions_admit_only_what_was_opened_or_the_token() {
        let s = Sessions::default();
        let token = JoinToken::new("tok").unwrap();
        let id = s.open().unwrap();
        assert!(s.admits(&token, &with_cookie(&format!("a=b; {COOKIE}={id}"))));
        assert!(!s.admits(&token, &with_cookie(&format!("{COOKIE}=nope"))));
        assert!(!s.admits(&token, &HeaderMap::new()));
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert!(s.admits(&token, &bearer));
        bearer.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!s.admits(&token, &bearer));
        s.close(&id);
        assert!(!s.admits(&token, &with_cookie(&format!("{COOKIE}={id}"))));
    }

    #[test]
    fn a_code_works_once() {
        let s = Sessions::default();
        let code = s.mint_code().unwrap();
        assert!(s.redeem(&code));
        assert!(!s.redeem(&code));
        assert!(!s.redeem("made-up"));
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let c = set_cookie("abc");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        for _ in 0..MAX_ENTRIES + 10 {
            s.open().unwrap();
        }
        assert!(lock(&s.sessions).0.len() <= MAX_ENTRIES);
    }
}
