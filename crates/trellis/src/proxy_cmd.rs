//! `trellis proxy`: command-line flags to [`trellis_proxy::ProxyOptions`], signals to drain.
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use trellis_proxy::settings::{LocalIdentity, Settings};
use trellis_proxy::{ConfigSource, ControlSource, ProxyOptions, TlsFiles, UpstreamPort};

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Mesh config (multi-document YAML); watched, and re-applied when it changes.
    #[arg(long, required_unless_present = "control", conflicts_with = "control")]
    pub config: Option<PathBuf>,
    /// Control-plane replicas to take config from over xDS (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
    pub control: Vec<String>,
    /// This proxy's name on the control plane (default: SERVICE-PID).
    #[arg(long)]
    pub node_id: Option<String>,
    /// Labels of this instance (`version=v2`), for subsets; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Address peers reach this instance's inbound listener on (default: the inbound IP, or
    /// 127.0.0.1 when it listens on all addresses).
    #[arg(long)]
    pub advertise: Option<std::net::IpAddr>,
    /// Lease TTL asked for when registering with the control plane.
    #[arg(long, default_value = "10s")]
    pub lease_ttl: trellis_api::Duration,
    /// Discover services on demand: hold config only for the services the app calls, each
    /// fetched from the control plane the first time it is called (default: every service this
    /// proxy may call, pushed ahead of time).
    #[arg(long, requires = "control")]
    pub on_demand: bool,
    /// How long a first call to a service waits for on-demand discovery before it is answered
    /// `503 trellis-error: discovery-timeout`.
    #[arg(long, default_value = "5s")]
    pub discovery_timeout: trellis_api::Duration,
    /// The service this sidecar stands beside.
    #[arg(long)]
    pub service: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long)]
    pub zone: Option<String>,
    /// Outbound listener routed by `Host` / `:authority`; `off` disables it.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: String,
    /// A local port bound to one upstream: `SERVICE[:PORT]=[ADDR:]LOCALPORT` (repeatable).
    #[arg(long = "upstream", value_parser = parse_upstream)]
    pub upstreams: Vec<UpstreamPort>,
    /// Inbound listener; requires `--app`.
    #[arg(long, requires = "app")]
    pub inbound: Option<SocketAddr>,
    /// The local application the inbound listener forwards to.
    #[arg(long, requires = "inbound")]
    pub app: Option<SocketAddr>,
    /// Admin listener: /ready /live /metrics /config /shutdown.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Admin-port connections kept at most; beyond it the oldest one not serving a request is
    /// closed to make room (lowered at start to fit the open-files limit).
    #[arg(long, default_value_t = trellis_proxy::settings::DEFAULT_ADMIN_MAX_CONNECTIONS)]
    pub admin_max_connections: usize,
    /// How long an admin-port connection may take to send its request head.
    #[arg(long, default_value = "5s")]
    pub admin_header_read_timeout: trellis_api::Duration,
    /// How long protocol detection waits for the client's first bytes.
    #[arg(long, default_value = "5s")]
    pub detect_timeout: trellis_api::Duration,
    /// On an inbound port declared `tcp` in Permissive mTLS mode, how long a silent client may
    /// still turn out to be a mesh peer starting TLS before it is served as plaintext (so a
    /// server-first app greets at once). Mesh peers send their ClientHello right after
    /// connecting; raise it only on a machine so loaded that they do not.
    #[arg(long, default_value = "50ms")]
    pub tls_detect_timeout: trellis_api::Duration,
    #[arg(long, default_value = "5s")]
    pub connect_timeout: trellis_api::Duration,
    /// How long a client's HTTP connection to this sidecar (inbound or outbound) may stay with
    /// no request in flight before the sidecar closes it (Envoy's default: 1 h). Keep it longer
    /// than your clients' keep-alive pools hold idle connections.
    #[arg(long, default_value = "1h")]
    pub idle_timeout: trellis_api::Duration,
    /// How long a new HTTP/1 connection may take to send its first request head.
    #[arg(long, default_value = "30s")]
    pub header_read_timeout: trellis_api::Duration,
    /// How long a connection from this sidecar to an upstream (a peer sidecar, or the app) stays
    /// open with no request in flight (Envoy's default: 1 h).
    #[arg(long, default_value = "1h")]
    pub upstream_idle_timeout: trellis_api::Duration,
    /// How long a drain waits for in-flight requests before exiting anyway.
    #[arg(long, default_value = "30s")]
    pub drain_timeout: trellis_api::Duration,
    /// How often the config file is checked for changes.
    #[arg(long, default_value = "500ms")]
    pub watch_interval: trellis_api::Duration,
    /// Worker threads. 1 (the default) runs everything on one thread, as light as a sidecar
    /// should be; 0 uses one per CPU.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Largest accepted request head (request line and headers), in bytes.
    #[arg(long, default_value_t = 65536)]
    pub max_header_bytes: usize,
    /// The control plane's join token (sent on its API and xDS stream).
    #[command(flatten)]
    pub auth: crate::ctl::TokenArgs,
    /// mTLS certificate chain (PEM, leaf first, SPIFFE URI SAN) for a proxy on a static
    /// `--config`; a proxy on a control plane gets its certificate from the CA.
    #[arg(long, requires_all = ["tls_key", "tls_trust"], conflicts_with = "control")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The roots (PEM) peers' certificates must chain to.
    #[arg(long, requires = "tls_cert")]
    pub tls_trust: Option<PathBuf>,
    /// Answer DNS here (UDP and TCP): mesh names (`svc`, `svc.ns`, `svc.ns.svc.DOMAIN`) get
    /// their service's virtual IP, other names are relayed to the host's resolvers. Off by
    /// default; `--intercept` sends the app's port-53 traffic to it.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns: Option<SocketAddr>,
    /// Resolvers for names outside the mesh (comma-separated IPs or IP:PORTs); default: the
    /// `nameserver` lines of /etc/resolv.conf.
    #[arg(long, value_delimiter = ',', requires = "dns", value_parser = parse_resolver)]
    pub dns_upstream: Vec<SocketAddr>,
    /// How long one upstream resolver may take to answer before the next is asked.
    #[arg(long, default_value = "2s", requires = "dns")]
    pub dns_timeout: trellis_api::Duration,
    /// Capture the host's (or network namespace's) traffic with iptables: outbound TCP to
    /// `--intercept-listen`, inbound TCP to `--inbound`, port 53 to `--dns`. Needs root (or
    /// CAP_NET_ADMIN); the rules are removed when the proxy stops.
    #[arg(long)]
    pub intercept: bool,
    /// Where captured outbound connections arrive.
    #[arg(long, default_value = "127.0.0.1:15002", requires = "intercept")]
    pub intercept_listen: SocketAddr,
    /// Outbound TCP ports never captured (comma-separated); the control plane's ports always.
    #[arg(long, value_delimiter = ',', requires = "intercept")]
    pub intercept_exclude_ports: Vec<u16>,
    /// Inbound TCP ports never captured (comma-separated); the admin port always.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "22",
        requires = "intercept"
    )]
    pub intercept_exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations never captured (comma-separated IPv4 CIDRs).
    #[arg(long, value_delimiter = ',', requires = "intercept")]
    pub intercept_exclude_cidrs: Vec<trellis_api::Ipv4Cidr>,
    /// SO_MARK on the proxy's own sockets, which the rules let out (hex or decimal).
    #[arg(long, default_value = "0x1337", value_parser = parse_mark, requires = "intercept")]
    pub intercept_mark: u32,
    /// The iptables program (Debian's, nft backend).
    #[arg(long, default_value = "iptables")]
    pub iptables: PathBuf,
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    match parsed {
        Ok(0) => Err("mark must not be 0 (unmarked sockets have mark 0)".into()),
        Ok(m) => Ok(m),
        Err(_) => Err(format!("expected a number like 0x1337, got {s:?}")),
    }
}

