//! What the proxy needs to know about gRPC without speaking protobuf: status codes, how a
//! request says it is gRPC, the `grpc-message` encoding, and a response body that reports the
//! final `grpc-status` when the trailers go by.
//!
//! gRPC rides on HTTP/2 with HTTP status 200 and puts its real outcome in `grpc-status`: in the
//! trailers after the messages, or in the headers of a "trailers-only" answer (one HEADERS frame
//! with END_STREAM). A gRPC client that gets anything else (a 503 with a text body) reports an
//! HTTP-shaped error that says nothing about why. So the proxy answers a gRPC caller in gRPC
//! ([`crate::error`] decides the shape) and classifies gRPC answers by `grpc-status`, not by
//! the HTTP status ([`crate::metrics`]).
//!
//! Nothing here panics on what a peer sends: an unparsable or unknown status is read as
//! `UNKNOWN`, as gRPC clients do.
use crate::body::{Body, BoxError};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";
pub const CONTENT_TYPE: &str = "application/grpc";

/// A gRPC status code (the 17 codes of the gRPC spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// Every code, indexed by its number.
const ALL: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The codes as header values and metric labels, indexed by number (no allocation per use).
const DIGITS: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

impl Code {
    /// The code for a number; numbers outside the spec are `UNKNOWN`, as clients read them.
    pub fn from_u32(n: u32) -> Code {
        usize::try_from(n)
            .ok()
            .and_then(|i| ALL.get(i))
            .copied()
            .unwrap_or(Code::Unknown)
    }

    pub fn as_u32(self) -> u32 {
        u32::from(self as u8)
    }

    /// The decimal form, as sent in `grpc-status` and used as the `grpc_status` metric label.
    pub fn as_str(self) -> &'static str {
        DIGITS[self as usize]
    }

    /// The spec's name (`UNAVAILABLE`), for humans.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// The gRPC spec's mapping of an HTTP status to a code (used when something that speaks
    /// HTTP, such as an injected HTTP fault, must answer a gRPC caller).
    pub fn from_http(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u32())
    }
}

/// Whether a message (request or response) is gRPC: its `content-type` is `application/grpc`
/// or `application/grpc+proto`, `application/grpc-web`, and so on.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(CONTENT_TYPE.as_bytes()))
}

/// The `grpc-status` in `headers` (trailers, or the headers of a trailers-only answer), if
/// any; a value that is not a number is read as `UNKNOWN`.
pub fn status_of(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get(GRPC_STATUS)?;
    let n = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    Some(n.map_or(Code::Unknown, Code::from_u32))
}

/// Longest `grpc-message` the proxy sends, before encoding: a proxy answer says why in a line,
/// and some clients cap the size of the headers they accept.
const MAX_MESSAGE: usize = 1024;

/// `message` percent-encoded as the gRPC spec requires of `grpc-message`: every byte outside
/// printable ASCII (0x20–0x7E), and `%` itself, becomes `%XX` of the UTF-8 encoding. Cut at
/// [`MAX_MESSAGE`] bytes on a character boundary.
pub fn encode_message(message: &str) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(end + 16);
    for &b in &message.as_bytes()[..end] {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.push(b'%');
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        }
    }
    // Only printable ASCII is left, which is always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
}

/// What a gRPC response came to once its stream ended (or was abandoned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A `grpc-status` arrived (in the trailers).
    Status(Code),
    /// The stream ended, or failed, without a `grpc-status`: the client sees an error.
    NoStatus,
    /// The response was dropped before its end: the downstream client went away or cancelled.
    Dropped,
}

/// A response body that tells `on_end` how a gRPC stream ended: the `grpc-status` of its
/// trailers, none, or dropped before the end. Frames pass through untouched; only a trailers
/// frame is looked at, so the cost is one branch per frame.
pub struct WatchStatus<F: FnOnce(Ending)> {
    inner: Body,
    on_end: Option<F>,
}

