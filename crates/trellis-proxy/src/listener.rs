//! Accept loops: each listener accepts, detects the protocol (unless its port opts out), and hands
//! the connection to the HTTP server (hyper) or the TCP splicer. On drain, listeners stop
//! accepting and HTTP connections are asked to finish what is in flight and close.
use crate::config::Snapshot;
use crate::detect::{detect, Detected, PrefixedIo};
use crate::drain::Drain;
use crate::gate;
use crate::http::forward::peer_tls;
use crate::http::outbound::FixedTarget;
use crate::http::upstream::{connect_peer, PeerTls};
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
use trellis_api::mesh::MtlsMode;
use trellis_api::service::Protocol;
use trellis_identity::tls::{inbound_action, peer_identity, InboundAction};

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
    // Out of file descriptors and the like: back off (exponentially, up to 1 s) and log at most
    // about once a second, instead of spinning or writing a line per attempt.
    let mut acceptor = trellis_net::Acceptor::new(listener, role.direction());
    loop {
        let (stream, peer) = tokio::select! {
            a = acceptor.accept() => a,
            _ = drain.started() => return,
        };
        let _ = stream.set_nodelay(true);
        let guard = drain.track();
        let (role, state, drain) = (role.clone(), state.clone(), drain.clone());
        tokio::spawn(async move {
            connection(stream, peer, &role, &state, &drain).await;
            drop(guard);
        });
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
fn configured_protocol(role: &Role, snap: Option<&Snapshot>) -> Protocol {
    let snap = match snap {
        Some(s) => s,
        None => return Protocol::Detect,
    };
    match role {
        Role::Outbound { fixed: Some(f) } => snap
            .service(&f.namespace, &f.service)
            .and_then(|s| s.port(f.port).map(|p| p.protocol))
            .unwrap_or_default(),
        Role::Outbound { fixed: None } => Protocol::Detect,
        Role::Inbound { .. } => snap.inbound.protocol,
    }
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
    let protocol = configured_protocol(role, snap.as_deref());
    // The inbound side looks at the first bytes even on a TCP port: they say whether a peer
    // proxy is starting mTLS.
    let mode = match role {
        Role::Inbound { .. } => snap
            .as_ref()
            .map_or(MtlsMode::Permissive, |s| s.inbound.mtls),
        Role::Outbound { .. } => MtlsMode::Off,
    };
    let sniff = protocol != Protocol::Tcp || mode != MtlsMode::Off;
    let first = match first_bytes(&mut stream, sniff, state).await {
        Ok(first) => first,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "read failed during protocol detection");
            state.metrics.conns_closed.get_or_create(&labels).inc();
            return;
        }
    };
    match inbound_action(mode, &first.1) {
        InboundAction::Plaintext => {
            let conn = Conn {
                peer,
                peer_id: None,
            };
            dispatch(
                stream,
                first,
                protocol,
                &conn,
                role,
                state,
                drain,
                &labels.service,
            )
            .await;
        }
        InboundAction::Refuse => {
            tls_result(state, "plaintext-refused");
            tracing::debug!(%peer, "plaintext connection refused: the port requires mTLS");
        }
        InboundAction::Tls => {
            let io = PrefixedIo::new(first.1, stream);
            serve_tls(io, protocol, peer, role, state, drain, &labels.service).await;
        }
    }
    state.metrics.conns_closed.get_or_create(&labels).inc();
}

/// What the peer sends first: detected by protocol (a bounded read), or nothing read at all when
/// the port is opaque TCP and no TLS can arrive.
async fn first_bytes<I: AsyncRead + Unpin>(
    stream: &mut I,
    sniff: bool,
    state: &ProxyState,
) -> std::io::Result<(Detected, Vec<u8>)> {
    if sniff {
        detect(stream, state.settings.detect_timeout).await
    } else {
        Ok((Detected::Tcp, Vec::new()))
    }
}

fn count_detection(state: &ProxyState, protocol: Protocol, detected: Detected) {
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
}

fn tls_result(state: &ProxyState, result: &'static str) {
    state
        .metrics
        .inbound_tls
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The peer's SPIFFE identity, from its verified mTLS certificate.
    pub peer_id: Option<Arc<str>>,
}

