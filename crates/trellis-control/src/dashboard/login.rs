//! Getting into the dashboard: the login page, the form that exchanges the join token for a
//! session, the `?token=` and `?code=` links (`trellis dashboard` prints the second), logout,
//! and minting one-time codes for the CLI.
//!
//! A link's secret is taken off the address at once (a redirect to `/dashboard/`), so it does
//! not stay in the address bar. A form post whose `Origin` is another site is refused: nobody
//! else's page can log a browser into this dashboard.
use super::assets::{login_page, serve, INDEX_HTML};
use super::session::{clear_cookie, session_cookie, set_cookie, CODE_TTL};
use super::Shared;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
pub struct LinkQuery {
    token: Option<String>,
    code: Option<String>,
}

/// A redirect to the dashboard carrying a new session's cookie.
fn start_session(s: &Shared) -> Response {
    let Some(id) = s.sessions.open() else {
        return login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot open a session: the system random number generator failed",
        );
    };
    let mut rsp = Redirect::to("/dashboard/").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&id)) {
        rsp.headers_mut().insert(header::SET_COOKIE, v);
    }
    super::assets::harden(rsp.headers_mut());
    rsp
}

/// `GET /dashboard/`: the dashboard for a session, a session from a valid link, else the login
/// page (401).
pub async fn index(
    State(s): State<Shared>,
    Query(q): Query<LinkQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = q.token.as_deref().filter(|t| !t.is_empty()) {
        return match s.api.ca.token().matches(token.trim()) {
            true => start_session(&s),
            false => login_page(
                StatusCode::UNAUTHORIZED,
                "that is not this mesh's join token",
            ),
        };
    }
    if let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) {
        return match s.sessions.redeem(code) {
            true => start_session(&s),
            false => login_page(
                StatusCode::UNAUTHORIZED,
                "that login link was used already or has expired; run `trellis dashboard` again",
            ),
        };
    }
    if s.sessions.has_session(&headers) {
        return serve(
            StatusCode::OK,
            "text/html; charset=utf-8",
            INDEX_HTML.into(),
        );
    }
    login_page(StatusCode::UNAUTHORIZED, "")
}

/// Whether a browser's `Origin` (when it sent one) is this very host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && authority == host
}

/// One field of an `application/x-www-form-urlencoded` body, decoded.
fn form_value(body: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `POST /dashboard/login` (form field `token`).
pub async fn login(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if !same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            "a login from another site's page is refused",
        );
    }
    match form_value(&body, "token") {
        Some(t) if s.api.ca.token().matches(t.trim()) => start_session(&s),
        _ => login_page(
            StatusCode::UNAUTHORIZED,
            "that is not this mesh's join token",
        ),
    }
}

/// `POST /dashboard/logout`.
pub async fn logout(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        s.sessions.close(&id);
    }
    let mut rsp = Redirect::to("/dashboard/").into_response();
    if let Ok(v) = HeaderValue::from_str(&clear_cookie()) {
        rsp.headers_mut().insert(header::SET_COOKIE, v);
    }
    rsp
}

/// `POST /dashboard/api/login-codes` with the join token: a one-time login code for a link
/// (`/dashboard/?code=...`), good for [`CODE_TTL`].
pub async fn mint_code(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(failure) = s.api.ca.token().check(bearer) {
        let body = serde_json::json!({"error": failure.to_string(), "details": []});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    match s.sessions.mint_code() {
        Some(code) => Json(serde_json::json!({
            "code": code,
            "path": format!("/dashboard/?code={code}"),
            "expiresInSecs": CODE_TTL.as_secs(),
        }))
        .into_response(),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": "the system random number generator failed", "details": []})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value("token=a%2Bb+c&x=1", "token").as_deref(),
            Some("a+b c")
        );
        assert_eq!(form_value("x=1", "token"), None);
        // A broken escape stays as it was sent (as browsers decode it), so it matches no token.
        assert_eq!(form_value("token=%4", "token").as_deref(), Some("%4"));
        assert_eq!(form_value("token=%zz", "token").as_deref(), Some("%zz"));
    }

    #[test]
    fn only_this_origin_may_post_the_login() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:15010".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:15010".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
