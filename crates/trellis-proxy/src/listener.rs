//! Accept loops: each listener accepts, detects the protocol (unless its port opts out), and hands
//! the connection to the HTTP server (hyper) or the TCP splicer. On drain, listeners stop
//! accepting and HTTP connections are asked to finish what is in flight and close; an HTTP
//! connection idle past `--idle-timeout` is closed the same way.
//!
//! What it must never do: make a server-first protocol wait for a client that will not speak
//! first on a port declared `tcp` (see `first_read_window`), or let a byte reach the app
//! before [`gate::admit_connection`] (opaque TCP) or the per-request gate (HTTP) decided.
use crate::body;
use crate::config::Snapshot;
use crate::conn::Conn;
use crate::detect::{detect, Detected, PrefixedIo, Sniffed, Source};
use crate::drain::Drain;
use crate::error::Reason;
use crate::gate;
use crate::http::outbound::FixedTarget;
use crate::http::{inbound, outbound};
use crate::idle::Activity;
use crate::metrics::{ConnLabels, ResultLabels, TcpLabels};
use crate::state::ProxyState;
use crate::tcp::splice;
use crate::tls::Alpn;
use crate::upstream::opaque;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
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
    /// A captured connection to `to`, outside the mesh, under a `RegistryOnly` outbound policy:
    /// HTTP is answered `502 egress-denied`, anything else closed.
    EgressDenied { to: SocketAddr },
}

impl Role {
    fn direction(&self) -> &'static str {
        match self {
            Role::Outbound { .. } | Role::EgressDenied { .. } => "outbound",
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
        Role::Outbound { fixed: None } | Role::EgressDenied { .. } => String::new(),
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
        Role::Outbound { fixed: None } | Role::EgressDenied { .. } => Protocol::Detect,
        Role::Inbound { .. } => snap.inbound.protocol,
    }
}

/// One connection served as `role` serves it: transparent capture picks the role (the service
/// the app meant) per connection, then everything explicit mode does applies unchanged.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    role: &Role,
    state: &Arc<ProxyState>,
    drain: &Drain,
) {
    connection(stream, peer, role, state, drain).await
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
    let mode = match role {
        Role::Inbound { .. } => snap
            .as_ref()
            .map_or(MtlsMode::Permissive, |s| s.inbound.mtls),
        Role::Outbound { .. } | Role::EgressDenied { .. } => MtlsMode::Off,
    };
    let window = first_read_window(role, protocol, mode, state, snap.as_deref());
    let first = match read_first(&mut stream, window).await {
        Ok(first) => first,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "read failed during protocol detection");
            state.metrics.conns_closed.get_or_create(&labels).inc();
            return;
        }
    };
    match inbound_action(mode, &first.prefix) {
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
            let io = PrefixedIo::new(first.prefix, stream);
            serve_tls(io, protocol, peer, role, state, drain, &labels.service).await;
        }
    }
    state.metrics.conns_closed.get_or_create(&labels).inc();
}

/// How long to wait for a new connection's first bytes, or `None` to act at once without
/// reading: nothing the client could send would change what happens.
///
/// The bytes matter for two things: which protocol (HTTP/1, HTTP/2, opaque), unless the port
/// declares one, and on the inbound side whether a peer sidecar is starting mTLS. A port
/// declared `tcp` must not make a server-first protocol (a database greeting its client) wait
/// for a client that will never speak first, so there:
/// - the outbound side, and the inbound side with mTLS `Off`, read nothing;
/// - `Strict` waits for the ClientHello as long as for any first bytes: only TLS is served,
///   and a mesh peer sends its ClientHello right after connecting;
/// - `Permissive` waits for a ClientHello only while one can still come from a mesh peer
///   (`--tls-detect-timeout`, milliseconds), then serves the silent client as plaintext. It
///   does not wait at all when this side has no certificate (TLS could not be terminated), and
///   waits as long as `Strict` when policy would refuse a plaintext connection anyway (only
///   TLS can succeed, so there is nothing to hurry for).
fn first_read_window(
    role: &Role,
    protocol: Protocol,
    mode: MtlsMode,
    state: &ProxyState,
    snap: Option<&Snapshot>,
) -> Option<Duration> {
    let detect = state.settings.detect_timeout;
    if protocol != Protocol::Tcp {
        return Some(detect);
    }
    match (role, mode) {
        (Role::Outbound { .. } | Role::EgressDenied { .. }, _)
        | (Role::Inbound { .. }, MtlsMode::Off) => None,
        (Role::Inbound { .. }, MtlsMode::Strict) => Some(detect),
        (Role::Inbound { .. }, MtlsMode::Permissive) => {
            // Without a certificate no TLS could be terminated: nothing to wait for.
            state.tls()?;
            let plaintext_allowed = snap.is_some_and(|s| {
                s.inbound
                    .authorizer
                    .decide_connection(None, s.inbound.port)
                    .allowed
            });
            if plaintext_allowed {
                Some(state.settings.tls_detect_timeout.min(detect))
            } else {
                Some(detect)
            }
        }
    }
}

