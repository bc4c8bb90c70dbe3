//! Sending a routed request to a backend: pick an endpoint, try, classify, maybe retry (bounded by
//! attempts, the retry budget and the replay buffer), all within the rule's timeout. The last
//! attempt gets whatever time remains. Also mirroring and HTTP/1.1 upgrades.
use super::headers::{strip_hop_by_hop, upgrade_answer_matches, upgrade_tokens};
use super::replay::{prepare, Prepared, Replayable};
use crate::body::{self, Body};
use crate::config::{BackendRef, Rule, Snapshot};
use crate::error::{ProxyError, Reason};
use crate::metrics::RetryLabels;
use crate::resilience::Outcome;
use crate::retry::{Backoff, Failure, RetryPolicy};
use crate::state::ProxyState;
use crate::upstream::{feedback, pick, AttemptError, Dial, Ended, Picked, Wire};
use http::{request::Parts, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Request bodies are buffered up to this for mirroring when no retry policy says otherwise.
const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything an attempt needs besides the body.
pub struct Target<'a> {
    pub state: &'a Arc<ProxyState>,
    pub snapshot: &'a Arc<Snapshot>,
    pub rule: &'a Rule,
    pub service: &'a str,
    pub wire: Wire,
    pub peer: SocketAddr,
}

pub async fn forward(t: &Target<'_>, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
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

async fn forward_inner(
    t: &Target<'_>,
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
        let backend = choose_backend(t.rule)?;
        let picked = pick(t.snapshot, backend, Some(req.headers()), t.peer.ip(), None)?;
        return attempt(t, &picked, req, None, false)
            .await
            .map_err(|e| failure_error(e, 1));
    }
    let limit = policy
        .as_ref()
        .map_or(DEFAULT_REPLAY_LIMIT, |p| p.max_buffer_bytes);
    // A client that asks `Expect: 100-continue` sends its body only once the app asked for it:
    // reading it here to make it replayable would answer for the app. Such a request is sent
    // once, streaming (no retry, no mirror).
    let continues = body::expects_continue(&req);
    let (parts, body) = req.into_parts();
    let length = content_length(&parts.headers);
    let prepared = if continues {
        Prepared::Streaming(body)
    } else {
        prepare(body, limit, length).await.map_err(|e| {
            ProxyError::new(Reason::BadRequest, format!("reading the request body: {e}"))
        })?
    };
    match prepared {
        Prepared::Streaming(body) => {
            let backend = choose_backend(t.rule)?;
            let picked = pick(t.snapshot, backend, Some(&parts.headers), t.peer.ip(), None)?;
            let req = Request::from_parts(parts, body);
            let limit = policy.as_ref().and_then(|p| p.per_try_timeout);
            attempt(t, &picked, req, limit, false)
                .await
                .map_err(|e| failure_error(e, 1))
        }
        Prepared::Replayable(replay) => {
            mirror(t, &parts, &replay);
            retry_loop(t, policy, attempts, &parts, &replay, deadline).await
        }
    }
}

async fn retry_loop(
    t: &Target<'_>,
    policy: Option<Arc<RetryPolicy>>,
    attempts: u32,
    parts: &Parts,
    replay: &Replayable,
    deadline: Option<tokio::time::Instant>,
) -> Result<Response<Body>, ProxyError> {
    let backoff = policy
        .as_ref()
        .map(|p| p.backoff.clone())
        .unwrap_or_default();
    let mut avoid = None;
    for n in 1..=attempts {
        let backend = choose_backend(t.rule)?;
        let picked = pick(
            t.snapshot,
            backend,
            Some(&parts.headers),
            t.peer.ip(),
            avoid,
        )?;
        let req = Request::from_parts(clone_parts(parts), replay.body());
        let last = n == attempts;
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
            return result.map_err(|e| retry_failure_error(e, n, implicit));
        }
        if !t.rule.budget.try_withdraw() {
            count_retry(t, "budget-exhausted");
            return result.map_err(|e| retry_failure_error(e, n, implicit));
        }
        count_retry(t, "attempted");
        avoid = Some(picked.endpoint().addr);
        tokio::time::sleep(backoff_delay(&backoff, n)).await;
    }
    Err(ProxyError::new(Reason::RetriesExhausted, "no attempt made"))
}

fn backoff_delay(b: &Backoff, retry_number: u32) -> Duration {
    b.delay(retry_number)
}

