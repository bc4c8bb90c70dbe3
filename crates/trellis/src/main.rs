//! The `trellis` binary: one executable, one verb per role — the sidecar (`proxy`), the sample
//! service (`demo-app`), a whole mesh on one machine (`up`), and config checking (`validate`).
#![forbid(unsafe_code)]

mod ca_cmd;
mod control_cmd;
mod ctl;
mod demo_app;
mod orphan;
mod proxy_cmd;
mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "trellis", version, about = "Trellis service mesh")]
struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `trellis_proxy=debug`.
    #[arg(long, global = true, env = "TRELLIS_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the control plane: config store, registry, xDS push, HTTP API.
    Control(control_cmd::ControlCmdArgs),
    /// Run a sidecar proxy beside one service instance.
    Proxy(Box<proxy_cmd::ProxyArgs>),
    /// Remove the capture rules a `proxy --intercept` left behind (after a kill -9); a proxy
    /// started with --intercept does this itself first.
    InterceptRemove {
        /// The iptables program.
        #[arg(long, default_value = "iptables")]
        iptables: std::path::PathBuf,
    },
    /// Run the sample service used by examples, tests and benchmarks.
    #[command(disable_version_flag = true)]
    DemoApp(demo_app::DemoArgs),
    /// Start a whole mesh on this machine from a manifest: apps, sidecars and config.
    Up(up::UpArgs),
    /// Create or update resources on a control plane from files, a directory, or stdin.
    Apply(ctl::ApplyArgs),
    /// List resources of a kind, or show one.
    Get(ctl::GetArgs),
    /// Show one resource in full, with what the mesh knows about it.
    Describe(ctl::GetArgs),
    /// Delete a resource.
    Delete(ctl::DeleteArgs),
    /// What config a proxy holds: versions sent and acknowledged, and the last rejection.
    ProxyConfig(ctl::ProxyConfigArgs),
    /// Is the mesh healthy: control plane reachable, every proxy connected and in sync.
    Check(ctl::CheckArgs),
    /// Look at the mesh certificate authority and rotate its root (add-root, activate, retire).
    Ca(ca_cmd::CaArgs),
    /// Check config files and report every problem with file, document and field path.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Libraries' warnings about what a peer did (h2 writes one per rapid-reset connection and
    // per unsolicited PING ack) are written at most about once a second each.
    let format =
        trellis_net::liblog::ThrottleLibraryWarnings::new(tracing_subscriber::fmt::format());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(format)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    orphan::exit_with_parent_if_asked();
    // Every connection is a descriptor; many systems start processes at a soft limit of 1024
    // while allowing far more. Connection caps are fitted under whatever limit is in force.
    trellis_net::fdlimit::raise();
    let workers = match &cli.command {
        Command::Proxy(args) => args.workers,
        _ => 0,
    };
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Proxy(args) => proxy_cmd::run(*args).await,
            Command::InterceptRemove { iptables } => {
                trellis_proxy::capture::remove(&iptables).map_err(anyhow::Error::from)
            }
            Command::DemoApp(args) => demo_app::run(args).await,
            Command::Up(args) => up::run(args).await,
            Command::Validate { files } => ctl::validate(&files),
            Command::Control(args) => control_cmd::run(args).await,
            Command::Apply(args) => ctl::apply(args).await,
            Command::Get(args) => ctl::get(args).await,
            Command::Describe(args) => ctl::describe(args).await,
            Command::Delete(args) => ctl::delete(args).await,
            Command::ProxyConfig(args) => ctl::proxy_config(args).await,
            Command::Check(args) => ctl::check(args).await,
            Command::Ca(args) => ca_cmd::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
