//! Errors the proxy answers itself. Every one carries `trellis-error: <reason>` and a one-line
//! explanation in the body, and is counted by reason, so a 503 always says why.
use crate::body::{self, Body};
use http::{HeaderValue, Response, StatusCode};

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
            | Reason::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamReset => StatusCode::BAD_GATEWAY,
            Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::Denied | Reason::UpgradeRefused => StatusCode::FORBIDDEN,
            Reason::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A proxy-generated failure: the reason plus what a human needs to act on it.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub reason: Reason,
    pub status: StatusCode,
    pub detail: String,
}

impl ProxyError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            status: reason.status(),
            detail: detail.into(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let text = format!("{}: {}\n", self.reason.as_str(), self.detail);
        let mut rsp = Response::new(body::full(text));
        *rsp.status_mut() = self.status;
        let headers = rsp.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.reason.as_str()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}
