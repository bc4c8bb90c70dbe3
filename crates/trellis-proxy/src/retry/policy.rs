//! A route's retry policy, compiled: which outcomes of a try are worth another.
//!
//! Condition names follow Envoy's `retry_on`, so Envoy and Istio users read them as before:
//!
//! | condition | retries responses | retries [`Failure`]s |
//! |---|---|---|
//! | `5xx` | status 500–599 | all: `ConnectFailed`, `Reset`, `PerTryTimeout` |
//! | `gateway-error` | status 502, 503, 504 | all: `ConnectFailed`, `Reset`, `PerTryTimeout` |
//! | `reset` | — | all: `ConnectFailed`, `Reset`, `PerTryTimeout` |
//! | `connect-failure` | — | `ConnectFailed` only |
//! | `retriable-status-codes` | the codes in `retriableStatusCodes` | — |
//! | `cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`, `unavailable` | a `grpc-status` header of 1, 4, 8, 13, 14 in the response headers (trailers-only gRPC responses) | — |
//!
//! In words: a per-try timeout is retried when any of `5xx`, `gateway-error` or `reset` is set
//! (Envoy treats it as a reset it caused itself); a refused connection is retried by any of the
//! four HTTP-level conditions, since nothing reached the server. A peer sidecar's own answer to
//! a gRPC caller (200, `grpc-status` 14/4/13 and `trellis-error`) counts for `5xx` and
//! `gateway-error` as the 503/504/500 it stands for.
//!
//! Two leniencies, so a user's intent is never silently dropped: codes listed in
//! `retriableStatusCodes` are retried even without the `retriable-status-codes` condition, and a
//! bare status code in `retryOn` (Istio's `retryOn: "503,connect-failure"`) adds that code.
//! Unknown names are ignored (the config was validated before it got here). Names are matched
//! case-insensitively.
//!
//! A rule with no `retries` still gets one retry in the cases where it cannot hurt
//! ([`RetryPolicy::implicit`]), so a killed endpoint costs callers latency, not errors:
//!
//! - **a connect failure, whatever the method**: the connection (TCP, mTLS or the HTTP/2
//!   handshake) never came up, so not a byte of the request reached the app and sending it
//!   elsewhere cannot do anything twice. Envoy's `connect-failure` and linkerd2's reconnect
//!   reason the same way.
//! - **a reset, for idempotent methods** (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, RFC 9110
//!   §9.2.2): the request may have reached the app, and the RFC lets a client repeat exactly
//!   these after a broken connection.
//!
//! Only requests with no body get it: replaying a body means buffering it first, which would
//! hold back streaming uploads and gRPC streams and answer `Expect: 100-continue` on the app's
//! behalf. A body worth retrying needs a route that says so (and sets `maxBufferBytes`).
//! Implicit retries go to another endpoint when there is one, count in `trellis_retries_total`
//! and draw on the route's retry budget like any other.
use super::Backoff;
use http::{HeaderMap, Method, StatusCode};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The replay buffer when a policy does not set `maxBufferBytes`.
pub const DEFAULT_MAX_BUFFER_BYTES: usize = 64 * 1024;

/// A try that produced no response, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The connection (or the HTTP/2 handshake) to the endpoint failed: the request never left.
    ConnectFailed,
    /// The connection or stream was reset or closed before a response arrived.
    Reset,
    /// No response within the per-try timeout.
    PerTryTimeout,
}

/// Which outcomes are retried; see the module docs for the exact rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    pub server_error: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub retriable_status_codes: bool,
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_internal: bool,
    pub grpc_unavailable: bool,
}

