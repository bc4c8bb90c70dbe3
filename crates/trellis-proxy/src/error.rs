//! Errors the proxy answers itself. Every one carries `trellis-error: <reason>` and a one-line
//! explanation, and is counted by reason, so a 503 always says why.
//!
//! [`ProxyError::into_response`] is the one place that decides what such an answer looks like,
//! from the [`Shape`] the caller understands: an HTTP caller gets the HTTP status and the
//! explanation as a text body; a gRPC caller gets what every gRPC client understands, HTTP 200
//! with `grpc-status` mapped from the reason ([`Reason::grpc_code`]) and the explanation in a
//! percent-encoded `grpc-message`, as a trailers-only answer (one HEADERS frame that ends the
//! stream). A gRPC client shown a 503 would only report "Received http2 header with status:
//! 503"; shown `UNAVAILABLE` with a message, its retry policy and its user know what happened.
use crate::body::{self, Body};
use crate::grpc;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// The response header naming why the proxy, not the application, answered.
pub const ERROR_HEADER: &str = "trellis-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NoRoute,
    NoHealthyEndpoints,
    ConnectFailed,
    UpstreamReset,
    Timeout,
    RetriesExhausted,
    FaultInjected,
    BadRequest,
    NotReady,
    PoolOverflow,
    /// Refused by an AuthorizationPolicy.
    Denied,
    /// A JWT was present but not valid.
    Unauthenticated,
    /// An HTTP upgrade (or CONNECT) the destination port does not permit.
    UpgradeRefused,
    /// On-demand discovery got no answer from the control plane in time.
    DiscoveryTimeout,
    /// A captured connection to a destination outside the mesh, under `RegistryOnly`.
    EgressDenied,
    /// Over a local rate limit (a Route rule's `rateLimit`, a `RateLimitPolicy`).
    RateLimited,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no-route",
            Reason::NoHealthyEndpoints => "no-healthy-endpoints",
            Reason::ConnectFailed => "connect-failed",
            Reason::UpstreamReset => "upstream-reset",
            Reason::Timeout => "timeout",
            Reason::RetriesExhausted => "retries-exhausted",
            Reason::FaultInjected => "fault-injected",
            Reason::BadRequest => "bad-request",
            Reason::NotReady => "not-ready",
            Reason::PoolOverflow => "pool-overflow",
            Reason::Denied => "denied",
            Reason::Unauthenticated => "unauthenticated",
            Reason::UpgradeRefused => "upgrade-refused",
            Reason::DiscoveryTimeout => "discovery-timeout",
            Reason::EgressDenied => "egress-denied",
            Reason::RateLimited => "rate-limited",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::NoHealthyEndpoints
            | Reason::ConnectFailed
            | Reason::RetriesExhausted
            | Reason::NotReady
            | Reason::PoolOverflow
            | Reason::DiscoveryTimeout
            | Reason::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamReset | Reason::EgressDenied => StatusCode::BAD_GATEWAY,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::Denied | Reason::UpgradeRefused => StatusCode::FORBIDDEN,
            Reason::Unauthenticated => StatusCode::UNAUTHORIZED,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The gRPC status a gRPC caller is answered with (the table in `docs/architecture.md`).
    /// Whatever a retry or a moment may cure is `UNAVAILABLE`, the code gRPC clients retry;
    /// `no-route` is `UNIMPLEMENTED`, what a server says of a method it does not serve. An
    /// injected fault maps its HTTP status instead (see [`ProxyError::grpc_code`]).
    pub fn grpc_code(self) -> grpc::Code {
        use grpc::Code;
        match self {
            Reason::NoRoute => Code::Unimplemented,
            Reason::NoHealthyEndpoints
            | Reason::ConnectFailed
            | Reason::UpstreamReset
            | Reason::RetriesExhausted
            | Reason::NotReady
            | Reason::DiscoveryTimeout
            | Reason::PoolOverflow => Code::Unavailable,
            Reason::Timeout => Code::DeadlineExceeded,
            Reason::FaultInjected => Code::from_http(self.status()),
            Reason::BadRequest => Code::Internal,
            Reason::Denied | Reason::UpgradeRefused | Reason::EgressDenied => {
                Code::PermissionDenied
            }
            Reason::Unauthenticated => Code::Unauthenticated,
            Reason::RateLimited => Code::ResourceExhausted,
        }
    }
}