fn count_retry(t: &Target<'_>, outcome: &'static str) {
    t.state
        .metrics
        .retries
        .get_or_create(&RetryLabels {
            service: t.service.to_string(),
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
async fn attempt(
    t: &Target<'_>,
    picked: &Picked,
    req: Request<Body>,
    limit: Option<Duration>,
    retry: bool,
) -> Result<Response<Body>, TryFailure> {
    let ctx = t.state.upstream_context();
    let svc = picked.service();
    let dial = picked.dial(&ctx);
    let hold_connection = t.wire == Wire::Http1;
    let _permit = svc
        .limit_state
        .admit(&svc.limits, retry, hold_connection, dial.timeout)
        .await
        .map_err(|o| {
            TryFailure::Refused(ProxyError::new(
                Reason::PoolOverflow,
                format!(
                    "{} is at its limit of {}",
                    svc.name,
                    o.describe(&svc.limits)
                ),
            ))
        })?;
    let mut in_flight = picked.start();
    let send = t.state.upstreams.send(&dial, t.wire, req);
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
    feedback::record(ctx.metrics, picked, &mut in_flight, ended);
    let mut rsp = result?;
    strip_hop_by_hop(rsp.headers_mut(), false);
    Ok(rsp)
}

/// Like [`failure_error`], except that when the retries were implicit (the route has none) the
/// answer names what failed rather than `retries-exhausted`: the caller asked for no retries.
fn retry_failure_error(e: TryFailure, attempts: u32, implicit: bool) -> ProxyError {
    if !implicit || attempts == 1 {
        return failure_error(e, attempts);
    }
    let mut error = failure_error(e, 1);
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
    let reason = match attempts {
        1 => e.reason(),
        _ => Reason::RetriesExhausted,
    };
    let detail = if attempts > 1 {
        format!("{attempts} attempts; last: {:?}: {}", e.failure, e.detail)
    } else {
        e.detail
    };
    ProxyError::new(reason, detail)
}

fn choose_backend(rule: &Rule) -> Result<&BackendRef, ProxyError> {
    let roll = if rule.total_weight > 1 {
        rand::random_range(0..rule.total_weight)
    } else {
        0
    };
    rule.backend(roll).ok_or_else(|| {
        ProxyError::new(
            Reason::NoHealthyEndpoints,
            format!("route {} has no backend with weight > 0", rule.name),
        )
    })
}

fn clone_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Sends a copy to the mirror backend, fire and forget: its answer and failures are dropped.
fn mirror(t: &Target<'_>, parts: &Parts, replay: &Replayable) {
    let Some(m) = &t.rule.mirror else {
        return;
    };
    if rand::random_range(0.0..100.0) >= m.percent {
        return;
    }
    let Ok(picked) = pick(
        t.snapshot,
        &m.backend,
        Some(&parts.headers),
        t.peer.ip(),
        None,
    ) else {
        return;
    };
    let dial = picked.dial(&t.state.upstream_context());
    let req = Request::from_parts(clone_parts(parts), replay.body());
    let upstreams = t.state.upstreams.clone();
    let wire = t.wire;
    tokio::spawn(async move {
        let send = upstreams.send(&dial, wire, req);
        if let Ok(Ok(rsp)) = tokio::time::timeout(MIRROR_TIMEOUT, send).await {
            let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
        }
    });
}

/// Forwards an HTTP/1.1 upgrade and, on `101 Switching Protocols`, splices the two connections.
pub async fn forward_upgrade(
    state: &ProxyState,
    dial: Dial,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let addr = dial.addr;
    let downstream = hyper::upgrade::on(&mut req);
    let offered = upgrade_tokens(req.headers());
    let req = req.map(body::boxed);
    let mut rsp = state
        .upstreams
        .send_upgrade(&dial, req)
        .await
        .map_err(|e| failure_error(TryFailure::Upstream(e), 1))?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only a switch to a protocol the (vetted) request offered becomes a pipe.
        if !upgrade_answer_matches(&offered, rsp.headers()) {
            return Err(ProxyError::new(
                Reason::UpstreamReset,
                format!(
                    "{addr} switched to a protocol the request did not offer ({offered:?}); connection not upgraded"
                ),
            ));
        }
        let upstream = hyper::upgrade::on(&mut rsp);
        tokio::spawn(async move {
            match (downstream.await, upstream.await) {
                (Ok(d), Ok(u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
                (d, u) => tracing::debug!(
                    downstream_ok = d.is_ok(),
                    upstream_ok = u.is_ok(),
                    "upgrade failed"
                ),
            }
        });
    }
    Ok(rsp.map(body::boxed))
}
