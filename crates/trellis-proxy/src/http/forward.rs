//! Sending a routed request to a backend: pick an endpoint, try, classify, maybe retry (bounded by
//! attempts, the retry budget and the replay buffer), all within the rule's timeout. The last
//! attempt gets whatever time remains. Mirroring ([`super::mirror`]) starts here; upgrades
//! ([`super::upgrade`]) take their own path.
use super::headers::strip_hop_by_hop;
use super::mirror::mirror;
use super::replay::{clone_parts, prepare, Prepared, Replayable};
use crate::access_log::Attempts;
use crate::body::{self, Body};
use crate::config::{BackendRef, Rule, Snapshot};
use crate::error::{ProxyError, Reason};
use crate::metrics::RetryLabels;
use crate::resilience::Outcome;
use crate::retry::{Backoff, Failure, RetryPolicy};
use crate::upstream::{self, feedback, pick, AttemptError, Context, Ended, Picked, Upstream, Wire};
use http::{request::Parts, Request, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Request bodies are buffered up to this for mirroring when no retry policy says otherwise.
const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// Everything an attempt needs besides the body.
pub struct Target<'a, U> {
    /// Where tries are sent: [`crate::upstream::Upstreams`], or a fake in tests.
    pub upstream: &'a Arc<U>,
    pub ctx: Context<'a>,
    pub snapshot: &'a Snapshot,
    pub rule: &'a Rule,
    pub service: &'a str,
    pub wire: Wire,
    pub peer: SocketAddr,
    /// The request's trace, when it is sampled: each attempt gets a CLIENT span.
    pub trace: Option<&'a crate::trace::Traced>,
    /// Where the last try went, for the request's metric labels.
    pub chosen: &'a Chosen,
}

/// Where a request's last try went: its backend (the `destination_subset` label) and endpoint
/// (the `destination_workload` and `mtls` labels). Nothing until a try picks one: a fault or a
/// refusal leaves the labels empty.
pub struct Chosen {
    backend: AtomicUsize,
    endpoint: Mutex<Option<(Arc<str>, bool)>>,
}

impl Default for Chosen {
    fn default() -> Self {
        Self {
            backend: AtomicUsize::new(usize::MAX),
            endpoint: Mutex::new(None),
        }
    }
}

impl Chosen {
    /// The index in the rule's `backends` of the last try's backend (`usize::MAX`: none).
    pub fn backend(&self) -> usize {
        self.backend.load(Ordering::Relaxed)
    }

    /// The last try's endpoint: its workload label, and whether the try went over mTLS.
    pub fn endpoint(&self) -> Option<(Arc<str>, bool)> {
        self.endpoint.lock().ok()?.clone()
    }

    /// Notes a try to `picked` over `dial`.
    pub fn tried(&self, picked: &Picked, dial: &upstream::Dial) {
        if let Ok(mut e) = self.endpoint.lock() {
            *e = Some((picked.endpoint().workload.clone(), dial.tls.is_some()));
        }
    }
}

pub async fn forward<U: Upstream>(
    t: &Target<'_, U>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let deadline = t
        .rule
        .timeout
        .map(|limit| tokio::time::Instant::now() + limit);
    let fut = forward_inner(t, req, deadline);
    match t.rule.timeout {
        None => fut.await,
        Some(limit) => tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
            Err(ProxyError::new(
                Reason::Timeout,
                format!(
                    "no response within the route timeout of {limit:?} (route {})",
                    t.rule.name
                ),
            ))
        }),
    }
}