impl Conditions {
    /// Sets the condition `name`; returns false (and changes nothing) for an unknown name.
    pub fn set(&mut self, name: &str) -> bool {
        let flag = match name.trim().to_ascii_lowercase().as_str() {
            "5xx" => &mut self.server_error,
            "gateway-error" => &mut self.gateway_error,
            "reset" => &mut self.reset,
            "connect-failure" => &mut self.connect_failure,
            "retriable-status-codes" => &mut self.retriable_status_codes,
            "cancelled" => &mut self.grpc_cancelled,
            "deadline-exceeded" => &mut self.grpc_deadline_exceeded,
            "resource-exhausted" => &mut self.grpc_resource_exhausted,
            "internal" => &mut self.grpc_internal,
            "unavailable" => &mut self.grpc_unavailable,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// Whether a gRPC status code is retried.
    pub fn grpc(&self, code: u32) -> bool {
        match code {
            1 => self.grpc_cancelled,
            4 => self.grpc_deadline_exceeded,
            8 => self.grpc_resource_exhausted,
            13 => self.grpc_internal,
            14 => self.grpc_unavailable,
            _ => false,
        }
    }
}

/// A route's retry policy, ready for the request path.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total tries, including the first; at least 1 (1 means no retries).
    pub attempts: u32,
    /// Bound on each try; [`RetryPolicy::try_timeout`] lets the last try use all that remains.
    pub per_try_timeout: Option<Duration>,
    pub conditions: Conditions,
    /// Response statuses retried besides the conditions', sorted and deduplicated.
    pub status_codes: Vec<u16>,
    pub backoff: Backoff,
    /// Request bodies up to this size are buffered for replay; larger ones are sent once.
    pub max_buffer_bytes: usize,
    /// Not configured: the default of a rule without `retries` ([`RetryPolicy::implicit`]).
    /// Its failures are reported as what they were, not as `retries-exhausted`.
    pub implicit: bool,
}

impl RetryPolicy {
    /// Compiles a route's `retries`. A zero per-try timeout means none (as in Envoy).
    pub fn from_config(config: &trellis_api::route::RetryPolicy) -> Self {
        let mut conditions = Conditions::default();
        let mut status_codes = config.retriable_status_codes.clone();
        for name in &config.retry_on {
            if conditions.set(name) {
                continue;
            }
            match name.trim().parse::<u16>() {
                Ok(code) if StatusCode::from_u16(code).is_ok() => status_codes.push(code),
                _ => tracing::debug!(condition = %name, "ignoring unknown retry condition"),
            }
        }
        status_codes.sort_unstable();
        status_codes.dedup();
        Self {
            attempts: config.attempts.max(1),
            per_try_timeout: config
                .per_try_timeout
                .map(|d| d.as_std())
                .filter(|d| !d.is_zero()),
            conditions,
            status_codes,
            backoff: Backoff::from_config(config.backoff.as_ref()),
            max_buffer_bytes: config
                .max_buffer_bytes
                .map_or(DEFAULT_MAX_BUFFER_BYTES, |b| {
                    usize::try_from(b).unwrap_or(usize::MAX)
                }),
            implicit: false,
        }
    }

    /// The retry a request gets on a rule with no `retries` (see the module docs): one retry on
    /// a connect failure, or also on a reset for an idempotent method; `None` for a request
    /// with a body (`body_empty` false), which would have to be buffered to be sent twice.
    pub fn implicit(method: &Method, body_empty: bool) -> Option<Arc<RetryPolicy>> {
        static CONNECT: OnceLock<Arc<RetryPolicy>> = OnceLock::new();
        static CONNECT_OR_RESET: OnceLock<Arc<RetryPolicy>> = OnceLock::new();
        if !body_empty {
            return None;
        }
        let idempotent = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let cell = if idempotent {
            &CONNECT_OR_RESET
        } else {
            &CONNECT
        };
        let policy = cell.get_or_init(|| {
            let conditions = Conditions {
                connect_failure: true,
                reset: idempotent,
                ..Conditions::default()
            };
            Arc::new(RetryPolicy {
                attempts: 2,
                per_try_timeout: None,
                conditions,
                status_codes: Vec::new(),
                backoff: Backoff::default(),
                max_buffer_bytes: 0,
                implicit: true,
            })
        });
        Some(policy.clone())
    }

    /// Whether a try that failed this way may be retried (attempts and budget aside).
    pub fn retry_on_failure(&self, failure: Failure) -> bool {
        let c = &self.conditions;
        let any_reset = c.server_error || c.gateway_error || c.reset;
        match failure {
            Failure::ConnectFailed => any_reset || c.connect_failure,
            Failure::Reset | Failure::PerTryTimeout => any_reset,
        }
    }

    /// Whether a try that got this response (status and headers) may be retried.
    pub fn retry_on_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let c = &self.conditions;
        let code = http_equivalent(status, headers);
        (c.server_error && (500..=599).contains(&code))
            || (c.gateway_error && matches!(code, 502..=504))
            || self.status_codes.binary_search(&code).is_ok()
            || grpc_status(headers).is_some_and(|g| c.grpc(g))
    }