impl<F: FnOnce(Ending)> WatchStatus<F> {
    pub fn new(inner: Body, on_end: F) -> Self {
        Self {
            inner,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, ending: Ending) {
        if let Some(f) = self.on_end.take() {
            f(ending);
        }
    }
}

// `Body` is a boxed body (Unpin), and the callback is only ever moved out, never pinned.
impl<F: FnOnce(Ending)> Unpin for WatchStatus<F> {}

impl<F: FnOnce(Ending)> http_body::Body for WatchStatus<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let ending = status_of(trailers).map_or(Ending::NoStatus, Ending::Status);
                    this.end(ending);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.end(Ending::NoStatus),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(Ending)> Drop for WatchStatus<F> {
    fn drop(&mut self) {
        // A server stops polling a body that says it has ended; that is an end, not a drop.
        let ending = if http_body::Body::is_end_stream(&self.inner) {
            Ending::NoStatus
        } else {
            Ending::Dropped
        };
        self.end(ending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    #[test]
    fn codes_round_trip_and_unknown_numbers_are_unknown() {
        for (i, c) in ALL.iter().enumerate() {
            assert_eq!(c.as_u32() as usize, i);
            assert_eq!(Code::from_u32(c.as_u32()), *c);
            assert_eq!(c.as_str(), i.to_string());
        }
        assert_eq!(Code::from_u32(17), Code::Unknown);
        assert_eq!(Code::from_u32(u32::MAX), Code::Unknown);
        assert_eq!(Code::Unavailable.to_string(), "UNAVAILABLE (14)");
    }

    #[test]
    fn status_is_read_leniently() {
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert(GRPC_STATUS, HeaderValue::from_static(" 14 "));
        assert_eq!(status_of(&h), Some(Code::Unavailable));
        h.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(status_of(&h), Some(Code::Unknown));
        h.insert(GRPC_STATUS, HeaderValue::from_static("99"));
        assert_eq!(status_of(&h), Some(Code::Unknown));
        h.insert(GRPC_STATUS, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(status_of(&h), Some(Code::Unknown));
    }

    #[test]
    fn grpc_content_types() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc-web+proto"));
        assert!(!with("application/json"));
        assert!(!with("text/application/grpc"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn http_statuses_map_as_the_spec_says() {
        let m = |s: u16| Code::from_http(StatusCode::from_u16(s).unwrap());
        assert_eq!(m(400), Code::Internal);
        assert_eq!(m(401), Code::Unauthenticated);
        assert_eq!(m(403), Code::PermissionDenied);
        assert_eq!(m(404), Code::Unimplemented);
        for s in [429, 502, 503, 504] {
            assert_eq!(m(s), Code::Unavailable);
        }
        assert_eq!(m(500), Code::Unknown);
        assert_eq!(m(418), Code::Unknown);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no route"), "no route");
        assert_eq!(encode_message("100% sure"), "100%25 sure");
        assert_eq!(encode_message("a\nb\tc"), "a%0Ab%09c");
        assert_eq!(encode_message("café ✓"), "caf%C3%A9 %E2%9C%93");
        assert_eq!(encode_message("\x7f~"), "%7F~");
        // Long messages are cut on a character boundary, never mid-character.
        let long = "é".repeat(MAX_MESSAGE);
        let v = encode_message(&long);
        assert_eq!(v.len(), MAX_MESSAGE / 2 * 6);
    }

    fn recorder() -> (Arc<Mutex<Vec<Ending>>>, impl FnOnce(Ending)) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, move |e| s.lock().unwrap().push(e))
    }

    fn with_trailers(status: Option<&'static str>) -> Body {
        let mut trailers = HeaderMap::new();
        if let Some(s) = status {
            trailers.insert(GRPC_STATUS, HeaderValue::from_static(s));
        }
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01x"))),
            Ok(Frame::trailers(trailers)),
        ];
        body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn the_trailers_status_is_reported_once() {
        let (seen, f) = recorder();
        let collected = WatchStatus::new(with_trailers(Some("13")), f)
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers().unwrap()[GRPC_STATUS], "13");
        assert_eq!(*seen.lock().unwrap(), vec![Ending::Status(Code::Internal)]);

        let (seen, f) = recorder();
        WatchStatus::new(with_trailers(None), f)
            .collect()
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Ending::NoStatus]);

        let (seen, f) = recorder();
        WatchStatus::new(body::full("no trailers"), f)
            .collect()
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Ending::NoStatus]);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_reported_as_dropped() {
        let (seen, f) = recorder();
        let mut b = WatchStatus::new(with_trailers(Some("0")), f);
        let first = b.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(b);
        assert_eq!(*seen.lock().unwrap(), vec![Ending::Dropped]);

        // An empty body a server never polls has ended, not been dropped.
        let (seen, f) = recorder();
        drop(WatchStatus::new(body::empty(), f));
        assert_eq!(*seen.lock().unwrap(), vec![Ending::NoStatus]);
    }
}
