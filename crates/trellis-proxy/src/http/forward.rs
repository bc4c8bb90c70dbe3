//! Sending a routed request to a backend: pick an endpoint, try, classify, maybe retry (bounded by
//! attempts, the retry budget and the replay buffer), all within the rule's timeout. The last
//! attempt gets whatever time remains. Also mirroring and HTTP/1.1 upgrades.
use super::headers::{strip_hop_by_hop, upgrade_answer_matches, upgrade_tokens};
use super::replay::{prepare, Prepared, Replayable};
use super::upstream::{AttemptError, PeerTls, Wire};
use crate::balance::{hash_key, Endpoint};
use crate::body::{self, Body};
use crate::config::{BackendRef, Rule, ServiceTarget, Snapshot};
use crate::error::{ProxyError, Reason};
use crate::metrics::{RetryLabels, ServiceLabels};
use crate::resilience::{self, Outcome, Verdict};
use crate::retry::{Backoff, Failure, RetryPolicy};
use crate::state::ProxyState;
use http::{request::Parts, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        let picked = pick(t, backend, req.headers(), None)?;
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
            let picked = pick(t, backend, &parts.headers, None)?;
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
        let picked = pick(t, backend, &parts.headers, avoid)?;
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
        avoid = Some(picked.ep.addr);
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

/// An endpoint chosen for a try, and the service whose limits and outlier policy govern it.
pub(crate) struct Picked {
    pub(crate) ep: Endpoint,
    svc: Arc<ServiceTarget>,
}

impl Picked {
    /// How to secure the connection to this endpoint.
    pub(crate) fn tls(&self, state: &ProxyState) -> Option<PeerTls> {
        peer_tls(state, &self.svc, &self.ep)
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
    let Picked { ep, svc } = picked;
    let hold_connection = t.wire == Wire::Http1;
    let _permit = svc
        .limit_state
        .admit(
            &svc.limits,
            retry,
            hold_connection,
            svc.connect_timeout
                .unwrap_or_else(|| t.state.upstreams.default_connect_timeout()),
        )
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
    let mut in_flight = ep.load.start();
    let started = Instant::now();
    let tls = peer_tls(t.state, svc, ep);
    let send = t
        .state
        .upstreams
        .send(ep.addr, t.wire, req, svc.connect_timeout, tls.as_ref());
    let result = match limit {
        None => send.await,
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(result) => result,
            Err(_) => {
                in_flight.observe_latency(started.elapsed());
                Err(AttemptError {
                    failure: Failure::PerTryTimeout,
                    detail: format!(
                        "{}: no response within the per-try timeout of {limit:?}",
                        ep.addr
                    ),
                })
            }
        },
    };
    if let Err(e) = &result {
        if matches!(e.failure, Failure::ConnectFailed | Failure::Reset) {
            // No answer is the most expensive answer: peak-EWMA must not see it as fast.
            in_flight.observe_failure();
        }
    }
    report_outcome(t, picked, &result);
    let mut rsp = result?;
    in_flight.observe_latency(started.elapsed());
    strip_hop_by_hop(rsp.headers_mut(), false);
    Ok(rsp)
}

/// Mesh mTLS for a call to `ep`: when the service's mode asks for it, the endpoint has an
/// identity to check (it runs a sidecar), and this proxy holds a certificate. Otherwise the call
/// is plaintext (an endpoint outside the mesh, or TLS turned off).
pub(crate) fn peer_tls(state: &ProxyState, svc: &ServiceTarget, ep: &Endpoint) -> Option<PeerTls> {
    if !svc.mtls {
        return None;
    }
    Some(PeerTls {
        identity: ep.identity.clone()?,
        tls: state.tls()?.clone(),
    })
}

/// Feeds a try's outcome to passive health: the service's outlier detection, or default
/// failure accrual when it has none.
fn report_outcome<B>(t: &Target<'_>, picked: &Picked, result: &Result<Response<B>, AttemptError>) {
    let outcome = match result {
        Ok(rsp) => Outcome::of_response(rsp.status(), rsp.headers()),
        Err(e) if e.failure == Failure::ConnectFailed => Outcome::ConnectFailed,
        Err(_) => Outcome::GatewayError,
    };
    let all = picked
        .svc
        .groups
        .get(&None)
        .map(|g| g.endpoints.as_slice())
        .unwrap_or_default();
    let (svc, ep) = (&picked.svc, &picked.ep);
    let family = match resilience::report(svc.outlier.as_ref(), ep, all, outcome) {
        Verdict::Noted => return,
        Verdict::Ejected => {
            tracing::warn!(
                service = %svc.name,
                endpoint = %ep.addr,
                ejections = ep.outlier.ejections(),
                "endpoint ejected by outlier detection"
            );
            &t.state.metrics.ejections
        }
        Verdict::BackedOff(backoff) => {
            tracing::warn!(
                service = %svc.name,
                endpoint = %ep.addr,
                ?backoff,
                in_a_row = ep.outlier.accrual.level(),
                "endpoint backed off after consecutive failures"
            );
            &t.state.metrics.accrual_backoffs
        }
    };
    family
        .get_or_create(&ServiceLabels {
            service: svc.name.clone(),
        })
        .inc();
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
    let reason = match e.failure {
        _ if attempts > 1 => Reason::RetriesExhausted,
        Failure::ConnectFailed => Reason::ConnectFailed,
        Failure::Reset => Reason::UpstreamReset,
        Failure::PerTryTimeout => Reason::Timeout,
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

/// Picks an endpoint of `backend`: not ejected (unless below the panic threshold), in the
/// preferred zone when the caller has one, and other than `avoid` (the one that just failed)
/// when another is available. Each preference is dropped in turn rather than failing.
pub(crate) fn pick(
    t: &Target<'_>,
    backend: &BackendRef,
    headers: &http::HeaderMap,
    avoid: Option<SocketAddr>,
) -> Result<Picked, ProxyError> {
    let unavailable = |detail: String| ProxyError::new(Reason::NoHealthyEndpoints, detail);
    let svc = t
        .snapshot
        .service(&backend.namespace, &backend.service)
        .ok_or_else(|| {
            unavailable(format!(
                "backend service {} is not in the mesh",
                backend.service
            ))
        })?;
    let group = svc.groups.get(&backend.subset).ok_or_else(|| {
        unavailable(format!(
            "subset {:?} of {} is not declared in its DestinationPolicy",
            backend.subset.as_deref().unwrap_or(""),
            backend.service
        ))
    })?;
    let key = group
        .hash_on
        .as_ref()
        .and_then(|h| hash_key(h, headers, Some(t.peer.ip())));
    let eps = &group.endpoints;
    let ejected = ejected_filter(svc, eps);
    let healthy = |i: usize| ejected.as_ref().is_none_or(|up| up[i]);
    let zone = svc.locality.as_ref().and_then(|l| l.choose(eps, healthy));
    let in_zone = |i: usize| zone.is_none_or(|z| eps[i].zone.as_deref() == Some(z));
    let b = &group.balancer;
    let idx = b
        .pick(eps, key, |i| {
            healthy(i) && in_zone(i) && Some(eps[i].addr) != avoid
        })
        .or_else(|| b.pick(eps, key, |i| healthy(i) && in_zone(i)))
        .or_else(|| b.pick(eps, key, healthy))
        .or_else(|| b.pick(eps, key, |_| true))
        .ok_or_else(|| {
            unavailable(format!(
                "{}{} has no healthy endpoint",
                backend.service,
                backend
                    .subset
                    .as_ref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default()
            ))
        })?;
    Ok(Picked {
        ep: eps[idx].clone(),
        svc: svc.clone(),
    })
}

/// Which endpoints passive health lets through, when it excludes any (see
/// [`resilience::passive_filter`]).
fn ejected_filter(svc: &ServiceTarget, eps: &[Endpoint]) -> Option<Vec<bool>> {
    resilience::passive_filter(svc.outlier.as_ref(), eps)
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
    let Ok(Picked { ep, svc }) = pick(t, &m.backend, &parts.headers, None) else {
        return;
    };
    let tls = peer_tls(t.state, &svc, &ep);
    let req = Request::from_parts(clone_parts(parts), replay.body());
    let upstreams = t.state.upstreams.clone();
    let wire = t.wire;
    tokio::spawn(async move {
        let send = upstreams.send(ep.addr, wire, req, None, tls.as_ref());
        if let Ok(Ok(rsp)) = tokio::time::timeout(MIRROR_TIMEOUT, send).await {
            let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
        }
    });
}

/// Forwards an HTTP/1.1 upgrade and, on `101 Switching Protocols`, splices the two connections.
pub async fn forward_upgrade(
    state: &ProxyState,
    addr: SocketAddr,
    tls: Option<PeerTls>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    let offered = upgrade_tokens(req.headers());
    let req = req.map(body::boxed);
    let mut rsp = state
        .upstreams
        .send_upgrade(addr, req, tls.as_ref())
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
