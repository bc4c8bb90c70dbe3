//! `trellis demo-app`: a small sample service for examples, tests and benchmarks.
//!
//! A mesh is only observable through the answers its services give. Every answer of the demo app
//! names the service, its version label and the instance that produced it, so an example, a test
//! or a benchmark can see where the mesh routed a request (canary splits, subsets, failover,
//! balancing) without any other tooling. Knobs for latency and error rate make the same binary the
//! "slow" or "flaky" backend that retries, timeouts, outlier detection and dashboards need.
//!
//! One port speaks HTTP/1.1 and HTTP/2 cleartext (prior knowledge), and so gRPC; see [`routes`] for
//! the routes. With `--mode tcp` the port is an opaque TCP echo server instead (see [`tcp`]).
//!
//! After binding, the app prints exactly one line to stdout,
//! `demo-app <name> <version> listening on <addr>`, so a caller that passed port 0 can learn the
//! port. Nothing else is ever written to stdout (logs go through `tracing`).
//!
//! The demo app must never panic on anything a peer sends: bad requests get a 400, oversized
//! gRPC bodies a 413.

mod grpc;
mod routes;
mod tcp;
#[cfg(test)]
mod tests;
mod ws;

use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::HeaderValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long in-flight connections get to finish after SIGTERM / ctrl-c.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

// The field `app_version` is exposed as `--version`. clap adds its own `--version` flag to a
// command that has a version (e.g. with `propagate_version`), which would clash, so this struct
// carries `disable_version_flag = true`; clap applies it to the subcommand it is mounted as.
// main.rs should still spell it on the variant to make the intent obvious:
//
//     #[command(disable_version_flag = true)]
//     DemoApp(demo_app::DemoArgs),
//
/// Run a small sample service that names its service, version and instance in every answer.
#[derive(clap::Args, Debug, Clone)]
#[command(disable_version_flag = true)]
pub struct DemoArgs {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Service name reported in every answer.
    #[arg(long, value_name = "NAME", default_value = "demo")]
    pub name: String,

    /// Version label reported in every answer (and in `x-demo-version`).
    #[arg(long = "version", value_name = "VERSION", default_value = "v1")]
    pub app_version: String,

    /// Instance id reported in every answer [default: the bound address].
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,

    /// Added latency before each answer, e.g. "20ms".
    #[arg(long, value_name = "DURATION", default_value = "0")]
    pub latency: trellis_api::Duration,

    /// Share of requests answered with an injected error (0.0..=1.0).
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Protocol served on the port.
    #[arg(long, value_enum, default_value_t = Mode::Http)]
    pub mode: Mode,
}

/// What the demo app speaks on its port.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1, HTTP/2 cleartext, gRPC and WebSocket.
    Http,
    /// Opaque TCP echo.
    Tcp,
}

/// Everything a running demo app needs to know; [`DemoArgs`] after binding.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub version: String,
    pub instance: String,
    pub latency: Duration,
    pub error_rate: f64,
    pub mode: Mode,
}

impl Config {
    /// A config with no latency and no errors, as tests want it.
    #[cfg(test)]
    pub fn new(name: &str, version: &str, instance: &str) -> Self {
        Config {
            name: name.to_string(),
            version: version.to_string(),
            instance: instance.to_string(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            mode: Mode::Http,
        }
    }
}

/// A validated [`Config`] plus the header values derived from it, shared by all connections.
#[derive(Debug)]
struct App {
    cfg: Config,
    version_header: HeaderValue,
    instance_header: HeaderValue,
}

impl App {
    fn new(cfg: Config) -> anyhow::Result<Self> {
        if !(0.0..=1.0).contains(&cfg.error_rate) {
            anyhow::bail!("error rate {} is outside 0.0..=1.0", cfg.error_rate);
        }
        let version_header = HeaderValue::from_str(&cfg.version)
            .with_context(|| format!("--version {:?} is not a valid header value", cfg.version))?;
        let instance_header = HeaderValue::from_str(&cfg.instance).with_context(|| {
            format!("--instance {:?} is not a valid header value", cfg.instance)
        })?;
        Ok(App {
            cfg,
            version_header,
            instance_header,
        })
    }

    /// Sleeps for the configured latency, if any.
    async fn delay(&self) {
        if !self.cfg.latency.is_zero() {
            tokio::time::sleep(self.cfg.latency).await;
        }
    }

    /// Whether this request should get an injected error.
    fn inject_error(&self) -> bool {
        self.cfg.error_rate > 0.0 && rand::random::<f64>() < self.cfg.error_rate
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is outside 0.0..=1.0"))
    }
}

/// Runs the demo app until SIGTERM or ctrl-c.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("cannot read bound address")?;
    let cfg = Config {
        name: args.name,
        version: args.app_version,
        instance: args.instance.unwrap_or_else(|| addr.to_string()),
        latency: args.latency.as_std(),
        error_rate: args.error_rate,
        mode: args.mode,
    };
    let app = App::new(cfg)?;
    announce(&app.cfg, addr)?;
    serve_app(listener, app, shutdown_signal()).await
}

/// Prints the one stdout line callers wait for.
fn announce(cfg: &Config, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "demo-app {} {} listening on {addr}",
        cfg.name, cfg.version
    )
    .and_then(|()| out.flush())
    .context("cannot write to stdout")
}

/// Serves `listener` forever (tests pass a listener bound to port 0).
#[cfg_attr(not(test), allow(dead_code))]
pub async fn serve(listener: TcpListener, cfg: Config) -> anyhow::Result<()> {
    serve_until(listener, cfg, std::future::pending()).await
}

/// Serves `listener` until `shutdown` completes, then drains connections for up to a second.
pub async fn serve_until(
    listener: TcpListener,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_app(listener, App::new(cfg)?, shutdown).await
}

async fn serve_app(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let app = Arc::new(app);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::select! {
        () = accept_loop(&listener, &app, &stop_rx) => {}
        () = shutdown => {}
    }
    drop(listener);
    drop(stop_rx);
    tracing::info!("demo-app shutting down");
    let _ = stop_tx.send(true);
    // Every connection task holds a receiver; `closed` resolves once they have all finished.
    if tokio::time::timeout(DRAIN_TIMEOUT, stop_tx.closed())
        .await
        .is_err()
    {
        tracing::info!("demo-app: connections still open after drain timeout, exiting anyway");
    }
    Ok(())
}

async fn accept_loop(listener: &TcpListener, app: &Arc<App>, stop: &watch::Receiver<bool>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "demo-app: accepted connection");
                spawn_connection(stream, app.clone(), stop.clone());
            }
            Err(error) => {
                // Usually EMFILE or a connection reset before accept: back off a little.
                tracing::warn!(%error, "demo-app: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn spawn_connection(stream: TcpStream, app: Arc<App>, stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    match app.cfg.mode {
        Mode::Http => tokio::spawn(routes::serve_connection(stream, app, stop)),
        Mode::Tcp => tokio::spawn(tcp::serve_connection(stream, app, stop)),
    };
}

/// Completes once the app is shutting down (or the app is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, before any caller awaits again.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Completes on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = sigterm() => {}
    }
}

#[cfg(unix)]
async fn sigterm() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(error) => {
            tracing::warn!(%error, "demo-app: cannot listen for SIGTERM");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
async fn sigterm() {
    std::future::pending::<()>().await;
}