/// What kind of answer the caller understands, decided once from its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    #[default]
    Http,
    /// The request's `content-type` is `application/grpc*`.
    Grpc,
}

impl Shape {
    pub fn of(request_headers: &HeaderMap) -> Shape {
        if grpc::is_grpc(request_headers) {
            Shape::Grpc
        } else {
            Shape::Http
        }
    }
}

/// A proxy-generated failure: the reason plus what a human needs to act on it.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub reason: Reason,
    pub status: StatusCode,
    pub detail: String,
    /// The gRPC status for a gRPC caller when it is not the reason's (an injected gRPC fault).
    pub grpc: Option<grpc::Code>,
    /// Tries made upstream before the proxy gave up, when it tried (for the access log).
    pub attempts: Option<u32>,
    /// Seconds the caller should wait before trying again, sent as `retry-after`.
    pub retry_after: Option<u64>,
}

impl ProxyError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            status: reason.status(),
            detail: detail.into(),
            grpc: None,
            attempts: None,
            retry_after: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Answers gRPC callers with `code` (an injected gRPC fault names its code).
    pub fn with_grpc_code(mut self, code: grpc::Code) -> Self {
        self.grpc = Some(code);
        self
    }

    /// The `grpc-status` a gRPC caller gets: the one set explicitly, else the HTTP status mapped
    /// as the gRPC spec says when it is not the reason's own (an injected HTTP fault), else the
    /// reason's.
    pub fn grpc_code(&self) -> grpc::Code {
        match self.grpc {
            Some(code) => code,
            None if self.status != self.reason.status() => grpc::Code::from_http(self.status),
            None => self.reason.grpc_code(),
        }
    }

    /// The answer, shaped for the caller. The reason rides along in the response's extensions
    /// for whoever counts it.
    pub fn into_response(self, shape: Shape) -> Response<Body> {
        let mut rsp = match shape {
            Shape::Http => {
                let text = format!("{}: {}\n", self.reason.as_str(), self.detail);
                let mut rsp = Response::new(body::full(text));
                *rsp.status_mut() = self.status;
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                rsp
            }
            Shape::Grpc => {
                // An empty body that is over before it starts: hyper sends the headers with
                // END_STREAM, the trailers-only form.
                let mut rsp = Response::new(body::empty());
                let code = self.grpc_code();
                let message = format!("{}: {}", self.reason.as_str(), self.detail);
                let h = rsp.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(grpc::CONTENT_TYPE),
                );
                h.insert(grpc::GRPC_STATUS, code.header_value());
                h.insert(grpc::GRPC_MESSAGE, grpc::encode_message(&message));
                rsp
            }
        };
        rsp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(self.reason.as_str()));
        rsp.extensions_mut().insert(self.reason);
        if let Some(secs) = self.retry_after {
            rsp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(n) = self.attempts {
            rsp.extensions_mut().insert(crate::access_log::Attempts(n));
        }
        rsp
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::Code;
    use http_body_util::BodyExt;

    const ALL: [Reason; 15] = [
        Reason::NoRoute,
        Reason::NoHealthyEndpoints,
        Reason::ConnectFailed,
        Reason::UpstreamReset,
        Reason::Timeout,
        Reason::RetriesExhausted,
        Reason::FaultInjected,
        Reason::BadRequest,
        Reason::NotReady,
        Reason::PoolOverflow,
        Reason::Denied,
        Reason::Unauthenticated,
        Reason::UpgradeRefused,
        Reason::DiscoveryTimeout,
        Reason::RateLimited,
    ];

    /// The table in docs/architecture.md, row by row.
    #[test]
    fn every_reason_has_its_grpc_status() {
        let table: Vec<(&str, Code)> = ALL.iter().map(|r| (r.as_str(), r.grpc_code())).collect();
        assert_eq!(
            table,
            vec![
                ("no-route", Code::Unimplemented),
                ("no-healthy-endpoints", Code::Unavailable),
                ("connect-failed", Code::Unavailable),
                ("upstream-reset", Code::Unavailable),
                ("timeout", Code::DeadlineExceeded),
                ("retries-exhausted", Code::Unavailable),
                ("fault-injected", Code::Unavailable),
                ("bad-request", Code::Internal),
                ("not-ready", Code::Unavailable),
                ("pool-overflow", Code::Unavailable),
                ("denied", Code::PermissionDenied),
                ("unauthenticated", Code::Unauthenticated),
                ("upgrade-refused", Code::PermissionDenied),
                ("discovery-timeout", Code::Unavailable),
                ("rate-limited", Code::ResourceExhausted),
            ]
        );
    }

    #[test]
    fn injected_faults_map_their_status_or_name_their_code() {
        let e = ProxyError::new(Reason::FaultInjected, "x");
        assert_eq!(e.grpc_code(), Code::Unavailable);
        let e = e.with_status(StatusCode::FORBIDDEN);
        assert_eq!(e.grpc_code(), Code::PermissionDenied);
        let e = e.with_status(StatusCode::IM_A_TEAPOT);
        assert_eq!(e.grpc_code(), Code::Unknown);
        let e = e.with_grpc_code(Code::Aborted);
        assert_eq!(e.grpc_code(), Code::Aborted);
    }

    #[test]
    fn the_caller_decides_the_shape() {
        let mut h = HeaderMap::new();
        assert_eq!(Shape::of(&h), Shape::Http);
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(Shape::of(&h), Shape::Grpc);
    }

    #[tokio::test]
    async fn http_callers_get_the_status_and_a_text_body() {
        let rsp = ProxyError::new(Reason::NoHealthyEndpoints, "web has no healthy endpoint")
            .into_response(Shape::Http);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[ERROR_HEADER], "no-healthy-endpoints");
        assert!(rsp.headers().get("grpc-status").is_none());
        assert_eq!(
            rsp.extensions().get::<Reason>(),
            Some(&Reason::NoHealthyEndpoints)
        );
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "no-healthy-endpoints: web has no healthy endpoint\n");
    }

    #[tokio::test]
    async fn grpc_callers_get_a_trailers_only_grpc_answer() {
        let rsp = ProxyError::new(Reason::NoRoute, "no rule matches POST /a.B/C%20d\n")
            .into_response(Shape::Grpc);
        assert_eq!(rsp.status(), StatusCode::OK);
        let h = rsp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "12");
        assert_eq!(
            h["grpc-message"],
            "no-route: no rule matches POST /a.B/C%2520d%0A"
        );
        assert_eq!(h[ERROR_HEADER], "no-route");
        // No body, no trailers: hyper ends the stream with the headers.
        let body = rsp.into_body();
        assert!(http_body::Body::is_end_stream(&body));
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert!(collected.to_bytes().is_empty());

        let rsp = ProxyError::new(Reason::Timeout, "slow").into_response(Shape::Grpc);
        assert_eq!(rsp.headers()["grpc-status"], "4");
        let rsp = ProxyError::new(Reason::Denied, "no").into_response(Shape::Grpc);
        assert_eq!(rsp.headers()["grpc-status"], "7");
        let mut e = ProxyError::new(Reason::RateLimited, "slow down");
        e.retry_after = Some(2);
        let rsp = e.clone().into_response(Shape::Grpc);
        assert_eq!(rsp.headers()["grpc-status"], "8");
        assert_eq!(rsp.headers()["retry-after"], "2");
        let rsp = e.into_response(Shape::Http);
        assert_eq!(rsp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(rsp.headers()[ERROR_HEADER], "rate-limited");
        assert_eq!(rsp.headers()["retry-after"], "2");
    }
}
