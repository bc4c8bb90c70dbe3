//! `trellis control`: the control plane process.
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use trellis_control::server::{run as run_control, ControlOptions};
use trellis_control::StoreSpec;

#[derive(Args, Debug, Clone)]
pub struct ControlCmdArgs {
    /// Address for the HTTP API and the xDS transport.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// `embedded` (a crash-safe file under --data-dir) or `etcd://host:port[,host:port...]`.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// Where the embedded store keeps its file.
    #[arg(long, default_value = "trellis-data")]
    pub data_dir: PathBuf,
    /// How long a registered workload outlives its last keep-alive.
    #[arg(long, default_value = "10s")]
    pub lease_ttl: trellis_api::Duration,
}

pub async fn run(args: ControlCmdArgs) -> anyhow::Result<()> {
    let store = StoreSpec::from_flags(Some(&args.store), &args.data_dir)?;
    let opts = ControlOptions {
        listen: args.listen,
        store,
        lease_ttl: args.lease_ttl.as_std(),
        join_token: None,
        join_token_file: None,
        ca: None,
    };
    run_control(opts, crate::proxy_cmd::shutdown_signal(), |addr| {
        println!("trellis control ready: listening on {addr}");
    })
    .await?;
    Ok(())
}