/// The ports of the control-plane URLs (`http://host:port`; 80 when absent).
fn control_ports(endpoints: &[String]) -> anyhow::Result<Vec<u16>> {
    endpoints
        .iter()
        .map(|e| {
            let uri: http::Uri = e
                .parse()
                .with_context(|| format!("--control {e:?} is not a URL"))?;
            Ok(uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            }))
        })
        .collect()
}

/// `--intercept` and its exclusions (the control plane's ports always among them).
fn capture_options(args: &ProxyArgs) -> anyhow::Result<Option<trellis_proxy::CaptureOptions>> {
    if !args.intercept {
        return Ok(None);
    }
    let mut exclude = args.intercept_exclude_ports.clone();
    exclude.extend(control_ports(&args.control)?);
    Ok(Some(trellis_proxy::CaptureOptions {
        listen: args.intercept_listen,
        iptables: args.iptables.clone(),
        mark: args.intercept_mark,
        exclude_outbound_ports: exclude,
        exclude_inbound_ports: args.intercept_exclude_inbound_ports.clone(),
        exclude_cidrs: args.intercept_exclude_cidrs.clone(),
    }))
}

fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("expected IP or IP:PORT, got {s:?}"))
}

/// `--dns` and its upstreams: the flags, else /etc/resolv.conf.
fn dns_options(args: &ProxyArgs) -> anyhow::Result<Option<trellis_proxy::dns::DnsOptions>> {
    let Some(listen) = args.dns else {
        return Ok(None);
    };
    let upstreams = if args.dns_upstream.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        trellis_proxy::dns::host_resolvers(&text)
    } else {
        args.dns_upstream.clone()
    };
    let mut opts = trellis_proxy::dns::DnsOptions::new(listen, upstreams);
    opts.timeout = args.dns_timeout.as_std();
    Ok(Some(opts))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The Workload a sidecar registers for its instance.
