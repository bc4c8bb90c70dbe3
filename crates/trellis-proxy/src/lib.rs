//! The Trellis sidecar: the data plane that carries a service instance's inbound and outbound
//! traffic, steered by an immutable config snapshot swapped atomically on change.
//!
//! [`run`] binds every listener, loads the first config (the proxy is ready only then), serves
//! until asked to stop, then drains: listeners close, in-flight requests finish, and the process
//! exits once connections are gone or the drain timeout passes.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod capture;
pub mod config;
pub mod conn;
pub mod control_api;
pub mod detect;
pub mod dns;
pub mod drain;
pub mod dynamic;
pub mod error;
pub mod gate;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod idle;
pub mod listener;
pub mod live;
pub mod metrics;
pub mod ondemand;
pub mod ratelimit;
pub mod registration;
pub mod resilience;
pub mod retry;
pub mod settings;
pub mod sockopt;
pub mod source;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upstream;

use crate::drain::Drain;
use crate::http::outbound::FixedTarget;
use crate::listener::Role;
use crate::settings::{LocalIdentity, Settings};
use crate::state::ProxyState;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A Consul-style local port bound to one upstream service.
#[derive(Debug, Clone)]
pub struct UpstreamPort {
    pub service: String,
    pub port: Option<u16>,
    pub listen: SocketAddr,
}

/// Where the proxy's config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A YAML file, polled every `watch_interval`.
    File {
        path: PathBuf,
        watch_interval: Duration,
    },
    /// Pushed by control-plane replicas over xDS.
    Control(Box<ControlSource>),
}

#[derive(Debug, Clone)]
pub struct ControlSource {
    /// Control-plane replicas (`http://host:port`); any one will do.
    pub endpoints: Vec<String>,
    pub node_id: String,
    /// The workload to register under a lease, when this proxy has an inbound side.
    pub register: Option<trellis_api::Workload>,
    pub lease_ttl: Duration,
    /// The join token the control plane requires on its API and xDS stream.
    pub token: Option<String>,
    /// Discover services on demand, a first call waiting at most this long (see [`ondemand`]);
    /// `None` takes every service this proxy may call ahead of time.
    pub on_demand: Option<Duration>,
}

/// Mesh mTLS certificate files for a proxy on a static config (`--tls-cert`, `--tls-key`,
/// `--tls-trust`). A proxy on a control plane gets its certificate from the CA instead.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust: PathBuf,
}

/// Everything `trellis proxy` is told on its command line.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub source: ConfigSource,
    pub identity: LocalIdentity,
    pub settings: Settings,
    /// The `Host`-routed outbound listener; `None` disables it.
    pub outbound: Option<SocketAddr>,
    pub upstreams: Vec<UpstreamPort>,
    /// Inbound listener and the local app it forwards to.
    pub inbound: Option<(SocketAddr, SocketAddr)>,
    pub admin: SocketAddr,
    pub tls_files: Option<TlsFiles>,
    /// The mesh DNS answerer (`--dns`), off when `None`.
    pub dns: Option<dns::DnsOptions>,
    /// Transparent capture (`--intercept`), off when `None`.
    pub capture: Option<CaptureOptions>,
}

/// What `--intercept` captures and where it sends it (see [`capture`]).
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The captured-outbound listener (redirected connections arrive here).
    pub listen: SocketAddr,
    /// The `iptables` program (nft backend).
    pub iptables: PathBuf,
    /// `SO_MARK` of this proxy's own sockets, exempt from capture.
    pub mark: u32,
    /// Outbound TCP ports left alone; the control plane's are added by the caller.
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound TCP ports left alone; the admin port is always added.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations left alone.
    pub exclude_cidrs: Vec<trellis_api::Ipv4Cidr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] source::LoadError),
    #[error("control plane: {0}")]
    Control(String),
    #[error("mTLS: {0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error("capture: {0}")]
    Capture(#[from] capture::CaptureError),
    #[error("cannot listen on {addr} ({what}): {error}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        error: std::io::Error,
    },
}

/// Addresses actually bound (useful when a port was 0).
#[derive(Debug, Clone)]
pub struct Bound {
    pub admin: SocketAddr,
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub dns: Option<SocketAddr>,
}

/// Binds the captured-outbound listener and installs the rules.
async fn start_capture(
    c: &CaptureOptions,
    bound: &Bound,
    state: &Arc<ProxyState>,
    drain: &Drain,
) -> Result<capture::Capture, StartError> {
    let l = bind(c.listen, "captured outbound").await?;
    let port = l.local_addr().map(|a| a.port()).unwrap_or(c.listen.port());
    tokio::spawn(capture::accept::run(l, state.clone(), drain.clone()));
    let mut exclude_inbound = c.exclude_inbound_ports.clone();
    exclude_inbound.push(bound.admin.port());
    let rules = capture::RuleSet {
        outbound_port: port,
        inbound_port: bound.inbound.map(|a| a.port()),
        dns_port: bound.dns.map(|a| a.port()),
        mark: c.mark,
        exclude_outbound_ports: c.exclude_outbound_ports.clone(),
        exclude_inbound_ports: exclude_inbound,
        exclude_cidrs: c
            .exclude_cidrs
            .iter()
            .map(|n| (n.network(), n.prefix()))
            .collect(),
    };
    let program = c.iptables.clone();
    let installed = tokio::task::spawn_blocking(move || capture::Capture::install(program, &rules))
        .await
        .map_err(|e| StartError::Control(format!("capture install task: {e}")))??;
    Ok(installed)
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    // An accept queue of 1024, not std's 128: a burst must not make clients wait a second.
    trellis_net::bind(addr)
        .await
        .map_err(|error| StartError::Bind { addr, what, error })
}