/// Reads the first bytes within `window` (a bounded detection read), or nothing at all.
async fn read_first<I: AsyncRead + Unpin>(
    stream: &mut I,
    window: Option<Duration>,
) -> std::io::Result<Sniffed> {
    match window {
        Some(timeout) => {
            let (detected, prefix) = detect(stream, timeout).await?;
            Ok(Sniffed::read(detected, prefix))
        }
        None => Ok(Sniffed::declared(Detected::Tcp)),
    }
}

fn count_detection(state: &ProxyState, first: &Sniffed) {
    state
        .metrics
        .detections
        .get_or_create(&ResultLabels {
            result: first.metric_result(),
        })
        .inc();
}

fn tls_result(state: &ProxyState, result: &'static str) {
    state
        .metrics
        .inbound_tls
        .get_or_create(&ResultLabels { result })
        .inc();
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
    // The peer sidecar said by ALPN what it sends: detecting again would make an undeclared
    // server-first protocol wait for the detection timeout a second time.
    let told = stream.get_ref().1.alpn_protocol().and_then(Alpn::from_id);
    let first = match (protocol, told) {
        (Protocol::Tcp, _) => Ok(Sniffed::declared(Detected::Tcp)),
        (_, Some(alpn)) => Ok(Sniffed::told(match alpn {
            Alpn::Http1 => Detected::Http1,
            Alpn::Http2 => Detected::Http2,
            Alpn::Opaque => Detected::Tcp,
        })),
        (_, None) => read_first(&mut stream, Some(state.settings.detect_timeout)).await,
    };
    let first = match first {
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
    mut first: Sniffed,
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
    if protocol == Protocol::Tcp {
        first.detected = Detected::Tcp;
        first.source = Source::Declared;
    }
    count_detection(state, &first);
    let detected = first.detected;
    let io = PrefixedIo::new(first.prefix, stream);
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
            serve_tcp(io, conn, role, state, service).await
        }
    }
}

async fn serve_tcp<I>(io: I, conn: &Conn, role: &Role, state: &Arc<ProxyState>, service: &str)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let started = (std::time::SystemTime::now(), std::time::Instant::now());
    let source = match role {
        Role::Inbound { .. } => conn
            .peer_id
            .clone()
            .unwrap_or_else(|| state.unknown_source()),
        Role::Outbound { .. } | Role::EgressDenied { .. } => state.local_source(),
    };
    let edge = TcpLabels {
        direction: role.direction(),
        source,
        service: service.to_string(),
    };
    let (bytes, reason) = forward_tcp(io, conn.peer, role, state, edge).await;
    if let Some(snap) = state.snapshot.load().as_ref() {
        crate::access_log::tcp_connection(
            &state.access_log,
            &snap.mesh.telemetry.access_log,
            role.direction(),
            started,
            conn.peer,
            conn.peer_id.clone(),
            service,
            bytes,
            reason,
        );
    }
}

