//! The captured-outbound listener: every connection the capture rules redirected here is
//! routed by where the app meant it to go (`SO_ORIGINAL_DST`):
//! - a service VIP and one of its declared ports: as that service and port, exactly as the
//!   per-upstream port (`--upstream`) would (detection, routing, retries, mTLS, metrics);
//! - a known endpoint address (a workload's address): as that endpoint's service, on the port
//!   the app used when the service declares it, else its default port;
//! - a VIP on a port its service does not declare: closed (nothing could answer it);
//! - anything else: passed through to the original destination on a marked socket, unless the
//!   MeshConfig's `outboundTrafficPolicy` is `RegistryOnly`: then it is refused (HTTP answered
//!   `502 egress-denied`, anything else closed; see [`crate::http::egress`]), unless it goes
//!   to a Static address and declared port of an ExternalService: that is passed through
//!   unchanged (no TLS origination, no per-request metrics; those are the explicit port's).
//!
//! A connection that was not redirected (someone connected to this port directly) has no
//! original destination other than this listener itself, and is closed. So is every captured
//! connection before the first config: the proxy cannot tell a mesh destination from any other
//! yet, nor whether the mesh lets traffic out, so nothing leaves around the mesh while it does
//! not know (as the inbound side forwards nothing before its first config).
use crate::config::Directory;
use crate::config::Snapshot;
use crate::drain::Drain;
use crate::http::outbound::FixedTarget;
use crate::listener::Role;
use crate::state::ProxyState;
use crate::upstream::opaque;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use trellis_api::mesh::OutboundMode;

/// Where a captured connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Into the mesh, as this service (and port).
    Service {
        namespace: String,
        service: String,
        port: Option<u16>,
    },
    /// Out of the mesh, unchanged.
    Passthrough(SocketAddr),
    /// A VIP on an undeclared port: nothing to connect to.
    Unroutable(&'static str),
}

/// Decides where a connection the app opened to `dst` goes.
pub fn classify(dst: SocketAddrV4, dir: &Directory, snap: Option<&Snapshot>) -> Destination {
    let declared = |ns: &str, svc: &str| {
        snap.and_then(|s| s.service(ns, svc))
            .is_some_and(|t| t.port(Some(dst.port())).is_some())
    };
    if let Some((ns, svc)) = dir.service_of_vip(*dst.ip()) {
        if !declared(ns, svc) {
            return Destination::Unroutable("the service does not declare this port");
        }
        return Destination::Service {
            namespace: ns.clone(),
            service: svc.clone(),
            port: Some(dst.port()),
        };
    }
    if let Some((ns, svc)) = dir.service_of_endpoint(SocketAddr::V4(dst)) {
        return Destination::Service {
            namespace: ns.clone(),
            service: svc.clone(),
            port: declared(ns, svc).then_some(dst.port()),
        };
    }
    Destination::Passthrough(SocketAddr::V4(dst))
}

/// Accepts captured connections until drain starts.
pub async fn run(listener: TcpListener, state: Arc<ProxyState>, drain: Drain) {
    let own = listener.local_addr().ok();
    let mut acceptor = trellis_net::Acceptor::new(listener, "captured");
    loop {
        let (stream, peer) = tokio::select! {
            a = acceptor.accept() => a,
            _ = drain.started() => return,
        };
        let _ = stream.set_nodelay(true);
        let guard = drain.track();
        let (state, drain) = (state.clone(), drain.clone());
        tokio::spawn(async move {
            connection(stream, peer, own, &state, &drain).await;
            drop(guard);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    own: Option<SocketAddr>,
    state: &Arc<ProxyState>,
    drain: &Drain,
) {
    let dst = match crate::sockopt::original_dst(&stream) {
        Ok(d) if Some(SocketAddr::V4(d)) != own => d,
        Ok(_) => {
            tracing::debug!(%peer, "connection to the capture port that was not redirected; closing");
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "no original destination; closing");
            return;
        }
    };
    let Some(snap) = state.snapshot.load_full() else {
        tracing::debug!(%peer, %dst, "captured connection before the first config; closing");
        return;
    };
    let dir = Directory::of(Some(&snap));
    let destination = match classify(dst, &dir, Some(&snap)) {
        Destination::Passthrough(to)
            if snap.mesh.outbound_traffic_policy.mode == OutboundMode::RegistryOnly
                && !snap.external.knows(to) =>
        {
            let role = Role::EgressDenied { to };
            crate::listener::serve_connection(stream, peer, &role, state, drain).await;
            return;
        }
        other => other,
    };
    match destination {
        Destination::Service {
            namespace,
            service,
            port,
        } => {
            tracing::debug!(%peer, %dst, %namespace, %service, ?port, "captured connection into the mesh");
            let role = Role::Outbound {
                fixed: Some(Arc::new(FixedTarget {
                    namespace,
                    service,
                    port,
                })),
            };
            crate::listener::serve_connection(stream, peer, &role, state, drain).await;
        }
        Destination::Passthrough(to) => {
            let ctx = state.upstream_context();
            match opaque::to_address(&ctx, to).await {
                Ok(mut upstream) => {
                    let edge = crate::metrics::TcpLabels {
                        direction: "outbound",
                        source: state.local_source(),
                        service: "passthrough".into(),
                    };
                    let (metrics, io) = (&state.metrics, &mut upstream.io);
                    crate::tcp::splice(metrics, edge, stream, io).await;
                }
                Err(e) => tracing::debug!(%peer, %to, error = %e, "passthrough connect failed"),
            }
        }
        Destination::Unroutable(why) => {
            tracing::debug!(%peer, %dst, why, "captured connection to a VIP closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::LocalIdentity;

    const MESH: &str = "
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: ratings}
spec: {ports: [{port: 9080}, {port: 9443}]}
---
apiVersion: trellis.dev/v1
kind: ServiceAddress
metadata: {name: ratings}
spec: {address: 240.240.0.1}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: r0}
spec: {service: ratings, address: 10.1.0.5, port: 15006, appPort: 9080}
";

    #[test]
    fn vip_endpoint_or_passthrough() {
        let set = trellis_api::parse_documents("t.yaml", MESH).unwrap();
        let local = LocalIdentity {
            service: "app".into(),
            namespace: "default".into(),
            zone: None,
        };
        let snap = Snapshot::build(1, "t".into(), set, None, &local).unwrap();
        let dir = (*snap.directory).clone();
        let c = |s: &str| classify(s.parse().unwrap(), &dir, Some(&snap));
        let svc = |port| Destination::Service {
            namespace: "default".into(),
            service: "ratings".into(),
            port,
        };
        assert_eq!(c("240.240.0.1:9080"), svc(Some(9080)));
        assert_eq!(c("240.240.0.1:9443"), svc(Some(9443)));
        assert!(matches!(c("240.240.0.1:22"), Destination::Unroutable(_)));
        assert_eq!(c("10.1.0.5:9080"), svc(Some(9080)));
        assert_eq!(c("10.1.0.5:15006"), svc(None));
        assert_eq!(
            c("192.0.2.1:443"),
            Destination::Passthrough("192.0.2.1:443".parse().unwrap())
        );
        // Before the first config, everything passes through.
        let empty = Directory::default();
        assert_eq!(
            classify("240.240.0.1:9080".parse().unwrap(), &empty, None),
            Destination::Passthrough("240.240.0.1:9080".parse().unwrap())
        );
    }
}
