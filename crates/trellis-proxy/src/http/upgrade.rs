//! HTTP/1.1 upgrades (WebSocket and friends): the request goes out on a fresh connection and, if
//! the upstream switches to a protocol the (vetted) request offered, the two upgraded
//! connections are spliced. The endpoint, connect timeout and mTLS come from the caller's
//! [`Dial`], made by the same pick as any request (or for the local app).
use super::headers::{upgrade_answer_matches, upgrade_tokens};
use crate::body::{self, Body};
use crate::error::{ProxyError, Reason};
use crate::upstream::{Dial, Upstreams};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Forwards an HTTP/1.1 upgrade and, on `101 Switching Protocols`, splices the two connections.
///
/// The work is boxed: its future (~2.5 KB, a connect and a handshake) would otherwise be part of
/// every request handler's future, which each level of `.await` copies whole per request.
pub async fn forward_upgrade(
    upstreams: &Upstreams,
    dial: Dial,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    Box::pin(upgrade(upstreams, dial, req)).await
}

async fn upgrade(
    upstreams: &Upstreams,
    dial: Dial,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let addr = dial.addr;
    let downstream = hyper::upgrade::on(&mut req);
    let offered = upgrade_tokens(req.headers());
    let req = req.map(body::boxed);
    let mut rsp = upstreams.send_upgrade(&dial, req).await?;
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
