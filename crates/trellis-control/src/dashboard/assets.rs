//! The dashboard's page, style and script, compiled into the binary (`include_str!` of
//! `crates/trellis-control/assets/dashboard/`): hand-written HTML, CSS and JavaScript with no
//! build step, so `cargo build` on a fresh machine is all it takes, and nothing is fetched
//! from the network at run time.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
pub const LOGIN_HTML: &str = include_str!("../../assets/dashboard/login.html");
pub const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
pub const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");

/// A page or asset with its type and the headers every dashboard answer carries: no caching
/// of data, no framing by other sites, no sniffing, a policy allowing only this origin, and
/// referrers for this origin only (with `no-referrer` a browser would send `Origin: null` on
/// the login form, which the login refuses).
pub fn serve(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut rsp = (status, body).into_response();
    let h = rsp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    harden(h);
    rsp
}

/// Adds the security headers of every dashboard answer.
pub fn harden(h: &mut axum::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

pub async fn app_js() -> Response {
    serve(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        APP_JS.to_string(),
    )
}

pub async fn app_css() -> Response {
    serve(
        StatusCode::OK,
        "text/css; charset=utf-8",
        APP_CSS.to_string(),
    )
}

/// The login page (with `error` shown when there is one), answered with `status`.
pub fn login_page(status: StatusCode, error: &str) -> Response {
    let error = error
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    serve(
        status,
        "text/html; charset=utf-8",
        LOGIN_HTML.replace("{{error}}", &error),
    )
}