    /// The timeout for try number `attempt` (1-based) when `remaining` is left of the request's
    /// overall timeout: the per-try timeout (within what remains) for all but the last try,
    /// which gets all that remains.
    pub fn try_timeout(&self, attempt: u32, remaining: Option<Duration>) -> Option<Duration> {
        if attempt >= self.attempts {
            return remaining;
        }
        match (self.per_try_timeout, remaining) {
            (Some(per_try), Some(left)) => Some(per_try.min(left)),
            (per_try, left) => per_try.or(left),
        }
    }
}

/// The status a response stands for. A peer sidecar answers a gRPC caller in gRPC (200 and a
/// `grpc-status`, with `trellis-error`) where it would answer 503 or 504 over HTTP; for the
/// HTTP conditions (`5xx`, `gateway-error`) that answer counts as the status it stands for, so
/// a gRPC route is retried past a peer's failure as an HTTP one is.
fn http_equivalent(status: StatusCode, headers: &HeaderMap) -> u16 {
    if status == StatusCode::OK && headers.contains_key("trellis-error") {
        match grpc_status(headers) {
            Some(14) => return 503,
            Some(4) => return 504,
            Some(13) => return 500,
            _ => {}
        }
    }
    status.as_u16()
}

/// The `grpc-status` of a trailers-only response, if present and numeric.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use trellis_api::route::RetryPolicy as Config;

    fn config(retry_on: &[&str]) -> Config {
        Config {
            attempts: 3,
            per_try_timeout: None,
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
            retriable_status_codes: Vec::new(),
            backoff: None,
            budget: None,
            max_buffer_bytes: None,
        }
    }

    fn policy(retry_on: &[&str]) -> RetryPolicy {
        RetryPolicy::from_config(&config(retry_on))
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
    }

    /// The statuses among a sample that `p` retries.
    fn retried(p: &RetryPolicy) -> Vec<u16> {
        [200, 404, 409, 429, 500, 501, 502, 503, 504, 599]
            .into_iter()
            .filter(|&c| p.retry_on_response(status(c), &HeaderMap::new()))
            .collect()
    }

    fn failures(p: &RetryPolicy) -> [bool; 3] {
        [
            Failure::ConnectFailed,
            Failure::Reset,
            Failure::PerTryTimeout,
        ]
        .map(|f| p.retry_on_failure(f))
    }

    #[test]
    fn each_http_condition() {
        let p = policy(&["5xx"]);
        assert_eq!(retried(&p), vec![500, 501, 502, 503, 504, 599]);
        assert_eq!(failures(&p), [true, true, true]);

        let p = policy(&["gateway-error"]);
        assert_eq!(retried(&p), vec![502, 503, 504]);
        assert_eq!(failures(&p), [true, true, true]);

        let p = policy(&["reset"]);
        assert!(retried(&p).is_empty());
        assert_eq!(failures(&p), [true, true, true]);

        let p = policy(&["connect-failure"]);
        assert!(retried(&p).is_empty());
        assert_eq!(failures(&p), [true, false, false]);

        let p = policy(&[]);
        assert!(retried(&p).is_empty());
        assert_eq!(failures(&p), [false, false, false]);
    }

    #[test]
    fn retriable_status_codes() {
        let mut c = config(&["retriable-status-codes"]);
        c.retriable_status_codes = vec![429, 409, 429];
        let p = RetryPolicy::from_config(&c);
        assert!(p.conditions.retriable_status_codes);
        assert_eq!(p.status_codes, vec![409, 429]);
        assert_eq!(retried(&p), vec![409, 429]);
        assert_eq!(failures(&p), [false, false, false]);

        // Listed codes count without the condition; bare codes in retryOn are codes too.
        c.retry_on = vec!["503".into(), "connect-failure".into()];
        let p = RetryPolicy::from_config(&c);
        assert_eq!(retried(&p), vec![409, 429, 503]);
        assert_eq!(failures(&p), [true, false, false]);
    }

    #[test]
    fn grpc_status_names() {
        let names = [
            ("cancelled", 1),
            ("deadline-exceeded", 4),
            ("resource-exhausted", 8),
            ("internal", 13),
            ("unavailable", 14),
        ];
        for (name, code) in names {
            let p = policy(&[name]);
            for other in 0..=16u32 {
                let mut headers = HeaderMap::new();
                headers.insert("grpc-status", HeaderValue::from(other));
                let expected = other == code;
                assert_eq!(
                    p.retry_on_response(StatusCode::OK, &headers),
                    expected,
                    "{name} {other}"
                );
            }
            // No grpc-status, or a malformed one: not a gRPC failure.
            assert!(!p.retry_on_response(StatusCode::OK, &HeaderMap::new()));
            let mut bad = HeaderMap::new();
            bad.insert("grpc-status", HeaderValue::from_static("x14"));
            assert!(!p.retry_on_response(StatusCode::OK, &bad));
            assert_eq!(failures(&p), [false, false, false]);
        }
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static(" 14 "));
        assert!(policy(&["Unavailable"]).retry_on_response(StatusCode::OK, &headers));
        assert!(!policy(&["5xx"]).retry_on_response(StatusCode::OK, &headers));
    }

    #[test]
    fn a_peer_sidecars_grpc_answer_counts_as_the_status_it_stands_for() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        // From the app itself: only the gRPC conditions apply.
        assert!(!policy(&["5xx"]).retry_on_response(StatusCode::OK, &headers));
        headers.insert("trellis-error", HeaderValue::from_static("upstream-reset"));
        assert!(policy(&["5xx"]).retry_on_response(StatusCode::OK, &headers));
        assert!(policy(&["gateway-error"]).retry_on_response(StatusCode::OK, &headers));
        headers.insert("grpc-status", HeaderValue::from_static("12"));
        assert!(!policy(&["5xx"]).retry_on_response(StatusCode::OK, &headers));
    }

    #[test]
    fn unknown_names_are_ignored() {
        let p = policy(&["bogus", "retriable-4xx", "99999", "reset"]);
        assert_eq!(
            p.conditions,
            Conditions {
                reset: true,
                ..Conditions::default()
            }
        );
        assert!(p.status_codes.is_empty());
    }

    #[test]
    fn defaults_and_limits() {
        let mut c = config(&["5xx"]);
        c.attempts = 0;
        c.per_try_timeout = Some(trellis_api::Duration::from_millis(0));
        let p = RetryPolicy::from_config(&c);
        assert_eq!(p.attempts, 1);
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(p.max_buffer_bytes, 64 * 1024);
        assert_eq!(p.backoff, Backoff::default());

        c.max_buffer_bytes = Some(1024);
        c.per_try_timeout = Some(trellis_api::Duration::from_millis(200));
        let p = RetryPolicy::from_config(&c);
        assert_eq!(p.max_buffer_bytes, 1024);
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(200)));
    }

    #[test]
    fn implicit_retries_only_what_cannot_hurt() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            let p = RetryPolicy::implicit(&m, true).expect("idempotent, no body");
            assert!(p.implicit);
            assert_eq!(p.attempts, 2, "{m}");
            // Connect failures and resets; per-try timeouts never happen (none is set).
            assert_eq!(failures(&p), [true, true, true], "{m}");
            assert!(retried(&p).is_empty(), "{m}: no response is retried");
            assert_eq!(p.try_timeout(1, None), None);
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            let p = RetryPolicy::implicit(&m, true).expect("no body");
            assert_eq!(
                failures(&p),
                [true, false, false],
                "{m}: connect failures only"
            );
            assert!(retried(&p).is_empty());
        }
        // A body would have to be buffered to be replayed: no implicit retry.
        assert!(RetryPolicy::implicit(&Method::GET, false).is_none());
        assert!(RetryPolicy::implicit(&Method::POST, false).is_none());
        assert!(!policy(&["5xx"]).implicit);
    }

    #[test]
    fn last_try_gets_the_remaining_time() {
        let mut c = config(&["5xx"]);
        c.per_try_timeout = Some(trellis_api::Duration::from_millis(200));
        let p = RetryPolicy::from_config(&c);
        let ms = Duration::from_millis;
        assert_eq!(p.try_timeout(1, Some(ms(1000))), Some(ms(200)));
        assert_eq!(p.try_timeout(2, Some(ms(150))), Some(ms(150)));
        assert_eq!(p.try_timeout(2, None), Some(ms(200)));
        assert_eq!(p.try_timeout(3, Some(ms(600))), Some(ms(600)));
        assert_eq!(p.try_timeout(3, None), None);
        assert_eq!(policy(&[]).try_timeout(1, None), None);
    }
}