/// Opens the upstream and splices; the bytes moved (received, sent) and, when the connection
/// went nowhere, why.
async fn forward_tcp<I>(
    io: I,
    peer: SocketAddr,
    role: &Role,
    state: &Arc<ProxyState>,
    edge: TcpLabels,
) -> ((u64, u64), &'static str)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = state.upstream_context();
    let opened = match role {
        Role::Inbound { app } => opaque::to_address(&ctx, *app).await,
        Role::Outbound { fixed: Some(f) } => {
            let Some(snap) = state.snapshot.load_full() else {
                return ((0, 0), Reason::NotReady.as_str());
            };
            opaque::to_service(&ctx, &snap, &f.namespace, &f.service, peer).await
        }
        Role::Outbound { fixed: None } => {
            tracing::debug!(%peer, "opaque TCP on the Host-routed port has no destination; closing");
            return ((0, 0), Reason::NoRoute.as_str());
        }
        Role::EgressDenied { to } => {
            crate::http::egress::denied(state, peer, *to, "tcp");
            return ((0, 0), Reason::EgressDenied.as_str());
        }
    };
    match opened {
        Ok(mut upstream) => {
            let bytes = splice(&state.metrics, edge, io, &mut upstream.io).await;
            (bytes, "")
        }
        Err(e) => {
            if e.reason == Reason::ConnectFailed {
                if let Some(suppressed) = state.peer_log.allow() {
                    tracing::warn!(%peer, error = %e.detail, suppressed, "tcp upstream connect failed");
                }
            } else {
                tracing::debug!(%peer, error = %e, "tcp connection not forwarded");
            }
            ((0, 0), e.reason.as_str())
        }
    }
}

/// Runs a served (pinned) hyper connection to its end, asking it to close gracefully (in-flight
/// requests finish) once `$expired` resolves (idle too long) or the proxy drains. A macro, not a
/// function: hyper's HTTP/1 and HTTP/2 connections share no trait with `graceful_shutdown`.
macro_rules! drive {
    ($conn:ident, $expired:expr, $drain:expr) => {{
        let expired = $expired;
        tokio::pin!(expired);
        let mut closing = false;
        loop {
            tokio::select! {
                r = $conn.as_mut() => break r,
                _ = &mut expired, if !closing => {
                    closing = true;
                    $conn.as_mut().graceful_shutdown();
                }
                _ = $drain.started(), if !closing => {
                    closing = true;
                    $conn.as_mut().graceful_shutdown();
                }
            }
        }
    }};
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
    let handle = move |req| {
        let state = state2.clone();
        let role = role2.clone();
        let conn = conn2.clone();
        async move {
            match role {
                Role::Inbound { app } => inbound::handle(state, app, conn, req).await,
                Role::Outbound { fixed } => outbound::handle(state, fixed, conn.peer, req).await,
                Role::EgressDenied { to } => {
                    crate::http::egress::handle(state, to, conn.peer, req).await
                }
            }
        }
    };
    let h2 = detected == Detected::Http2;
    serve_http_connection(io, h2, conn.peer, state, drain, handle).await;
}

/// Serves one HTTP connection (HTTP/2 when `h2`, else HTTP/1.1 with upgrades), answering each
/// request with `handle`, until it ends, idles past the idle timeout, or the proxy drains. A
/// request is in flight (for idleness) until its response body is finished or dropped. The
/// sidecar's listeners and the gateway's ([`crate::gateway`]) serve their connections here.
pub(crate) async fn serve_http_connection<I, H, F>(
    io: I,
    h2: bool,
    peer: SocketAddr,
    state: &ProxyState,
    drain: &Drain,
    handle: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<http::Response<body::Body>, Infallible>> + Send + 'static,
{
    let activity = Activity::new();
    let counted = activity.clone();
    let svc = service_fn(move |req| {
        // In flight until the response body is finished or dropped.
        let in_flight = counted.start();
        let rsp = handle(req);
        async move {
            rsp.await
                .map(|rsp| rsp.map(|b| body::Holding::new(b, in_flight)))
        }
    });
    let io = TokioIo::new(io);
    let s = &state.settings;
    let max_head = s.max_header_bytes;
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(max_head as u32)
            .max_concurrent_streams(1024)
            .serve_connection(io, svc);
        tokio::pin!(conn);
        // An HTTP/2 connection without streams is idle from the start (a client may open one
        // ahead of its first call); there is no head to be slow with.
        let r = drive!(
            conn,
            activity.expired(s.idle_timeout, s.idle_timeout),
            drain
        );
        log_conn_end(r, peer);
    } else {
        // hyper's header-read timer runs between keep-alive requests too, so it is set past the
        // idle timeout (which closes an idle connection first); the first head is bounded by
        // `header_read_timeout` through `expired`.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(s.idle_timeout.saturating_add(s.header_read_timeout))
            .max_buf_size(max_head.max(8192))
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        let r = drive!(
            conn,
            activity.expired(s.idle_timeout, s.header_read_timeout),
            drain
        );
        log_conn_end(r, peer);
    }
}

fn log_conn_end(r: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}
