//! `trellis control`: the control plane process. It is the mesh's certificate authority and
//! requires a join token from every proxy and CLI call; this module turns the flags for both
//! into [`ControlOptions`].
use crate::ctl::SecretArg;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use trellis_control::server::{run as run_control, ConnectionLimits, ControlOptions, SuppliedCa};
use trellis_control::StoreSpec;

/// Name of the token file under `--data-dir` with the embedded store.
pub const JOIN_TOKEN_FILE: &str = "join-token";

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
    /// The join token proxies and the CLI must present. Default: the token kept in the store,
    /// generated on first start.
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub join_token: Option<SecretArg>,
    /// Where to write the join token in force (mode 0600). Default: `<data-dir>/join-token` with
    /// the embedded store; not written with etcd unless given.
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// The mesh CA's certificate (PEM: the signing certificate, then its chain up to the root),
    /// used instead of a generated root when the store holds no CA yet. Needs --ca-key.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The private key (PKCS#8 PEM) of --ca-cert.
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    /// Connections kept at most (each proxy holds about one; lowered at start to fit the
    /// open-files limit). Beyond it the oldest connection with no request in flight is closed
    /// to make room; an xDS stream is never closed for it.
    #[arg(long, default_value_t = trellis_control::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long a new connection may take to send its first request head.
    #[arg(long, default_value = "10s")]
    pub header_read_timeout: trellis_api::Duration,
    /// How long a connection may stay with no request in flight (an open xDS stream is one).
    #[arg(long, default_value = "60s")]
    pub idle_timeout: trellis_api::Duration,
    /// Documents one apply may commit at most, as one transaction. Default: what the store
    /// takes (etcd: 4032 documents and about 1.3 MB; the embedded store: the 50 000 documents
    /// of one request). `trellis apply` splits a bigger manifest into applies that fit.
    #[arg(long)]
    pub max_apply_documents: Option<usize>,
    /// Serve the dashboard (`/dashboard/`) even when --listen is not a loopback address. Off by
    /// default: there it would face the network over plain HTTP; prefer an SSH tunnel.
    #[arg(long)]
    pub dashboard_any_address: bool,
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

fn supplied_ca(args: &ControlCmdArgs) -> anyhow::Result<Option<SuppliedCa>> {
    match (&args.ca_cert, &args.ca_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(SuppliedCa {
            cert_chain_pem: read_pem(cert, "--ca-cert")?,
            key_pem: read_pem(key, "--ca-key")?,
        })),
        (Some(_), None) => anyhow::bail!(
            "--ca-cert needs --ca-key (the certificate's private key): give both or neither"
        ),
        (None, Some(_)) => anyhow::bail!(
            "--ca-key needs --ca-cert (the CA certificate chain): give both or neither"
        ),
    }
}

pub async fn run(args: ControlCmdArgs) -> anyhow::Result<()> {
    let store = StoreSpec::from_flags(Some(&args.store), &args.data_dir)?;
    let join_token_file = match (&args.join_token_file, &store) {
        (Some(path), _) => Some(path.clone()),
        (None, StoreSpec::Embedded { data_dir }) => Some(data_dir.join(JOIN_TOKEN_FILE)),
        (None, StoreSpec::Etcd { .. }) => None,
    };
    let given_token = args.join_token.is_some();
    let opts = ControlOptions {
        listen: args.listen,
        store,
        lease_ttl: args.lease_ttl.as_std(),
        join_token: args.join_token.clone().map(|t| t.0),
        join_token_file: join_token_file.clone(),
        ca: supplied_ca(&args)?,
        connections: ConnectionLimits {
            max_connections: args.max_connections,
            http: trellis_net::HttpServer {
                header_read_timeout: args.header_read_timeout.as_std(),
                idle_timeout: args.idle_timeout.as_std(),
                ..trellis_net::HttpServer::default()
            },
        },
        max_apply_documents: args.max_apply_documents,
        dashboard: trellis_control::dashboard::DashboardOptions {
            any_address: args.dashboard_any_address,
        },
    };
    let opts_dashboard = opts.dashboard;
    run_control(opts, crate::proxy_cmd::shutdown_signal(), |addr| {
        println!("trellis control ready: listening on {addr}");
        if opts_dashboard.enabled_for(addr) {
            println!(
                "dashboard: http://{addr}/dashboard/ (`trellis dashboard` prints a login link)"
            );
        } else {
            println!("dashboard: off (not a loopback address; --dashboard-any-address serves it)");
        }
        match (&join_token_file, given_token) {
            (Some(path), _) => println!(
                "join token written to {} (proxies and the CLI read it with --token-file)",
                path.display()
            ),
            (None, true) => println!("join token: the one given by --join-token / TRELLIS_TOKEN"),
            (None, false) => println!(
                "join token: kept in the store only; pass --join-token-file FILE to write it out"
            ),
        }
    })
    .await?;
    Ok(())
}