fn workload(args: &ProxyArgs, node_id: &str) -> Option<trellis_api::Workload> {
    let inbound = args.inbound?;
    let ip = args.advertise.unwrap_or(if inbound.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        inbound.ip()
    });
    let mut metadata = trellis_api::ObjectMeta::new(node_id.to_string());
    metadata.namespace = args.namespace.clone();
    metadata.labels = args.labels.iter().cloned().collect();
    metadata
        .labels
        .entry("app".into())
        .or_insert_with(|| args.service.clone());
    Some(trellis_api::Workload {
        metadata,
        spec: trellis_api::service::WorkloadSpec {
            service: Some(args.service.clone()),
            address: ip.to_string(),
            port: inbound.port(),
            app_port: args.app.map(|a| a.port()),
            zone: args.zone.clone(),
            identity: None,
            health: trellis_api::service::WorkloadHealth::Healthy,
            weight: None,
        },
    })
}

fn parse_upstream(s: &str) -> Result<UpstreamPort, String> {
    let (target, listen) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE[:PORT]=[ADDR:]LOCALPORT, got {s:?}"))?;
    let (service, port) = match target.split_once(':') {
        Some((svc, p)) => (
            svc,
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("bad service port {p:?} in {s:?}"))?,
            ),
        ),
        None => (target, None),
    };
    if service.is_empty() {
        return Err(format!("missing service name in {s:?}"));
    }
    let listen: SocketAddr = match listen.parse::<u16>() {
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => listen
            .parse()
            .map_err(|_| format!("bad local listen address {listen:?} in {s:?}"))?,
    };
    Ok(UpstreamPort {
        service: service.to_string(),
        port,
        listen,
    })
}