async fn forward_inner<U: Upstream>(
    t: &Target<'_, U>,
    req: Request<Body>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Response<Body>, ProxyError> {
    // A rule without `retries` still retries what cannot hurt (see `RetryPolicy::implicit`).
    let policy = t.rule.retry.clone().or_else(|| {
        RetryPolicy::implicit(req.method(), http_body::Body::is_end_stream(req.body()))
    });
    let attempts = policy.as_ref().map_or(1, |p| p.attempts.max(1));
    t.rule.budget.deposit();
    if attempts == 1 && t.rule.mirror.is_none() {
        let backend = choose_backend(t)?;
        let picked = pick(t.snapshot, backend, Some(req.headers()), t.peer.ip(), None)?;
        let result = attempt(t, &picked, req, None, false).await;
        return counted(t, result, 1).map_err(|e| failure_error(e, 1));
    }
    let limit = policy
        .as_ref()
        .map_or(DEFAULT_REPLAY_LIMIT, |p| p.max_buffer_bytes);
    // A client that asks `Expect: 100-continue` sends its body only once the app asked for it:
    // reading it here to make it replayable would answer for the app. Such a request is sent
    // once, streaming (no retry, no mirror).
    let continues = body::expects_continue(&req);
    let empty = http_body::Body::is_end_stream(req.body());
    let (parts, body) = req.into_parts();
    let prepared = if continues {
        Prepared::Streaming(body)
    } else if empty {
        // Nothing to read (most GETs, and every implicit retry): replay an empty body.
        Prepared::Replayable(Replayable::empty())
    } else {
        let length = content_length(&parts.headers);
        prepare(body, limit, length).await.map_err(|e| {
            ProxyError::new(Reason::BadRequest, format!("reading the request body: {e}"))
        })?
    };
    match prepared {
        Prepared::Streaming(body) => {
            let backend = choose_backend(t)?;
            let picked = pick(t.snapshot, backend, Some(&parts.headers), t.peer.ip(), None)?;
            let req = Request::from_parts(parts, body);
            let limit = policy.as_ref().and_then(|p| p.per_try_timeout);
            let result = attempt(t, &picked, req, limit, false).await;
            counted(t, result, 1).map_err(|e| failure_error(e, 1))
        }
        Prepared::Replayable(replay) => {
            mirror(t, &parts, &replay);
            retry_loop(t, policy, attempts, parts, &replay, deadline).await
        }
    }
}

async fn retry_loop<U: Upstream>(
    t: &Target<'_, U>,
    policy: Option<Arc<RetryPolicy>>,
    attempts: u32,
    parts: Parts,
    replay: &Replayable,
    deadline: Option<tokio::time::Instant>,
) -> Result<Response<Body>, ProxyError> {
    let backoff = policy
        .as_ref()
        .map(|p| p.backoff.clone())
        .unwrap_or_default();
    let mut avoid = None;
    let mut parts = Some(parts);
    for n in 1..=attempts {
        let backend = choose_backend(t)?;
        let Some(head) = parts.as_ref() else { break };
        let picked = pick(t.snapshot, backend, Some(&head.headers), t.peer.ip(), avoid)?;
        let last = n == attempts;
        // The last try takes the request head itself; earlier ones send a copy.
        let head = if last {
            parts.take()
        } else {
            parts.as_ref().map(clone_parts)
        };
        let Some(head) = head else { break };
        let req = Request::from_parts(head, replay.body());
        // The last try gets whatever remains of the request timeout.
        let remaining = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let limit = policy.as_ref().and_then(|p| p.try_timeout(n, remaining));
        let result = attempt(t, &picked, req, limit, n > 1).await;
        let retry = match (&result, policy.as_deref()) {
            (_, None) | (Err(TryFailure::Refused(_)), _) => false,
            (Ok(rsp), Some(p)) => p.retry_on_response(rsp.status(), rsp.headers()),
            (Err(TryFailure::Upstream(e)), Some(p)) => p.retry_on_failure(e.failure),
        };
        let implicit = policy.as_ref().is_some_and(|p| p.implicit);
        if !retry || last {
            return counted(t, result, n).map_err(|e| retry_failure_error(e, n, implicit));
        }
        if !t.rule.budget.try_withdraw() {
            count_retry(t, "budget-exhausted");
            return counted(t, result, n).map_err(|e| retry_failure_error(e, n, implicit));
        }
        count_retry(t, "attempted");
        avoid = Some(picked.endpoint().addr);
        tokio::time::sleep(backoff_delay(&backoff, n)).await;
    }
    Err(ProxyError::new(Reason::RetriesExhausted, "no attempt made"))
}

/// Puts the number of tries on an answer whose access-log line will want it (only then: an
/// extension costs an allocation).
fn counted<U>(
    t: &Target<'_, U>,
    result: Result<Response<Body>, TryFailure>,
    tries: u32,
) -> Result<Response<Body>, TryFailure> {
    if !t.snapshot.mesh.telemetry.access_log.enabled {
        return result;
    }
    result.map(|mut rsp| {
        rsp.extensions_mut().insert(Attempts(tries));
        rsp
    })
}

fn backoff_delay(b: &Backoff, retry_number: u32) -> Duration {
    b.delay(retry_number)
}

fn count_retry<U>(t: &Target<'_, U>, outcome: &'static str) {
    t.ctx
        .metrics
        .retries
        .get_or_create(&RetryLabels {
            service: Arc::from(t.service),
            route: t.rule.name.clone(),
            outcome,
        })
        .inc();
}

/// Why a try produced no upstream answer.
enum TryFailure {
    /// The upstream failed (retry policy decides what happens next).
    Upstream(AttemptError),
    /// The proxy refused to send it (a circuit-breaking limit): never retried.
    Refused(ProxyError),
}

impl From<AttemptError> for TryFailure {
    fn from(e: AttemptError) -> Self {
        TryFailure::Upstream(e)
    }
}

/// One try against one endpoint, bounded by `limit`, admitted by the service's limits, and
/// reported to outlier detection. A try that times out teaches the balancer its latency, so
/// peak-EWMA steers away from an endpoint that hangs.
async fn attempt<U: Upstream>(
    t: &Target<'_, U>,
    picked: &Picked,
    req: Request<Body>,
    limit: Option<Duration>,
    retry: bool,
) -> Result<Response<Body>, TryFailure> {
    let svc = picked.service();
    let dial = picked.dial(&t.ctx);
    let hold_connection = t.wire == Wire::Http1;
    let _permit = svc
        .limit_state
        .admit(&svc.limits, retry, hold_connection, dial.timeout)
        .await
        .map_err(|o| TryFailure::Refused(upstream::overflow(svc, o)))?;
    let mut req = req;
    t.chosen.tried(picked, &dial);
    name_workload(req.headers_mut(), &dial, t.ctx.workload);
    let span = t.trace.map(|traced| {
        let method = req.method().clone();
        let mut span = traced.start(
            crate::trace::Kind::Client,
            method.as_str(),
            req.headers_mut(),
        );
        span.text("http.request.method", method.as_str());
        span.text("url.path", req.uri().path());
        span.text("server.address", t.service);
        span.text("http.route", &t.rule.name);
        span.text("network.peer.address", &dial.addr.to_string());
        span.number("trellis.retry", i64::from(retry));
        if let Some(id) = &picked.endpoint().identity {
            span.text("trellis.peer.identity", &id.to_string());
        }
        span
    });
    let mut in_flight = picked.start();
    let send = t.upstream.send(&dial, t.wire, req);
    let result = match limit {
        None => send.await,
        Some(limit) => tokio::time::timeout(limit, send).await.unwrap_or_else(|_| {
            Err(AttemptError {
                failure: Failure::PerTryTimeout,
                detail: format!(
                    "{}: no response within the per-try timeout of {limit:?}",
                    dial.addr
                ),
            })
        }),
    };
    let ended = match &result {
        Ok(rsp) => Ended::Answered(Outcome::of_response(rsp.status(), rsp.headers())),
        Err(e) => Ended::Failed(e.failure),
    };
    feedback::record(t.ctx.metrics, picked, &mut in_flight, ended);
    let mut rsp = match (result, span) {
        (Ok(rsp), Some(span)) => span.end_with_body(None, rsp),
        (Ok(rsp), None) => rsp,
        (Err(e), Some(span)) => {
            span.end(None, Some(e.reason().as_str()));
            return Err(e.into());
        }
        (Err(e), None) => return Err(e.into()),
    };
    strip_hop_by_hop(rsp.headers_mut(), false);
    Ok(rsp)
}

/// Names this sidecar's workload to a mesh peer (over mTLS, where the peer believes it), and
/// to nobody else: whatever the app put in the header is replaced or removed.
pub fn name_workload(
    headers: &mut http::HeaderMap,
    dial: &upstream::Dial,
    workload: Option<&http::HeaderValue>,
) {
    use crate::metrics::workloads::SOURCE_WORKLOAD;
    match workload {
        Some(name) if dial.tls.is_some() => {
            headers.insert(SOURCE_WORKLOAD, name.clone());
        }
        _ => {
            headers.remove(SOURCE_WORKLOAD);
        }
    }
}

/// Like [`failure_error`], except that when the retries were implicit (the route has none) the
/// answer names what failed rather than `retries-exhausted`: the caller asked for no retries.
fn retry_failure_error(e: TryFailure, attempts: u32, implicit: bool) -> ProxyError {
    if !implicit || attempts == 1 {
        return failure_error(e, attempts);
    }
    let mut error = failure_error(e, 1);
    error.attempts = Some(attempts);
    error.detail = format!(
        "{attempts} tries (an implicit retry); last: {}",
        error.detail
    );
    error
}

fn failure_error(e: TryFailure, attempts: u32) -> ProxyError {
    let e = match e {
        TryFailure::Refused(p) => return p,
        TryFailure::Upstream(e) => e,
    };
    let mut error = if attempts == 1 {
        ProxyError::from(e)
    } else {
        ProxyError::new(
            Reason::RetriesExhausted,
            format!("{attempts} attempts; last: {:?}: {}", e.failure, e.detail),
        )
    };
    error.attempts = Some(attempts);
    error
}

fn choose_backend<'r, U>(t: &Target<'r, U>) -> Result<&'r BackendRef, ProxyError> {
    let rule = t.rule;
    let roll = if rule.total_weight > 1 {
        rand::random_range(0..rule.total_weight)
    } else {
        0
    };
    let i = rule.backend_index(roll).ok_or_else(|| {
        ProxyError::new(
            Reason::NoHealthyEndpoints,
            format!("route {} has no backend with weight > 0", rule.name),
        )
    })?;
    t.chosen.backend.store(i, Ordering::Relaxed);
    Ok(&rule.backends[i].backend)
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests;
