//! The HTTP side of the demo app: one connection handler for HTTP/1.1 and HTTP/2 (prior
//! knowledge), and the routes.
//!
//! | route | answer |
//! |---|---|
//! | `/health` | 200 `ok`; never delayed, never fails |
//! | `/echo` | 200, the request body streamed back, `content-type` copied; delayed by `--latency` |
//! | `/status/<code>` | that status with the JSON answer |
//! | `/delay/<ms>` | the JSON answer after `ms` milliseconds (at most 60 000) |
//! | `/ws` | WebSocket echo (see [`super::ws`]) |
//! | POST with `content-type: application/grpc*` | gRPC unary echo (see [`super::grpc`]) |
//! | anything else | 200 with the JSON answer |
//!
//! The JSON answer names service, version, instance, method, path, protocol and request headers.
//! JSON answers and gRPC echo get `--latency` and `--error-rate`; an injected error is a 500 whose
//! JSON carries `"error": "injected by --error-rate"`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{HeaderName, CONTENT_TYPE, EXPECT};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, BodyStream, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{grpc, stopping, ws, App};

/// The response body type of every route.
pub(super) type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Longest `/delay/<ms>` honoured.
const MAX_DELAY_MS: u64 = 60_000;

const X_DEMO_VERSION: HeaderName = HeaderName::from_static("x-demo-version");
const X_DEMO_INSTANCE: HeaderName = HeaderName::from_static("x-demo-instance");

/// Serves one accepted connection until it ends or `stop` turns true (then drains gracefully).
pub(super) async fn serve_connection(
    stream: TcpStream,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(route(&app, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "demo-app: connection ended with an error");
    }
}

async fn route(app: &App, req: Request<Incoming>) -> Response<Body> {
    if grpc::is_grpc(&req) {
        return grpc::handle(app, req).await;
    }
    let path = req.uri().path();
    if path == "/health" {
        return text(StatusCode::OK, "ok");
    }
    if path == "/echo" {
        return echo(app, req).await;
    }
    if path == "/ws" {
        return ws::upgrade(app, req);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match parse_status(code) {
            Ok(status) => answer(app, &req, status).await,
            Err(reason) => text(StatusCode::BAD_REQUEST, &reason),
        };
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        return match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
                answer(app, &req, StatusCode::OK).await
            }
            Err(_) => text(StatusCode::BAD_REQUEST, "/delay/<ms> needs a whole number"),
        };
    }
    answer(app, &req, StatusCode::OK).await
}

fn parse_status(code: &str) -> Result<StatusCode, String> {
    let code: u16 = code
        .parse()
        .map_err(|_| format!("/status/<code> needs a number, got {code:?}"))?;
    if !(100..=599).contains(&code) {
        return Err(format!("status {code} is outside 100..=599"));
    }
    if code < 200 {
        // hyper cannot send a 1xx as the final response; say so instead of a confusing 500.
        return Err(format!(
            "status {code} is informational and cannot end a request"
        ));
    }
    StatusCode::from_u16(code).map_err(|e| e.to_string())
}

/// The JSON answer, after `--latency`, possibly replaced by an injected 500.
async fn answer<B>(app: &App, req: &Request<B>, status: StatusCode) -> Response<Body> {
    app.delay().await;
    let mut body = describe(app, req);
    let status = if app.inject_error() {
        body["error"] = "injected by --error-rate".into();
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        status
    };
    let mut resp = with_status(full(body.to_string()), status);
    set_content_type(resp.headers_mut(), "application/json");
    stamp(app, resp.headers_mut());
    resp
}

/// What the JSON answer says about the app and the request.
fn describe<B>(app: &App, req: &Request<B>) -> serde_json::Value {
    serde_json::json!({
        "service": app.cfg.name,
        "version": app.cfg.version,
        "instance": app.cfg.instance,
        "method": req.method().as_str(),
        "path": path_and_query(req.uri()),
        "protocol": protocol(req.version()),
        "headers": headers_json(req.headers()),
    })
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or(uri.path(), |pq| pq.as_str())
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

/// Header names (already lowercase in `http`) to values; repeated headers are joined by ", ".
fn headers_json(headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        out.insert(name.as_str().to_string(), values.join(", ").into());
    }
    out
}

/// Streams the request body back, `content-type` copied.
async fn echo(app: &App, req: Request<Incoming>) -> Response<Body> {
    app.delay().await;
    let (parts, body) = req.into_parts();
    let body = match echo_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(error) => {
            let msg = format!("cannot read request body: {error}");
            return text(StatusCode::BAD_REQUEST, &msg);
        }
    };
    let mut resp = Response::new(body);
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        resp.headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    stamp(app, resp.headers_mut());
    resp
}

/// The request body as a response body.
///
/// With `Expect: 100-continue` the first frame is awaited before answering: polling the body is
/// what makes hyper send `100 Continue`, and it must go out before the final response head,
/// or the client would keep waiting for it.
async fn echo_body(headers: &HeaderMap, mut body: Incoming) -> Result<Body, hyper::Error> {
    if !headers.contains_key(EXPECT) {
        return Ok(body.boxed_unsync());
    }
    let first = body.frame().await.transpose()?;
    let frames = futures_util::stream::iter(first.map(Ok)).chain(BodyStream::new(body));
    Ok(StreamBody::new(frames).boxed_unsync())
}

/// Adds `x-demo-version` and `x-demo-instance`.
pub(super) fn stamp(app: &App, headers: &mut HeaderMap) {
    headers.insert(X_DEMO_VERSION, app.version_header.clone());
    headers.insert(X_DEMO_INSTANCE, app.instance_header.clone());
}

/// A plain-text answer (a newline is appended).
pub(super) fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = with_status(full(format!("{msg}\n")), status);
    set_content_type(resp.headers_mut(), "text/plain; charset=utf-8");
    resp
}

pub(super) fn with_status(body: Body, status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

pub(super) fn set_content_type(headers: &mut HeaderMap, value: &'static str) {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
}

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
