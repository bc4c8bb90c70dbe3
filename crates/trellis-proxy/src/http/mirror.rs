//! Mirroring: a copy of a request (its buffered body replayed) sent to the rule's mirror
//! backend, fire and forget. The copy is picked and connected like any try, but nothing waits
//! for it and nothing it does reaches the caller: its answer is read and dropped, a failure is
//! ignored, and it gives up after `MIRROR_TIMEOUT` (10 s).
use super::forward::{name_workload, Target};
use super::replay::{clone_parts, Replayable};
use crate::upstream::{pick, Upstream};
use http::request::Parts;
use http::Request;
use std::time::Duration;

/// How long a mirrored copy may take, answer included.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a copy to the mirror backend, fire and forget: its answer and failures are dropped.
pub(super) fn mirror<U: Upstream>(t: &Target<'_, U>, parts: &Parts, replay: &Replayable) {
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
    let dial = picked.dial(&t.ctx);
    let mut copy = clone_parts(parts);
    name_workload(&mut copy.headers, &dial, t.ctx.workload);
    // A traced request's copy gets a CLIENT span of its own, marked as the mirror, so a trace
    // shows where its copies went (its parent is the caller's span, as for each try).
    let span = t.trace.map(|traced| {
        let method = copy.method.clone();
        let mut span = traced.start(
            crate::trace::Kind::Client,
            method.as_str(),
            &mut copy.headers,
        );
        span.text("http.request.method", method.as_str());
        span.text("url.path", copy.uri.path());
        span.text("server.address", &m.backend.service);
        span.text("network.peer.address", &dial.addr.to_string());
        span.number("trellis.mirror", 1);
        span
    });
    let req = Request::from_parts(copy, replay.body());
    let upstream = t.upstream.clone();
    let wire = t.wire;
    tokio::spawn(async move {
        let send = upstream.send(&dial, wire, req);
        let answer = tokio::time::timeout(MIRROR_TIMEOUT, send).await;
        let status = match &answer {
            Ok(Ok(rsp)) => Some(rsp.status().as_u16()),
            _ => None,
        };
        if let Some(span) = span {
            let reason = match &answer {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.reason().as_str()),
                Err(_) => Some("mirror-timeout"),
            };
            span.end(status, reason);
        }
        if let Ok(Ok(rsp)) = answer {
            let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
        }
    });
}