/// Runs the proxy until `shutdown` resolves or `/shutdown` is called, then drains.
/// `on_ready` is called once listeners are bound and the first config is in force.
pub async fn run(
    opts: ProxyOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), StartError> {
    let app = opts.inbound.map(|(_, app)| app);
    let state = ProxyState::new(opts.identity.clone(), opts.settings.clone(), app);
    let drain = Drain::new();
    // The file source loads before anything listens, so a bad file stops the start; a control
    // plane may be away at start, so the proxy listens and is ready once the first push lands.
    let mut watch_task = None;
    let mut control = None;
    match &opts.source {
        ConfigSource::File {
            path,
            watch_interval,
        } => {
            let first = source::load(path, 1, None, &opts.identity)?;
            if let Some(files) = &opts.tls_files {
                // Peers must be of this mesh's trust domain, not merely chain to a trusted root.
                let trust_domain = first.mesh.trust_domain.clone();
                let tls = tls::MeshTls::from_files(files, &trust_domain)?;
                state.set_tls(Arc::new(tls));
            }
            state.install(first);
            watch_task = Some(tokio::spawn(source::watch(
                path.clone(),
                *watch_interval,
                state.clone(),
            )));
        }
        ConfigSource::Control(c) => {
            // The node id is the Workload name: metrics label this instance by it.
            if let Err(e) = state.set_workload(&c.node_id) {
                tracing::warn!(error = %e, "metrics will not name this instance");
            }
            control = Some(dynamic::start(c, &state)?)
        }
    }

    let admin = bind(opts.admin, "admin").await?;
    let mut bound = Bound {
        admin: admin.local_addr().unwrap_or(opts.admin),
        outbound: None,
        inbound: None,
        upstreams: Vec::new(),
        dns: None,
    };
    let mut listeners = Vec::new();
    if let Some(addr) = opts.outbound {
        let l = bind(addr, "outbound").await?;
        bound.outbound = l.local_addr().ok();
        listeners.push((l, Role::Outbound { fixed: None }));
    }
    for up in &opts.upstreams {
        let l = bind(up.listen, "upstream").await?;
        bound.upstreams.push(l.local_addr().unwrap_or(up.listen));
        let fixed = FixedTarget {
            namespace: opts.identity.namespace.clone(),
            service: up.service.clone(),
            port: up.port,
        };
        // A port bound to one service is a call declared ahead: discover it now (its protocol
        // decides how the port's connections are served).
        if let Some(on_demand) = state.on_demand() {
            on_demand
                .discovery
                .want(&format!("{}/{}", fixed.namespace, fixed.service));
        }
        listeners.push((
            l,
            Role::Outbound {
                fixed: Some(Arc::new(fixed)),
            },
        ));
    }
    if let Some((listen, app)) = opts.inbound {
        let l = bind(listen, "inbound").await?;
        bound.inbound = l.local_addr().ok();
        listeners.push((l, Role::Inbound { app }));
    }
    for (l, role) in listeners {
        tokio::spawn(listener::run(l, role, state.clone(), drain.clone()));
    }
    if let Some(c) = &opts.capture {
        sockopt::mark_process_sockets(c.mark);
    }
    if let Some(d) = &opts.dns {
        let mut d = d.clone();
        d.mark = opts.capture.as_ref().map(|c| c.mark);
        let server = dns::DnsServer::bind(d).await?;
        bound.dns = Some(server.local_addr());
        tokio::spawn(server.run(state.clone(), drain.clone()));
    }
    // Rules last, once everything they redirect to is listening; removed when this is dropped.
    let _capture = match &opts.capture {
        Some(c) => Some(start_capture(c, &bound, &state, &drain).await?),
        None => None,
    };
    let admin_task = tokio::spawn(admin::run(admin, state.clone(), drain.clone()));
    on_ready(&bound);

    tokio::select! {
        _ = shutdown => tracing::info!("shutdown signal received; draining"),
        _ = drain.started() => {}
    }
    // Leave every caller's endpoint set first, then stop taking connections.
    if let Some(c) = &control {
        c.deregister().await;
    }
    drain.start();
    if let Some(t) = watch_task {
        t.abort();
    }
    let idle = drain.wait_idle(opts.settings.drain_timeout).await;
    if !idle {
        tracing::warn!(
            open = drain.active(),
            "drain timeout passed with connections still open; closing them"
        );
    }
    admin_task.abort();
    Ok(())
}
