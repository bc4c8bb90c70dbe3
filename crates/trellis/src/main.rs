//! The `trellis` binary: one executable, one verb per role — the sidecar (`proxy`), the sample
//! service (`demo-app`), a whole mesh on one machine (`up`), and config checking (`validate`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use trellis::{ca_cmd, control_cmd, ctl, demo_app, gateway_cmd, proxy_cmd, up};

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
    /// Run an ingress gateway serving the listeners of a Gateway API `Gateway` resource.
    Gateway(Box<gateway_cmd::GatewayArgs>),
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
    /// Golden numbers from the proxies: success rate, requests per second and latency
    /// percentiles per service, or per caller → callee edge (--from/--to), over a recent window.
    Stat(ctl::StatArgs),
    /// Watch the requests a service's sidecars see, live (credentials redacted).
    Tap(ctl::TapArgs),
    /// A live table of a service's busiest paths, from a tap.
    Top(ctl::TopArgs),
    /// Print (or --open) the dashboard's address with a one-time login link.
    Dashboard(ctl::DashboardArgs),
    /// Look at the mesh certificate authority and rotate its root (add-root, activate, retire).
    Ca(ca_cmd::CaArgs),
    /// Check config files and report every problem with file, document and field path.
    Validate {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match &cli.command {
        Command::Proxy(args) => args.workers,
        Command::Gateway(args) => args.workers,
        _ => 0,
    };
    trellis::process::run(&cli.log, workers, async move {
        match cli.command {
            Command::Proxy(args) => proxy_cmd::run(*args).await,
            Command::Gateway(args) => gateway_cmd::run(*args).await,
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
            Command::Stat(args) => ctl::stat(args).await,
            Command::Tap(args) => ctl::tap(args).await,
            Command::Top(args) => ctl::top(args).await,
            Command::Dashboard(args) => ctl::dashboard(args).await,
        }
    })
}
