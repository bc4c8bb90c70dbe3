//! Accept loops: each listener accepts, detects the protocol (unless its port opts out), and hands
//! the connection to the HTTP server (hyper) or the TCP splicer. On drain, listeners stop
//! accepting and HTTP connections are asked to finish what is in flight and close.
use crate::config::Snapshot;
use crate::detect::{detect, Detected, PrefixedIo};
use crate::drain::Drain;
use crate::http::outbound::FixedTarget;
use crate::http::{inbound, outbound};
use crate::metrics::{ConnLabels, ResultLabels};
use crate::state::ProxyState;
use crate::tcp::splice;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use trellis_api::service::Protocol;

/// What a listener is for.
#[derive(Debug, Clone)]
pub enum Role {
    /// Outbound: `fixed` names the upstream for a per-upstream port; `None` routes by `Host`.
    Outbound { fixed: Option<Arc<FixedTarget>> },
    /// Inbound: everything goes to the local application.
    Inbound { app: SocketAddr },
}

impl Role {
    fn direction(&self) -> &'static str {
        match self {
            Role::Outbound { .. } => "outbound",
            Role::Inbound { .. } => "inbound",
        }
    }
}

/// Accepts until drain starts.
pub async fn run(listener: TcpListener, role: Role, state: Arc<ProxyState>, drain: Drain) {
    let role = Arc::new(role);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.started() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let guard = drain.track();
                let (role, state, drain) = (role.clone(), state.clone(), drain.clone());
                tokio::spawn(async move {
                    connection(stream, peer, &role, &state, &drain).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn service_label(role: &Role, state: &ProxyState) -> String {
    match role {
        Role::Outbound { fixed: Some(f) } => f.service.clone(),
        Role::Outbound { fixed: None } => String::new(),
        Role::Inbound { .. } => state.identity.service.clone(),
    }
}

/// The protocol configured for the port this listener serves, if config pins one.
fn configured_protocol(role: &Role, state: &ProxyState, snap: Option<&Snapshot>) -> Protocol {
    let snap = match snap {
        Some(s) => s,
        None => return Protocol::Detect,
    };
    let (ns, name, port) = match role {
        Role::Outbound { fixed: Some(f) } => (f.namespace.as_str(), f.service.as_str(), f.port),
        Role::Outbound { fixed: None } => return Protocol::Detect,
        Role::Inbound { .. } => (
            state.identity.namespace.as_str(),
            state.identity.service.as_str(),
            None,
        ),
    };
    snap.service(ns, name)
        .and_then(|s| s.port(port).map(|p| p.protocol))
        .unwrap_or_default()
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    role: &Role,
    state: &Arc<ProxyState>,
    drain: &Drain,
) {
    let labels = ConnLabels {
        direction: role.direction(),
        service: service_label(role, state),
    };
    state.metrics.conns_opened.get_or_create(&labels).inc();
    let snap = state.snapshot.load_full();
    let protocol = configured_protocol(role, state, snap.as_deref());
    let (detected, prefix) = if protocol == Protocol::Tcp {
        (Detected::Tcp, Vec::new())
    } else {
        match detect(&mut stream, state.settings.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed during protocol detection");
                state.metrics.conns_closed.get_or_create(&labels).inc();
                return;
            }
        }
    };
    let result = if protocol == Protocol::Tcp {
        "skipped"
    } else {
        detected.as_str()
    };
    state
        .metrics
        .detections
        .get_or_create(&ResultLabels { result })
        .inc();
    let io = PrefixedIo::new(prefix, stream);
    match (detected, protocol) {
        (Detected::Http1 | Detected::Http2, _) => {
            serve_http(io, detected, peer, role, state, drain).await
        }
        // A port declared HTTP gets an HTTP server even for garbage: it answers 400.
        (Detected::Tcp, Protocol::Http | Protocol::Http2 | Protocol::Grpc) => {
            serve_http(io, Detected::Http1, peer, role, state, drain).await
        }
        (Detected::Closed, _) => {}
        _ => serve_tcp(io, peer, role, state, &labels.service).await,
    }
    state.metrics.conns_closed.get_or_create(&labels).inc();
}

async fn serve_tcp<I>(io: I, peer: SocketAddr, role: &Role, state: &Arc<ProxyState>, service: &str)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let target = match role {
        Role::Inbound { app } => Some(*app),
        Role::Outbound { fixed: Some(f) } => tcp_endpoint(state, f),
        Role::Outbound { fixed: None } => {
            tracing::debug!(%peer, "opaque TCP on the Host-routed port has no destination; closing");
            None
        }
    };
    let Some(addr) = target else {
        return;
    };
    let timeout = match role {
        Role::Outbound { fixed: Some(f) } => state.snapshot.load_full().and_then(|s| {
            s.service(&f.namespace, &f.service)
                .and_then(|t| t.connect_timeout)
        }),
        _ => None,
    }
    .unwrap_or_else(|| state.upstreams.default_connect_timeout());
    match state.upstreams.connect(addr, timeout).await {
        Ok(upstream) => splice(&state.metrics, role.direction(), service, io, upstream).await,
        Err(e) => tracing::warn!(%peer, error = %e.detail, "tcp upstream connect failed"),
    }
}

fn tcp_endpoint(state: &ProxyState, f: &FixedTarget) -> Option<SocketAddr> {
    let snap = state.snapshot.load_full()?;
    let svc = snap.service(&f.namespace, &f.service)?;
    let group = svc.groups.get(&None)?;
    let i = group.balancer.pick(&group.endpoints, None, |_| true)?;
    Some(group.endpoints[i].addr)
}

async fn serve_http<I>(
    io: I,
    detected: Detected,
    peer: SocketAddr,
    role: &Role,
    state: &Arc<ProxyState>,
    drain: &Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (state2, role2) = (state.clone(), role.clone());
    let svc = service_fn(move |req| {
        let state = state2.clone();
        let role = role2.clone();
        async move {
            match role {
                Role::Inbound { app } => inbound::handle(state, app, req).await,
                Role::Outbound { fixed } => outbound::handle(state, fixed, peer, req).await,
            }
        }
    });
    let io = TokioIo::new(io);
    let max_head = state.settings.max_header_bytes;
    if detected == Detected::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(max_head as u32)
            .max_concurrent_streams(1024)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => log_conn_end(r, peer),
            _ = drain.started() => {
                conn.as_mut().graceful_shutdown();
                log_conn_end(conn.await, peer);
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_buf_size(max_head.max(8192))
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => log_conn_end(r, peer),
            _ = drain.started() => {
                conn.as_mut().graceful_shutdown();
                log_conn_end(conn.await, peer);
            }
        }
    }
}

fn log_conn_end(r: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}