/// Terminates mesh mTLS (the peer must present a certificate the trust bundle vouches for),
/// then serves what is inside like any other connection.
async fn serve_tls<I>(
    io: I,
    protocol: Protocol,
    peer: SocketAddr,
    role: &Role,
    state: &Arc<ProxyState>,
    drain: &Drain,
    service: &str,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = state.tls() else {
        tls_result(state, "no-certificate");
        if let Some(suppressed) = state.peer_log.allow() {
            tracing::warn!(%peer, suppressed, "mTLS connection refused: this proxy has no workload certificate");
        }
        return;
    };
    let accept = tls.acceptor().accept(io);
    let mut stream = match tokio::time::timeout(state.settings.detect_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tls_result(state, "handshake-failed");
            if let Some(suppressed) = state.peer_log.allow() {
                tracing::info!(%peer, error = %e, suppressed, "mTLS handshake refused");
            }
            return;
        }
        Err(_) => {
            tls_result(state, "handshake-timeout");
            tracing::debug!(%peer, "mTLS handshake timed out");
            return;
        }
    };
    tls_result(state, "ok");
    let peer_id = peer_identity(stream.get_ref().1).map(|id| Arc::<str>::from(id.to_string()));
    let first = match first_bytes(&mut stream, protocol != Protocol::Tcp, state).await {
        Ok(first) => first,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "read failed during protocol detection");
            return;
        }
    };
    let conn = Conn { peer, peer_id };
    dispatch(stream, first, protocol, &conn, role, state, drain, service).await;
}

/// Serves a connection (plaintext, or what is inside TLS) given what its first bytes said: the
/// detection is counted, the bytes read are replayed, and HTTP or TCP handling takes over.
#[allow(clippy::too_many_arguments)]
async fn dispatch<I>(
    stream: I,
    (detected, prefix): (Detected, Vec<u8>),
    protocol: Protocol,
    conn: &Conn,
    role: &Role,
    state: &Arc<ProxyState>,
    drain: &Drain,
    service: &str,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A port declared TCP is opaque, whatever its first bytes (read to sniff TLS) looked like.
    let detected = if protocol == Protocol::Tcp {
        Detected::Tcp
    } else {
        detected
    };
    count_detection(state, protocol, detected);
    let io = PrefixedIo::new(prefix, stream);
    match (detected, protocol) {
        (Detected::Http1 | Detected::Http2, _) => {
            serve_http(io, detected, conn, role, state, drain).await
        }
        // A port declared HTTP gets an HTTP server even for garbage: it answers 400.
        (Detected::Tcp, Protocol::Http | Protocol::Http2 | Protocol::Grpc) => {
            serve_http(io, Detected::Http1, conn, role, state, drain).await
        }
        // ...and never falls back to TCP: a client silent past the timeout is closed.
        (Detected::Timeout, Protocol::Http | Protocol::Http2 | Protocol::Grpc) => {
            tracing::debug!(peer = %conn.peer, "silent client on a port declared HTTP; closing");
        }
        (Detected::Closed, _) => {}
        _ => {
            if let Role::Inbound { .. } = role {
                // Opaque bytes reach the app only with a decision on the connection as a whole.
                if let Err(e) = gate::admit_connection(state, conn) {
                    tracing::debug!(peer = %conn.peer, reason = e.reason.as_str(), "TCP connection refused");
                    return;
                }
            }
            serve_tcp(io, conn.peer, role, state, service).await
        }
    }
}

async fn serve_tcp<I>(io: I, peer: SocketAddr, role: &Role, state: &Arc<ProxyState>, service: &str)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let target = match role {
        Role::Inbound { app } => Some((*app, None)),
        Role::Outbound { fixed: Some(f) } => tcp_endpoint(state, f),
        Role::Outbound { fixed: None } => {
            tracing::debug!(%peer, "opaque TCP on the Host-routed port has no destination; closing");
            None
        }
    };
    let Some((addr, tls)) = target else {
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
    match connect_peer(addr, timeout, tls.as_ref()).await {
        Ok(upstream) => splice(&state.metrics, role.direction(), service, io, upstream).await,
        Err(e) => {
            if let Some(suppressed) = state.peer_log.allow() {
                tracing::warn!(%peer, error = %e.detail, suppressed, "tcp upstream connect failed");
            }
        }
    }
}

fn tcp_endpoint(state: &ProxyState, f: &FixedTarget) -> Option<(SocketAddr, Option<PeerTls>)> {
    let snap = state.snapshot.load_full()?;
    let svc = snap.service(&f.namespace, &f.service)?;
    let group = svc.groups.get(&None)?;
    let i = group.balancer.pick(&group.endpoints, None, |_| true)?;
    let ep = &group.endpoints[i];
    Some((ep.addr, peer_tls(state, svc, ep)))
}

async fn serve_http<I>(
    io: I,
    detected: Detected,
    conn: &Conn,
    role: &Role,
    state: &Arc<ProxyState>,
    drain: &Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (state2, role2, conn2) = (state.clone(), role.clone(), Arc::new(conn.clone()));
    let peer = conn.peer;
    let svc = service_fn(move |req| {
        let state = state2.clone();
        let role = role2.clone();
        let conn = conn2.clone();
        async move {
            match role {
                Role::Inbound { app } => inbound::handle(state, app, conn, req).await,
                Role::Outbound { fixed } => outbound::handle(state, fixed, conn.peer, req).await,
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
