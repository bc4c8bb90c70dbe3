//! The dashboard's doors, against a real store and router: who gets in (a session from the
//! token, a link or a one-time code; the bearer token), who is refused (401 without either;
//! 403 for a foreign `Host` in loopback mode or a cross-site login), and that it stays off on a
//! non-loopback address unless enabled.
use super::{router, DashboardOptions};
use crate::api::ApiState;
use crate::ca::MeshCa;
use crate::model;
use crate::test_support::{open_store, TempDir};
use axum::body::Body;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const TOKEN: &str = "dashboard-test-token";

async fn dashboard(listen: &str, opts: DashboardOptions) -> (axum::Router, TempDir) {
    let dir = TempDir::new("dashboard");
    let store = open_store(&dir).await;
    let model = model::follow(store.clone());
    let ca = MeshCa::start(store.clone(), model.clone(), None, Some(TOKEN))
        .await
        .unwrap();
    let state = Arc::new(ApiState {
        telemetry: Some(trellis_xds::telemetry::TelemetryHub::new(None)),
        store,
        model,
        lease_ttl: Duration::from_secs(10),
        status: None,
        ca,
        max_apply_documents: None,
    });
    (router(state, opts, listen.parse().unwrap()), dir)
}

/// (status, Set-Cookie, Location, body).
async fn call(
    r: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String, String) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:15010");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = r
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let h = |name| {
        rsp.headers()
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (cookie, location) = (h("set-cookie"), h("location"));
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cookie,
        location,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// `name=value` of a Set-Cookie header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap_or("").to_string()
}

#[tokio::test]
async fn only_a_session_or_the_token_gets_in() {
    let (r, _dir) = dashboard("127.0.0.1:15010", DashboardOptions::default()).await;
    let (status, _, _, body) = call(&r, "GET", "/dashboard/", &[], "").await;
    assert_eq!(status, 401);
    assert!(body.contains("name=\"token\""), "the login page: {body}");
    for path in [
        "/dashboard/api/topology",
        "/dashboard/api/status",
        "/dashboard/api/events",
        "/dashboard/api/services/default/x",
        "/dashboard/api/tap?service=x",
    ] {
        let (status, ..) = call(&r, "GET", path, &[], "").await;
        assert_eq!(status, 401, "{path}");
    }
    // The assets hold no secret.
    assert_eq!(
        call(&r, "GET", "/dashboard/assets/app.js", &[], "").await.0,
        200
    );

    // The login form: a wrong token, another site's page, then the right token.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, cookie, ..) = call(&r, "POST", "/dashboard/login", &form, "token=nope").await;
    assert_eq!((status, cookie.as_str()), (401, ""));
    let cross = [form[0], ("origin", "http://evil.example")];
    let body = format!("token={TOKEN}");
    assert_eq!(
        call(&r, "POST", "/dashboard/login", &cross, &body).await.0,
        403
    );
    let same = [form[0], ("origin", "http://127.0.0.1:15010")];
    let (status, cookie, location, _) = call(&r, "POST", "/dashboard/login", &same, &body).await;
    assert_eq!((status, location.as_str()), (303, "/dashboard/"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie_pair(&cookie);
    let with = [("cookie", session.as_str())];
    let (status, _, _, page) = call(&r, "GET", "/dashboard/", &with, "").await;
    assert_eq!(status, 200);
    assert!(page.contains("/dashboard/assets/app.js"));
    let (status, _, _, json) = call(&r, "GET", "/dashboard/api/topology", &with, "").await;
    assert_eq!(status, 200, "{json}");
    let req = http::Request::get("/dashboard/api/status")
        .header("host", "127.0.0.1:15010")
        .header("cookie", session.as_str())
        .body(Body::empty())
        .unwrap();
    let rsp = r.clone().oneshot(req).await.unwrap();
    assert_eq!(rsp.headers()["cache-control"], "no-store");
    assert!(rsp.headers().contains_key("content-security-policy"));
    assert!(json.contains("\"nodes\""), "{json}");
    // Logged out, the cookie opens nothing.
    call(&r, "POST", "/dashboard/logout", &with, "").await;
    assert_eq!(
        call(&r, "GET", "/dashboard/api/status", &with, "").await.0,
        401
    );

    // The bearer token, as on the API.
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    assert_eq!(
        call(&r, "GET", "/dashboard/api/status", &auth, "").await.0,
        200
    );

    // A `?token=` link, and a one-time code minted with the token.
    let (status, cookie, ..) =
        call(&r, "GET", &format!("/dashboard/?token={TOKEN}"), &[], "").await;
    assert_eq!(status, 303);
    assert!(!cookie.is_empty());
    assert_eq!(
        call(&r, "GET", "/dashboard/?token=wrong", &[], "").await.0,
        401
    );
    assert_eq!(
        call(&r, "POST", "/dashboard/api/login-codes", &[], "")
            .await
            .0,
        401
    );
    let (status, _, _, minted) = call(&r, "POST", "/dashboard/api/login-codes", &auth, "").await;
    assert_eq!(status, 200, "{minted}");
    let v: serde_json::Value = serde_json::from_str(&minted).unwrap();
    let path = v["path"].as_str().unwrap().to_string();
    assert_eq!(call(&r, "GET", &path, &[], "").await.0, 303);
    assert_eq!(
        call(&r, "GET", &path, &[], "").await.0,
        401,
        "a code works once"
    );
}

#[tokio::test]
async fn loopback_mode_refuses_foreign_host_names() {
    let (r, _dir) = dashboard("127.0.0.1:15010", DashboardOptions::default()).await;
    let req = http::Request::get("/dashboard/")
        .header("host", "evil.example:15010")
        .body(Body::empty())
        .unwrap();
    let rsp = r.clone().oneshot(req).await.unwrap();
    assert_eq!(rsp.status().as_u16(), 403);
}

#[tokio::test]
async fn off_on_other_addresses_unless_enabled() {
    let (r, _dir) = dashboard("192.0.2.1:15010", DashboardOptions::default()).await;
    let (status, _, _, body) = call(&r, "GET", "/dashboard/", &[], "").await;
    assert_eq!(status, 404);
    assert!(body.contains("--dashboard-any-address"), "{body}");
    let on = DashboardOptions { any_address: true };
    let (r, _dir2) = dashboard("192.0.2.1:15010", on).await;
    assert_eq!(call(&r, "GET", "/dashboard/", &[], "").await.0, 401);
    // With the dashboard on every address, any Host may ask (it still needs a session).
    let req = http::Request::get("/dashboard/")
        .header("host", "mesh.example.com")
        .body(Body::empty())
        .unwrap();
    assert_eq!(r.clone().oneshot(req).await.unwrap().status().as_u16(), 401);
}
