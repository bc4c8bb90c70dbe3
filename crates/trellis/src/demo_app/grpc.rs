//! gRPC without a gRPC stack: a unary echo and the standard health check, by hand.
//!
//! Any POST whose `content-type` starts with `application/grpc` lands here. The request body (a
//! sequence of length-prefixed gRPC message frames) is read whole, at most [`MAX_BODY`] bytes,
//! and sent back unchanged, followed by the trailers `grpc-status: 0`, an empty `grpc-message`
//! and `x-demo-version`. `/grpc.health.v1.Health/Check` answers `SERVING` instead and is never
//! delayed or failed. An injected error is a trailers-only response with `grpc-status: 14`
//! (UNAVAILABLE), which is what retry policies for gRPC look for.
//!
//! This module must never decode the echoed messages: the demo app has no schema for them.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};

use super::routes::{full, set_content_type, stamp, text, with_status, Body};
use super::App;

/// Largest request body read for a gRPC call.
pub(super) const MAX_BODY: usize = 16 * 1024 * 1024;

const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse { status: SERVING }`: field 1, varint, value 1.
const HEALTH_SERVING: [u8; 2] = [0x08, 0x01];

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const X_DEMO_VERSION: HeaderName = HeaderName::from_static("x-demo-version");

/// Whether `req` is a gRPC call.
pub(super) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.method() == Method::POST
        && req
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Answers one gRPC call.
pub(super) async fn handle(app: &App, req: Request<Incoming>) -> Response<Body> {
    let health = req.uri().path() == HEALTH_CHECK_PATH;
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    if health {
        return unary(app, frame(&HEALTH_SERVING));
    }
    app.delay().await;
    if app.inject_error() {
        return trailers_only(app, "14", "injected");
    }
    unary(app, body)
}

/// Reads the whole body, or the response to send instead (413 if too large, 400 if broken).
async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("gRPC request body is larger than {MAX_BODY} bytes"),
        )),
        Err(error) => Err(text(
            StatusCode::BAD_REQUEST,
            &format!("cannot read request body: {error}"),
        )),
    }
}

/// Wraps one message in the 5-byte gRPC frame prefix (uncompressed, big-endian length).
pub(super) fn frame(message: &[u8]) -> Bytes {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// A successful unary response: headers, `payload` as data, then the status trailers.
fn unary(app: &App, payload: Bytes) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    trailers.insert(GRPC_MESSAGE, HeaderValue::from_static(""));
    trailers.insert(X_DEMO_VERSION, app.version_header.clone());
    let frames = [Ok(Frame::data(payload)), Ok(Frame::trailers(trailers))];
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    grpc_response(app, body)
}

/// A trailers-only response: the gRPC status rides in the (only) HEADERS frame.
fn trailers_only(app: &App, status: &'static str, message: &'static str) -> Response<Body> {
    let mut resp = grpc_response(app, full(Bytes::new()));
    let headers = resp.headers_mut();
    headers.insert(GRPC_STATUS, HeaderValue::from_static(status));
    headers.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    resp
}

fn grpc_response(app: &App, body: Body) -> Response<Body> {
    let mut resp = with_status(body, StatusCode::OK);
    set_content_type(resp.headers_mut(), "application/grpc");
    stamp(app, resp.headers_mut());
    resp
}
