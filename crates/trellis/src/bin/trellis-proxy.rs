//! `trellis-proxy`: the sidecar alone. It takes exactly the flags of `trellis proxy`; being
//! built without the control plane, store and CLI, it maps about 2 MB less code into memory,
//! which is most of what an on-demand sidecar costs (bench/scale.md).
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use trellis::proxy_cmd;

#[derive(Parser, Debug)]
#[command(name = "trellis-proxy", version, about = "Trellis sidecar proxy")]
struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `trellis_proxy=debug`.
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    proxy: proxy_cmd::ProxyArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = cli.proxy.workers;
    trellis::process::run(&cli.log, workers, proxy_cmd::run(cli.proxy))
}
