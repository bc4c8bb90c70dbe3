//! Opaque TCP upstream: a downstream connection that is not HTTP gets one connection to an
//! endpoint, chosen, limited, opened and reported exactly as an HTTP try is, so a dead endpoint
//! costs TCP callers no more than HTTP ones.
//!
//! Per connection: [`pick`](mod@super::pick) (passive health, the caller's zone, the balancer; a
//! hash on the caller's address keeps it on one endpoint), the service's `maxConnections` (held
//! for as long as the connection is open; waiting for one is bounded like a request's), the
//! service's connect timeout and peer mTLS ([`super::connect`]), and the result reported
//! ([`super::feedback`]): a failed connect costs the endpoint its failure penalty and counts
//! toward failure accrual or outlier detection; an established one teaches the balancer its
//! connect latency (the only answer an opaque endpoint gives) and clears its record.
//!
//! A connect that fails is tried once more on another endpoint (as Envoy's TCP proxy does with
//! `max_connect_attempts`): nothing has reached any endpoint yet — the caller's bytes wait in
//! this proxy — so a killed instance costs a TCP caller nothing while the balancer learns.
//! Once connected there is no retry: bytes may be on their way.
use super::connect::{self, Dial};
use super::feedback::{self, Ended};
use super::pick::{pick_in, Picked};
use super::{overflow, AttemptError, Context};
use crate::config::Snapshot;
use crate::error::{ProxyError, Reason};
use crate::resilience::Outcome;
use crate::retry::Failure;
use crate::tls::io::PeerIo;
use crate::tls::Alpn;
use std::net::SocketAddr;
use tokio::sync::OwnedSemaphorePermit;

