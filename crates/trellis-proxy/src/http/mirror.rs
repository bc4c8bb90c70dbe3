//! Mirroring: a copy of a request (its buffered body replayed) sent to the rule's mirror
//! backend, fire and forget. The copy is picked and connected like any try, but nothing waits
//! for it and nothing it does reaches the caller: its answer is read and dropped, a failure is
//! ignored, and it gives up after `MIRROR_TIMEOUT` (10 s).
use super::forward::Target;
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
    let req = Request::from_parts(clone_parts(parts), replay.body());
    let upstream = t.upstream.clone();
    let wire = t.wire;
    tokio::spawn(async move {
        let send = upstream.send(&dial, wire, req);
        if let Ok(Ok(rsp)) = tokio::time::timeout(MIRROR_TIMEOUT, send).await {
            let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
        }
    });
}
