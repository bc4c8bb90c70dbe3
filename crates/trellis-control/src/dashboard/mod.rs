//! The dashboard `trellis control` serves under `/dashboard/`: the mesh's live topology with
//! golden numbers on every edge, each service's instances and policies, a live tap, config
//! rejections and the control plane's own health — in a browser, updated without reloads.
//!
//! - [`session`]: who may look (a session cookie from the join token, or the token itself);
//! - [`login`]: the login page, `?token=` / `?code=` links, logout, one-time codes;
//! - [`data`]: the JSON the page reads (`/dashboard/api/...`);
//! - [`stream`]: server-sent events pushing the topology, status and service every 2 s;
//! - [`ejections`]: which instances the proxies' outlier detection has ejected;
//! - [`topology`], [`service_page`]: pure builders of that JSON from the model and the rows;
//! - [`assets`]: the page, style and script compiled into the binary.
//!
//! Off the loopback interface the dashboard stays off unless the operator enables it
//! ([`DashboardOptions::any_address`], `trellis control --dashboard-any-address`): a browser
//! session is a softer credential than a token in a file, and a loopback-only page needs no TLS.
//! On loopback, requests must name the host by IP literal or `localhost` (against DNS
//! rebinding). It must never change the mesh: every route reads, apart from login and logout.
pub mod assets;
pub mod data;
pub mod ejections;
pub mod login;
pub mod service_page;
pub mod session;
pub mod stream;
pub mod topology;

#[cfg(test)]
mod tests;

use crate::api::ApiState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;

/// Where the dashboard may be served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DashboardOptions {
    /// Serve it even when the control plane listens on a non-loopback address.
    pub any_address: bool,
}

impl DashboardOptions {
    /// Whether the dashboard is on for a control plane listening on `listen`.
    pub fn enabled_for(&self, listen: SocketAddr) -> bool {
        self.any_address || listen.ip().is_loopback()
    }
}

/// What the dashboard's handlers share.
pub struct DashState {
    pub api: Arc<ApiState>,
    pub sessions: session::Sessions,
    pub cache: data::TopologyCache,
    /// Whether only local `Host` names are accepted (loopback mode).
    pub local_hosts_only: bool,
}

pub type Shared = Arc<DashState>;

/// The dashboard's routes, or (when it is off for `listen`) a 404 saying how to turn it on.
pub fn router(api: Arc<ApiState>, opts: DashboardOptions, listen: SocketAddr) -> Router {
    if !opts.enabled_for(listen) {
        let off = || async {
            (
                StatusCode::NOT_FOUND,
                "the dashboard is off: this control plane listens on a non-loopback address; \
                 start it with --dashboard-any-address to serve the dashboard there\n",
            )
        };
        return Router::new()
            .route("/dashboard", get(off))
            .route("/dashboard/", get(off))
            .route("/dashboard/{*rest}", get(off).post(off));
    }
    let state = Arc::new(DashState {
        api,
        sessions: session::Sessions::default(),
        cache: data::TopologyCache::default(),
        local_hosts_only: !opts.any_address,
    });
    let protected = Router::new()
        .route("/dashboard/api/topology", get(data::topology))
        .route(
            "/dashboard/api/services/{namespace}/{name}",
            get(data::service),
        )
        .route("/dashboard/api/status", get(data::status))
        .route("/dashboard/api/events", get(stream::events))
        .route("/dashboard/api/tap", get(data::tap))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    let code = Router::new()
        .route("/dashboard/api/login-codes", post(login::mint_code))
        .route_layer(axum::middleware::from_fn(crate::auth::refuse_browsers));
    Router::new()
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(login::index))
        .route("/dashboard/login", post(login::login))
        .route("/dashboard/logout", post(login::logout))
        .route("/dashboard/assets/app.js", get(assets::app_js))
        .route("/dashboard/assets/app.css", get(assets::app_css))
        .merge(protected)
        .merge(code)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            local_host_only,
        ))
        // Every answer, data and refusals too: no caching, no framing, this origin only.
        .layer(axum::middleware::map_response(|mut r: Response| async {
            assets::harden(r.headers_mut());
            r
        }))
        .with_state(state)
}

/// 401 unless the request has a session or the join token.
async fn require_session(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if s.sessions.admits(s.api.ca.token(), req.headers()) {
        return next.run(req).await;
    }
    let body = serde_json::json!({
        "error": "log in to the dashboard first (or send Authorization: Bearer <join token>)",
        "details": [],
    });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// In loopback mode, 403 for a `Host` that is not an IP literal or `localhost`.
async fn local_host_only(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if s.local_hosts_only {
        let host = req
            .headers()
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !trellis_net::browser::is_local_host(host) {
            return (
                StatusCode::FORBIDDEN,
                "the dashboard answers only to an IP address or localhost\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}
