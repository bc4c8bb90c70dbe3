//! The inbound gate: nothing reaches the local app without a decision.
//!
//! Every inbound connection passes here before a byte is forwarded, whatever protocol it turned
//! out to speak: HTTP requests one by one ([`crate::http::inbound`]), opaque TCP connections
//! once, as a whole ([`admit_connection`]). Two rules hold on both paths:
//! - **Fail closed.** Until the proxy holds its first config (and, on a control plane, its
//!   workload certificate) it forwards nothing: HTTP gets `503 not-ready`, TCP is closed. With no
//!   config there is no policy to enforce, so there is nothing to forward on.
//! - **Decide, count, log.** Every decision is counted by policy; denials are logged with the
//!   policy that made them, at most about once a second (a hostile caller chooses how often it
//!   is denied, not how much the log grows).
//!
//! What this module must never do: let a path through that skips [`ready_snapshot`].
use crate::config::Snapshot;
use crate::conn::Conn;
use crate::error::{ProxyError, Reason};
use crate::metrics::AuthzLabels;
use crate::state::ProxyState;
use std::fmt;
use std::sync::Arc;
use trellis_identity::authz::Decision;

/// The config to decide with, or `503 not-ready` while there is none (fail closed).
pub fn ready_snapshot(state: &ProxyState) -> Result<Arc<Snapshot>, ProxyError> {
    let not_ready = |why: &str| {
        ProxyError::new(
            Reason::NotReady,
            format!("this sidecar is not ready ({why}): it forwards nothing until it is"),
        )
    };
    let snap = state
        .snapshot
        .load_full()
        .ok_or_else(|| not_ready("no config yet"))?;
    state.ready().map_err(not_ready)?;
    Ok(snap)
}

/// What was decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Request,
    Connection,
}

/// Counts a decision and, for a denial, logs it (rate-limited) and makes the proxy's answer.
/// `what` describes what was decided on (`GET /admin`, `a TCP connection from ...`).
pub fn enforce(
    state: &ProxyState,
    subject: Subject,
    decision: &Decision,
    source: Option<&str>,
    what: impl fmt::Display,
) -> Result<(), ProxyError> {
    state
        .metrics
        .authz
        .get_or_create(&AuthzLabels {
            decision: if decision.allowed {
                "allowed"
            } else {
                "denied"
            },
            policy: decision.policy.clone(),
        })
        .inc();
    let source = source.unwrap_or("a peer without mTLS identity");
    if decision.allowed {
        tracing::debug!(%source, %what, policy = %decision.decided_by(), "allowed");
        return Ok(());
    }
    if let Some(suppressed) = state.denial_log.allow() {
        tracing::info!(
            %source,
            %what,
            policy = %decision.decided_by(),
            reason = decision.reason.as_str(),
            suppressed,
            "{} denied",
            match subject {
                Subject::Request => "request",
                Subject::Connection => "connection",
            }
        );
    }
    Err(ProxyError::new(
        Reason::Denied,
        format!("{what} from {source}: {decision}"),
    ))
}

/// Decides on an opaque TCP connection before any of its bytes reach the app: only the peer's
/// identity and the port are known, so rules that need HTTP never allow it and deny rules that
/// need HTTP deny it (see [`trellis_identity::Authorizer::decide_connection`]).
pub fn admit_connection(state: &ProxyState, conn: &Conn) -> Result<(), ProxyError> {
    let snap = ready_snapshot(state)?;
    let policy = &snap.inbound;
    let decision = policy
        .authorizer
        .decide_connection(conn.peer_id.as_deref(), policy.port);
    enforce(
        state,
        Subject::Connection,
        &decision,
        conn.peer_id.as_deref(),
        format_args!("a TCP connection from {}", conn.peer),
    )
}