/// An open upstream connection, and the connection limit it holds while open.
pub struct Opened {
    pub io: PeerIo,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A connection to an endpoint of `service` in `namespace`, for a caller at `peer`.
pub async fn to_service(
    ctx: &Context<'_>,
    snapshot: &Snapshot,
    namespace: &str,
    service: &str,
    peer: SocketAddr,
) -> Result<Opened, ProxyError> {
    let svc = snapshot.service(namespace, service).ok_or_else(|| {
        ProxyError::new(
            Reason::NoRoute,
            format!("upstream service {service} is not in the mesh config"),
        )
    })?;
    let first = pick_in(svc, &None, None, peer.ip(), None)?;
    let timeout = first.dial(ctx).timeout;
    let permit = svc
        .limit_state
        .admit_connection(&svc.limits, timeout)
        .await
        .map_err(|o| overflow(svc, o))?;
    let io = match try_connect(ctx, &first).await {
        Err(e) if e.failure == Failure::ConnectFailed => {
            // Another endpoint, if there is one the pick allows; else the first failure stands.
            match pick_in(svc, &None, None, peer.ip(), Some(first.endpoint().addr)) {
                Ok(next) if next.endpoint().addr != first.endpoint().addr => {
                    try_connect(ctx, &next).await?
                }
                _ => return Err(e.into()),
            }
        }
        other => other?,
    };
    Ok(Opened {
        io,
        _permit: Some(permit),
    })
}

/// One connect to the endpoint `picked`, reported to the balancer and passive health.
async fn try_connect(ctx: &Context<'_>, picked: &Picked) -> Result<PeerIo, AttemptError> {
    let mut in_flight = picked.start();
    let result = connect::connect(&picked.dial(ctx), Alpn::Opaque).await;
    let ended = match &result {
        Ok(_) => Ended::Answered(Outcome::Success),
        Err(e) => Ended::Failed(e.failure),
    };
    feedback::record(ctx.metrics, picked, &mut in_flight, ended);
    result
}

/// A plaintext connection to an address that is no service's endpoint (the local app on the
/// inbound side, a captured connection's destination outside the mesh): no pick, no limits.
pub async fn to_address(ctx: &Context<'_>, addr: SocketAddr) -> Result<Opened, ProxyError> {
    let io = connect::connect(&Dial::plain(addr, ctx.connect_timeout), Alpn::Opaque).await?;
    Ok(Opened { io, _permit: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::settings::LocalIdentity;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// Service `db` (port declared `tcp`) with a live endpoint and one nobody listens on, and
    /// `policy` (a DestinationPolicy spec, YAML flow style) when given.
    async fn live_and_dead(policy: Option<&str>) -> (Snapshot, SocketAddr, SocketAddr) {
        let live = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let live_addr = live.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = live.accept().await {
                open.push(s);
            }
        });
        let dead_addr = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("bind");
        let mut text = String::from(
            "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: db}\nspec:\n  ports: [{port: 5432, protocol: tcp}]\n",
        );
        // The dead endpoint first: its load state is made first, so while nothing is known of
        // either it looks (a hair) cheaper, and only what a refusal teaches moves callers off.
        for (name, addr) in [("dead", dead_addr), ("live", live_addr)] {
            text.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: {name}}}\nspec: {{service: db, address: {}, port: {}}}\n",
                addr.ip(),
                addr.port()
            ));
        }
        if let Some(spec) = policy {
            text.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: DestinationPolicy\nmetadata: {{name: db}}\nspec: {{service: db, {spec}}}\n"
            ));
        }
        (snapshot_of(&text), live_addr, dead_addr)
    }

    /// The snapshot a caller (`client`) builds from the manifest `text`.
    fn snapshot_of(text: &str) -> Snapshot {
        let resources = trellis_api::parse_documents("test", text).expect("parses");
        let local = LocalIdentity {
            service: "client".into(),
            namespace: "default".into(),
            zone: None,
        };
        Snapshot::build(1, "test".into(), resources, None, &local).expect("builds")
    }

    /// Opens `n` connections to `db`; how many were refused.
    async fn refused_of(n: usize, snap: &Snapshot, metrics: &Metrics) -> usize {
        let ctx = Context {
            metrics,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            workload: None,
        };
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("peer");
        let mut refused = 0;
        for _ in 0..n {
            match to_service(&ctx, snap, "default", "db", peer).await {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.reason, Reason::ConnectFailed, "{e}");
                    refused += 1;
                }
            }
        }
        refused
    }

    #[tokio::test]
    async fn a_refused_connect_is_tried_on_the_other_endpoint() {
        // The default balancer: the refusal is retried on the live endpoint (no caller sees
        // it), and the failure penalty steers every later connection away from the dead one.
        let (snap, _, _) = live_and_dead(None).await;
        let refused = refused_of(30, &snap, &Metrics::new()).await;
        assert_eq!(refused, 0, "{refused} of 30 refused");
    }

    #[tokio::test]
    async fn with_only_a_dead_endpoint_the_caller_gets_the_connect_failure() {
        let text = format!(
            "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: db}}\nspec:\n  ports: [{{port: 5432, protocol: tcp}}]\n---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: dead}}\nspec: {{service: db, address: 127.0.0.1, port: {}}}\n",
            dead_port().await
        );
        assert_eq!(refused_of(3, &snapshot_of(&text), &Metrics::new()).await, 3);
    }

    /// A loopback port nobody listens on.
    async fn dead_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port()
    }

    #[tokio::test]
    async fn failure_accrual_backs_off_a_dead_endpoint_for_opaque_tcp_too() {
        // Round robin alternates; every refusal is retried on the live endpoint, and failure
        // accrual takes the dead endpoint out after five refusals in a row (for at least 0.5 s:
        // far longer than these connects take).
        let (snap, _, dead) = live_and_dead(Some("loadBalancer: {algorithm: RoundRobin}")).await;
        let metrics = Metrics::new();
        assert_eq!(refused_of(30, &snap, &metrics).await, 0);
        let svc = snap.service("default", "db").expect("db");
        let ep = svc.groups[&None]
            .endpoints
            .iter()
            .find(|e| e.addr == dead)
            .expect("dead endpoint");
        assert!(!ep.outlier.accrual.is_available());
    }

    /// A connection to `db`, retried past refusals (a refused connect gives its limit permit
    /// back at once), or the first other refusal.
    async fn open_one(ctx: &Context<'_>, snap: &Snapshot) -> Result<Opened, ProxyError> {
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("peer");
        for _ in 0..5 {
            match to_service(ctx, snap, "default", "db", peer).await {
                Err(e) if e.reason == Reason::ConnectFailed => continue,
                other => return other,
            }
        }
        panic!("the live endpoint was never reached");
    }

    #[tokio::test]
    async fn connections_hold_the_services_connection_limit() {
        let (snap, _, _) = live_and_dead(Some(
            "connectionPool: {maxConnections: 1, maxPendingRequests: 1, connectTimeout: 100ms}",
        ))
        .await;
        let metrics = Metrics::new();
        let ctx = Context {
            metrics: &metrics,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            workload: None,
        };
        let first = open_one(&ctx, &snap)
            .await
            .expect("the one connection the limit allows");
        let e = open_one(&ctx, &snap)
            .await
            .err()
            .expect("a second is over the limit");
        assert_eq!(e.reason, Reason::PoolOverflow, "{e}");
        drop(first);
        assert!(
            open_one(&ctx, &snap).await.is_ok(),
            "closing gives the connection back"
        );
    }
}
