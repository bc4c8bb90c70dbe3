//! `/ws`: a WebSocket echo over an HTTP/1.1 Upgrade.
//!
//! The handshake is checked and answered here (101 with `Sec-WebSocket-Accept`); the upgraded
//! connection then echoes every text and binary message unchanged until the client closes.
//! Pings are answered by tungstenite itself. A handshake that is not a WebSocket one gets a 400,
//! never a hang.

use futures_util::{SinkExt as _, StreamExt as _};
use http::header::UPGRADE;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::routes::{full, stamp, text, with_status, Body};
use super::App;

/// Answers the upgrade request and, on success, spawns the echo loop on the upgraded connection.
pub(super) fn upgrade(app: &App, req: Request<Incoming>) -> Response<Body> {
    let key = match check_handshake(&req) {
        Ok(key) => key,
        Err(reason) => return text(StatusCode::BAD_REQUEST, reason),
    };
    let accept = derive_accept_key(key.as_bytes());
    let accept = match HeaderValue::from_str(&accept) {
        Ok(accept) => accept,
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key"),
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => echo(upgraded).await,
            Err(error) => tracing::debug!(%error, "demo-app: websocket upgrade failed"),
        }
    });
    let mut resp = with_status(full(""), StatusCode::SWITCHING_PROTOCOLS);
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    stamp(app, headers);
    resp
}

/// The client's `Sec-WebSocket-Key`, or why the request is not a WebSocket handshake.
fn check_handshake<B>(req: &Request<B>) -> Result<HeaderValue, &'static str> {
    if req.method() != Method::GET || req.version() != Version::HTTP_11 {
        return Err("/ws needs an HTTP/1.1 GET with Upgrade: websocket");
    }
    let headers = req.headers();
    if !header_has_token(headers, &UPGRADE, "websocket") {
        return Err("/ws needs Upgrade: websocket");
    }
    if !header_has_token(headers, &CONNECTION, "upgrade") {
        return Err("/ws needs Connection: upgrade");
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() != b"13")
    {
        return Err("/ws supports only Sec-WebSocket-Version: 13");
    }
    match headers.get(SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(key.clone()),
        _ => Err("/ws needs Sec-WebSocket-Key"),
    }
}

/// Whether any comma-separated token of header `name` equals `token`, ignoring ASCII case.
fn header_has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Echoes text and binary messages until the peer closes or the connection breaks.
async fn echo(upgraded: Upgraded) {
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(error) => {
                tracing::debug!(%error, "demo-app: websocket read failed");
                return;
            }
        };
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
        // Close frames are answered by tungstenite; the stream then ends.
    }
}