pub fn options(args: ProxyArgs) -> anyhow::Result<ProxyOptions> {
    let dns = dns_options(&args)?;
    let capture = capture_options(&args)?;
    let outbound =
        if args.outbound == "off" {
            None
        } else {
            Some(args.outbound.parse().with_context(|| {
                format!("--outbound {:?} is not ADDR:PORT or off", args.outbound)
            })?)
        };
    let source = match &args.config {
        Some(path) => ConfigSource::File {
            path: path.clone(),
            watch_interval: args.watch_interval.as_std(),
        },
        None => {
            let node_id = args
                .node_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", args.service, std::process::id()));
            ConfigSource::Control(Box::new(ControlSource {
                endpoints: args.control.clone(),
                register: workload(&args, &node_id),
                node_id,
                lease_ttl: args.lease_ttl.as_std(),
                token: args.auth.resolve()?,
                on_demand: args.on_demand.then(|| args.discovery_timeout.as_std()),
            }))
        }
    };
    Ok(ProxyOptions {
        source,
        identity: LocalIdentity {
            service: args.service,
            namespace: args.namespace,
            zone: args.zone,
        },
        settings: Settings {
            detect_timeout: args.detect_timeout.as_std(),
            tls_detect_timeout: args.tls_detect_timeout.as_std(),
            connect_timeout: args.connect_timeout.as_std(),
            idle_timeout: args.idle_timeout.as_std(),
            header_read_timeout: args.header_read_timeout.as_std(),
            upstream_idle_timeout: args.upstream_idle_timeout.as_std(),
            drain_timeout: args.drain_timeout.as_std(),
            max_header_bytes: args.max_header_bytes,
            admin_max_connections: args.admin_max_connections,
            admin_header_read_timeout: args.admin_header_read_timeout.as_std(),
        },
        outbound,
        upstreams: args.upstreams,
        inbound: args.inbound.zip(args.app),
        admin: args.admin,
        tls_files: match (args.tls_cert, args.tls_key, args.tls_trust) {
            (Some(cert), Some(key), Some(trust)) => Some(TlsFiles { cert, key, trust }),
            _ => None,
        },
        dns,
        capture,
    })
}

pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let opts = options(args)?;
    let service = opts.identity.service.clone();
    trellis_proxy::run(opts, shutdown_signal(), |bound| {
        println!(
            "trellis proxy for {service} listening (ready once config is in force; see /ready): admin={} outbound={} inbound={} upstreams={:?} dns={}",
            bound.admin,
            bound
                .outbound
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            bound
                .inbound
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            bound.upstreams,
            bound
                .dns
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
        );
    })
    .await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_flags() {
        let u = parse_upstream("reviews=9001").unwrap();
        assert_eq!(u.service, "reviews");
        assert_eq!(u.port, None);
        assert_eq!(u.listen, "127.0.0.1:9001".parse().unwrap());
        let u = parse_upstream("db:5432=0.0.0.0:15432").unwrap();
        assert_eq!(u.port, Some(5432));
        assert!(parse_upstream("reviews").is_err());
        assert!(parse_upstream("=9001").is_err());
        assert!(parse_upstream("a:x=1").is_err());
    }

    #[test]
    fn capture_flags() {
        assert_eq!(parse_mark("0x1337"), Ok(0x1337));
        assert_eq!(parse_mark("4919"), Ok(0x1337));
        assert!(parse_mark("0").unwrap_err().contains("must not be 0"));
        assert!(parse_mark("0xzz").is_err());
        let ports = control_ports(&["http://10.0.0.1:15010".into(), "https://cp".into()]).unwrap();
        assert_eq!(ports, [15010, 443]);
        assert!(control_ports(&["not a url".into()]).is_err());
    }

    #[test]
    fn resolver_flags() {
        assert_eq!(
            parse_resolver("10.0.0.2"),
            Ok("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            parse_resolver("10.0.0.2:5353"),
            Ok("10.0.0.2:5353".parse().unwrap())
        );
        assert_eq!(parse_resolver("[::1]:53"), Ok("[::1]:53".parse().unwrap()));
        assert!(parse_resolver("resolver.local").is_err());
    }
}
