//! `trellis gateway`: command-line flags to [`trellis_proxy::gateway::GatewayOptions`], signals
//! to drain. The flags follow `trellis proxy`'s (`--control`, `--token`, `--node-id`, `--admin`,
//! the timeouts); what is the gateway's own is which Gateway it serves (`--gateway`), where its
//! listeners bind (`--address`) and where listener certificates are mounted (`--cert-dir`).
use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use trellis_proxy::gateway::GatewayOptions;
use trellis_proxy::settings::Settings;
use trellis_proxy::ControlSource;

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The Gateway resource (gateway.networking.k8s.io/v1) this gateway serves.
    #[arg(long)]
    pub gateway: String,
    /// The Gateway's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The name in the gateway's SPIFFE identity (`spiffe://TD/ns/NAMESPACE/sa/NAME`), which
    /// AuthorizationPolicies allow or deny; default: the Gateway's name.
    #[arg(long)]
    pub service_account: Option<String>,
    /// Control-plane replicas to take config from over xDS (comma-separated URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    pub control: Vec<String>,
    /// This gateway instance's name on the control plane (default: GATEWAY-PID).
    #[arg(long)]
    pub node_id: Option<String>,
    /// The address every listener binds, on its Gateway listener's port.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// Where `certificateRefs` Secrets are mounted: `DIR/NAME/tls.crt` and `DIR/NAME/tls.key`
    /// (the layout of a Kubernetes TLS Secret mounted as a volume).
    #[arg(long, default_value = "/etc/trellis/gateway-certs")]
    pub cert_dir: PathBuf,
    /// Admin listener: /ready /live /metrics /config /shutdown.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// How long a client may take to send its first bytes (and its TLS handshake).
    #[arg(long, default_value = "5s")]
    pub detect_timeout: trellis_api::Duration,
    #[arg(long, default_value = "5s")]
    pub connect_timeout: trellis_api::Duration,
    /// How long a client connection may stay with no request in flight.
    #[arg(long, default_value = "1h")]
    pub idle_timeout: trellis_api::Duration,
    /// How long a new HTTP/1 connection may take to send its first request head.
    #[arg(long, default_value = "30s")]
    pub header_read_timeout: trellis_api::Duration,
    /// How long a pooled connection to a backend's sidecar stays open unused.
    #[arg(long, default_value = "1h")]
    pub upstream_idle_timeout: trellis_api::Duration,
    /// How long a drain (SIGTERM, /shutdown) waits for in-flight requests before exiting anyway.
    #[arg(long, default_value = "30s")]
    pub drain_timeout: trellis_api::Duration,
    /// Worker threads; 0 (the default) uses one per CPU, as an ingress usually should.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Largest accepted request head (request line and headers), in bytes.
    #[arg(long, default_value_t = 65536)]
    pub max_header_bytes: usize,
    /// The control plane's join token (sent on its API and xDS stream).
    #[command(flatten)]
    pub auth: crate::ctl::TokenArgs,
}

pub fn options(args: GatewayArgs) -> anyhow::Result<GatewayOptions> {
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.gateway, std::process::id()));
    let service_account = args
        .service_account
        .clone()
        .unwrap_or_else(|| args.gateway.clone());
    let defaults = Settings::default();
    Ok(GatewayOptions {
        control: ControlSource {
            endpoints: args.control.clone(),
            node_id,
            register: None,
            lease_ttl: std::time::Duration::from_secs(10),
            token: args.auth.resolve()?,
            on_demand: None,
        },
        gateway: args.gateway,
        namespace: args.namespace,
        service_account,
        address: args.address,
        admin: args.admin,
        cert_dir: args.cert_dir,
        settings: Settings {
            detect_timeout: args.detect_timeout.as_std(),
            connect_timeout: args.connect_timeout.as_std(),
            idle_timeout: args.idle_timeout.as_std(),
            header_read_timeout: args.header_read_timeout.as_std(),
            upstream_idle_timeout: args.upstream_idle_timeout.as_std(),
            drain_timeout: args.drain_timeout.as_std(),
            max_header_bytes: args.max_header_bytes,
            ..defaults
        },
    })
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let opts = options(args)?;
    let (gateway, identity) = (opts.gateway.clone(), opts.service_account.clone());
    let namespace = opts.namespace.clone();
    trellis_proxy::gateway::run(opts, crate::proxy_cmd::shutdown_signal(), |admin| {
        println!(
            "trellis gateway for Gateway {namespace}/{gateway} (identity ns/{namespace}/sa/{identity}) started: admin={admin}; listeners follow the Gateway's config"
        );
    })
    .await?;
    Ok(())
}
