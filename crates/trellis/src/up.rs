//! `trellis up MESH.yaml`: a whole mesh on one machine with nothing to install. The control plane
//! runs in-process on an embedded store; the manifest's resources are applied to it; every replica
//! of every `Deployment` becomes a demo-app process with its own sidecar, which registers its
//! workload itself; one more sidecar is the user's way in (a `Host`-routed port plus one local
//! port per service). Saving the manifest re-applies it: changed resources are pushed to every
//! sidecar, removed ones deleted.
//!
//! With `--hosts` every instance runs in a network namespace of its own, a "host" on a bridge
//! (see [`hosts`] for the topology and why), and its sidecar captures the host's traffic
//! (`--intercept --dns`), so an app calls `http://ratings:9080/` unchanged. The control plane
//! and the entry sidecar stay in the root namespace; the control plane listens on the root
//! namespace's port on the bridge, which every host reaches.
use anyhow::{bail, Context};
use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use trellis_api::{Resource, ResourceSet};

pub mod hosts;

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// The mesh manifest: Services, Deployments, Routes, DestinationPolicies, ...
    pub file: PathBuf,
    /// Your way in, routed by `Host`: `curl -H 'Host: SERVICE' http://ADDR/`.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Admin port of the entry sidecar (metrics, config).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// First local port of the per-service ports (one per service, in manifest order); 0 picks
    /// free ports.
    #[arg(long, default_value_t = 9001)]
    pub upstream_base: u16,
    /// Where the generated config and process logs go (a fresh temporary folder by default).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Stop everything after this long (for scripted demos and tests).
    #[arg(long)]
    pub exit_after: Option<trellis_api::Duration>,
    /// The in-process control plane's API and xDS address (with --hosts: its port, on the
    /// root namespace's address on the hosts' bridge).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub control: SocketAddr,
    /// Run every instance in a network namespace of its own, `trellis-<instance>`, on a
    /// bridge, its sidecar capturing its traffic (`--intercept --dns`): apps call
    /// `http://SERVICE:PORT/` unchanged. Needs root, `ip` and `iptables`; everything it
    /// creates is removed on exit (or, after a kill -9, by the next start).
    #[arg(long)]
    pub hosts: bool,
    /// The hosts' subnet with --hosts: the root namespace (and the control plane) at .1, the
    /// instances from .10 on, in manifest order.
    #[arg(long, default_value = "10.78.0.0/24")]
    pub hosts_subnet: trellis_api::Ipv4Cidr,
}

/// One replica: its app and sidecar ports.
struct Instance {
    name: String,
    service: String,
    labels: BTreeMap<String, String>,
    zone: Option<String>,
    version: String,
    latency: Option<trellis_api::Duration>,
    error_rate: f64,
    app: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    /// With --hosts: the instance's own network namespace.
    host: Option<hosts::Host>,
}

/// Ports of a sidecar on its own host (`--hosts`), the same on every host.
const HOST_INBOUND_PORT: u16 = 15006;
const HOST_ADMIN_PORT: u16 = 15000;
const HOST_DNS_PORT: u16 = 15053;

/// What [`start_mesh`] leaves running, and what the banner and the manifest watch need.
struct Running {
    /// The control plane's URL.
    control: String,
    /// Stops the in-process control plane when sent (or dropped).
    stop_control: tokio::sync::oneshot::Sender<()>,
    api: crate::ctl::Api,
    applied: BTreeSet<(String, String, String)>,
    services: Vec<String>,
    upstream_ports: Vec<SocketAddr>,
    /// A one-time login link to the dashboard (`None` when the dashboard is off).
    dashboard: Option<String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    use futures_util::FutureExt;
    // What --hosts needs is checked first, before anything is made.
    let tools = args.hosts.then(hosts::require).transpose()?;
    let manifest = read_manifest(&args.file)?;
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("trellis-up-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let mut instances = plan(&manifest)?;
    // Ctrl-C and SIGTERM are taken from here on (the first poll installs the handlers), so a
    // stop while the mesh starts still removes what was made.
    let mut shutdown = Box::pin(crate::proxy_cmd::shutdown_signal());
    if (&mut shutdown).now_or_never().is_some() {
        return Ok(());
    }
    let mut network = match &tools {
        Some(tools) => Some(place_on_hosts(tools, &args, &manifest, &mut instances)?),
        None => None,
    };
    let mut children = Vec::new();
    let started = tokio::select! {
        r = start_mesh(&args, &work, &manifest, &instances, network.as_ref(), &mut children) => Some(r),
        _ = &mut shutdown => None,
    };
    let running = match started {
        Some(Ok(running)) => running,
        Some(Err(e)) => {
            stop_all(&mut children).await;
            return Err(e);
        }
        None => {
            println!("stopping the mesh");
            stop_all(&mut children).await;
            return Ok(());
        }
    };
    print_banner(&args, &work, &running, &instances, network.as_ref());
    let Running {
        stop_control,
        api,
        mut applied,
        ..
    } = running;
    let file = args.file.clone();
    let watch = tokio::spawn(async move { watch_manifest(&file, &api, &mut applied).await });
    let until = async {
        match args.exit_after {
            Some(d) => tokio::time::sleep(d.as_std()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = &mut shutdown => {}
        _ = until => {}
    }
    watch.abort();
    println!("stopping the mesh");
    stop_all(&mut children).await;
    let _ = stop_control.send(());
    if let Some(n) = network.as_mut() {
        n.teardown();
    }
    Ok(())
}

/// Builds the hosts' network (`--hosts`) and moves every instance onto its own host: the app on
/// its service's first port on the host's loopback (as on a machine of its own), the sidecar's
/// inbound on every address (captured inbound connections arrive there) and its admin port on
/// the host's address, where `up` (in the root namespace) checks it.
fn place_on_hosts(
    tools: &hosts::Tools,
    args: &UpArgs,
    manifest: &ResourceSet,
    instances: &mut [Instance],
) -> anyhow::Result<hosts::Network> {
    let names: Vec<String> = instances.iter().map(|i| i.name.clone()).collect();
    let network = hosts::Network::build(tools, args.hosts_subnet, &names)?;
    for (inst, host) in instances.iter_mut().zip(&network.hosts) {
        inst.app = SocketAddr::from(([127, 0, 0, 1], service_port(manifest, &inst.service)?));
        inst.inbound = SocketAddr::from(([0, 0, 0, 0], HOST_INBOUND_PORT));
        inst.admin = SocketAddr::new(host.addr.into(), HOST_ADMIN_PORT);
        inst.host = Some(host.clone());
    }
    Ok(network)
}

/// The first port a Service declares (its default port).
fn service_port(manifest: &ResourceSet, service: &str) -> anyhow::Result<u16> {
    manifest
        .services()
        .find(|s| s.metadata.name == service)
        .and_then(|s| s.spec.ports.first())
        .map(|p| p.port)
        .with_context(|| format!("Service {service:?} declares no port"))
}

/// Starts the control plane, applies the manifest and starts every process, into `children`.
async fn start_mesh(
    args: &UpArgs,
    work: &Path,
    manifest: &ResourceSet,
    instances: &[Instance],
    network: Option<&hosts::Network>,
    children: &mut Vec<Child>,
) -> anyhow::Result<Running> {
    // A fresh join token per run: the control plane requires it, the sidecars present it.
    let token = format!("{:032x}", rand::random::<u128>());
    let listen = match network {
        Some(n) => SocketAddr::new(n.root_addr.into(), args.control.port()),
        None => args.control,
    };
    let (control, stop_control) = start_control(listen, work, &token).await?;
    let api = crate::ctl::Api::new(&crate::ctl::ControlArgs {
        control: control.clone(),
    })
    .with_token(Some(&token))?;
    let applied = apply_manifest(&api, &args.file, manifest, &BTreeSet::new()).await?;
    let services: Vec<String> = manifest
        .services()
        .map(|s| s.metadata.name.clone())
        .collect();
    let upstream_ports = entry_ports(args.upstream_base, services.len())?;
    start_all(
        args,
        work,
        (&control, &token),
        (instances, network),
        &services,
        &upstream_ports,
        children,
    )
    .await?;
    let dashboard = dashboard_link(&api, &control).await;
    Ok(Running {
        control,
        stop_control,
        api,
        applied,
        services,
        upstream_ports,
        dashboard,
    })
}

/// A one-time login link to the in-process control plane's dashboard; `None` when it is off
/// (with `--hosts` the control plane listens on the bridge, not on loopback).
async fn dashboard_link(api: &crate::ctl::Api, control: &str) -> Option<String> {
    let v = api
        .call(http::Method::POST, "/dashboard/api/login-codes", None)
        .await
        .ok()?;
    Some(format!("{control}{}", v["path"].as_str()?))
}

/// Starts the control plane in this process on an embedded store under `work`.
async fn start_control(
    listen: SocketAddr,
    work: &Path,
    token: &str,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let opts = trellis_control::server::ControlOptions {
        listen,
        store: trellis_control::StoreSpec::Embedded {
            data_dir: work.join("control"),
        },
        lease_ttl: Duration::from_secs(5),
        join_token: Some(token.to_string()),
        join_token_file: Some(work.join("join-token")),
        ca: None,
        connections: Default::default(),
        max_apply_documents: None,
        dashboard: Default::default(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        let result = trellis_control::server::run(opts, shutdown, |addr| {
            let _ = ready_tx.send(addr);
        })
        .await;
        if let Err(e) = result {
            eprintln!("control plane: {e}");
        }
    });
    let addr = ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("the control plane did not start (is {listen} free?)"))?;
    Ok((format!("http://{addr}"), stop_tx))
}

/// Applies the manifest (all but Deployments) and deletes what an earlier version had and this
/// one does not. Returns the keys now applied.
async fn apply_manifest(
    api: &crate::ctl::Api,
    file: &Path,
    manifest: &ResourceSet,
    before: &BTreeSet<(String, String, String)>,
) -> anyhow::Result<BTreeSet<(String, String, String)>> {
    let set = ResourceSet {
        resources: manifest
            .resources
            .iter()
            .filter(|r| !matches!(r, Resource::Deployment(_)))
            .cloned()
            .collect(),
    };
    let keys: BTreeSet<(String, String, String)> = set
        .resources
        .iter()
        .map(|r| {
            let m = r.metadata();
            (r.kind().to_string(), m.namespace.clone(), m.name.clone())
        })
        .collect();
    let path = format!("/api/v1/apply?file={}", file.display());
    api.call(http::Method::POST, &path, Some(set.to_yaml()))
        .await?;
    for (kind, ns, name) in before.difference(&keys) {
        let path = format!("/api/v1/resources/{kind}/{ns}/{name}");
        api.call(http::Method::DELETE, &path, None).await?;
    }
    Ok(keys)
}

fn read_manifest(path: &Path) -> anyhow::Result<ResourceSet> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    Ok(trellis_api::parse_documents(&name, &text)?)
}

/// A free loopback port, chosen by the kernel, never one already handed out by this process
/// (the kernel may offer a just-released port again).
fn free_port() -> anyhow::Result<SocketAddr> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        // Below Linux's ephemeral range (32768..), so an outgoing connection cannot take the
        // port between now and the moment a sidecar binds it.
        let port = rand::random_range(20_000..32_768);
        let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let addr = l.local_addr()?;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return Ok(addr);
        }
    }
    bail!("cannot find a free port not already in use by this mesh")
}

fn entry_ports(base: u16, n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    (0..n)
        .map(|i| {
            if base == 0 {
                free_port()
            } else {
                let port = base
                    .checked_add(i as u16)
                    .context("--upstream-base too high for the number of services")?;
                Ok(SocketAddr::from(([127, 0, 0, 1], port)))
            }
        })
        .collect()
}

fn plan(manifest: &ResourceSet) -> anyhow::Result<Vec<Instance>> {
    let mut out = Vec::new();
    for d in manifest.deployments() {
        let spec = &d.spec;
        if !manifest.services().any(|s| s.metadata.name == spec.service) {
            bail!(
                "Deployment {:?}: spec.service {:?} names no Service in the manifest",
                d.metadata.name,
                spec.service
            );
        }
        for i in 0..spec.replicas {
            let mut labels = spec.labels.clone();
            labels
                .entry("app".into())
                .or_insert_with(|| spec.service.clone());
            let version = spec
                .demo_app
                .version
                .clone()
                .or_else(|| labels.get("version").cloned())
                .unwrap_or_else(|| "v1".into());
            out.push(Instance {
                name: format!("{}-{i}", d.metadata.name),
                service: spec.service.clone(),
                labels,
                zone: spec.zone.clone(),
                version,
                latency: spec.demo_app.latency,
                error_rate: spec.demo_app.error_rate,
                app: free_port()?,
                inbound: free_port()?,
                admin: free_port()?,
                host: None,
            });
        }
    }
    if out.is_empty() {
        bail!("the manifest has no Deployment: nothing to start");
    }
    Ok(out)
}

/// Starts `trellis ARGS`, inside `host`'s namespace when there is one, logging to
/// `work/LOG_NAME.log`.
fn spawn(
    work: &Path,
    log_name: &str,
    host: Option<(&hosts::Network, &hosts::Host)>,
    args: &[String],
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the trellis executable")?;
    let log = std::fs::File::create(work.join(format!("{log_name}.log")))?;
    let err = log.try_clone()?;
    let mut cmd = match host {
        Some((network, host)) => network.command(host, &exe),
        None => Command::new(exe),
    };
    cmd.args(args)
        .env("TRELLIS_TOKEN_FILE", work.join("join-token"))
        .env_remove("TRELLIS_TOKEN")
        // Gone with `up`, even when `up` is killed with SIGKILL.
        .env(crate::orphan::ENV, "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {log_name}"))
}

async fn start_all(
    args: &UpArgs,
    work: &Path,
    (control, token): (&str, &str),
    (instances, network): (&[Instance], Option<&hosts::Network>),
    services: &[String],
    upstream_ports: &[SocketAddr],
    children: &mut Vec<Child>,
) -> anyhow::Result<()> {
    let mut admins = Vec::new();
    for inst in instances {
        let mut app = vec![
            "demo-app".into(),
            format!("--listen={}", inst.app),
            format!("--name={}", inst.service),
            format!("--version={}", inst.version),
            format!("--instance={}", inst.name),
            format!("--error-rate={}", inst.error_rate),
        ];
        if let Some(l) = inst.latency {
            app.push(format!("--latency={l}"));
        }
        let host = network.zip(inst.host.as_ref());
        children.push(spawn(work, &inst.name, host, &app)?);
        let mut proxy = vec![
            "proxy".into(),
            format!("--control={control}"),
            format!("--node-id={}", inst.name),
            format!("--service={}", inst.service),
            "--outbound=off".into(),
            format!("--inbound={}", inst.inbound),
            format!("--app={}", inst.app),
            format!("--admin={}", inst.admin),
            "--lease-ttl=5s".into(),
        ];
        for (k, v) in &inst.labels {
            proxy.push(format!("--label={k}={v}"));
        }
        if let Some(z) = &inst.zone {
            proxy.push(format!("--zone={z}"));
        }
        if let Some((network, h)) = host {
            // On its own host the sidecar captures the app's traffic and answers its DNS.
            proxy.extend([
                format!("--advertise={}", h.addr),
                "--intercept".into(),
                format!("--dns=127.0.0.1:{HOST_DNS_PORT}"),
                format!("--iptables={}", network.iptables().display()),
            ]);
        }
        children.push(spawn(work, &format!("{}-proxy", inst.name), host, &proxy)?);
        admins.push(inst.admin);
    }
    let mut entry = vec![
        "proxy".into(),
        format!("--control={control}"),
        "--node-id=entry".into(),
        "--service=trellis-up-entry".into(),
        format!("--outbound={}", args.outbound),
        format!("--admin={}", args.admin),
    ];
    for (svc, port) in services.iter().zip(upstream_ports) {
        entry.push(format!("--upstream={svc}={port}"));
    }
    children.push(spawn(work, "entry-proxy", None, &entry)?);
    admins.push(args.admin);
    for admin in admins {
        wait_ready(admin, children, work).await?;
    }
    wait_registered(control, token, args.admin, instances.len()).await?;
    // A port taken by another program between choosing it and binding it makes a sidecar exit,
    // while whoever holds the port may answer in its place: the banner only once every process
    // is still running and the entry listener takes connections.
    all_running(children, work)?;
    tokio::net::TcpStream::connect(args.outbound)
        .await
        .with_context(|| {
            format!(
                "the entry sidecar's outbound listener {} does not take connections; see the logs in {}",
                args.outbound,
                work.display()
            )
        })?;
    Ok(())
}

/// An error naming the first mesh process that has exited.
fn all_running(children: &mut [Child], work: &Path) -> anyhow::Result<()> {
    for c in children.iter_mut() {
        if let Ok(Some(status)) = c.try_wait() {
            bail!(
                "a mesh process exited early ({status}); see the logs in {}",
                work.display()
            );
        }
    }
    Ok(())
}

/// Waits (bounded: 20 s) until every instance has registered and the entry sidecar holds all
/// their endpoints, so the first request after the banner reaches every version.
async fn wait_registered(
    control: &str,
    token: &str,
    entry_admin: SocketAddr,
    instances: usize,
) -> anyhow::Result<()> {
    let api = crate::ctl::Api::new(&crate::ctl::ControlArgs {
        control: control.to_string(),
    })
    .with_token(Some(token))?;
    let entry = crate::ctl::Api::new(&crate::ctl::ControlArgs {
        control: format!("http://{entry_admin}"),
    });
    for _ in 0..400 {
        let registered = api
            .call(http::Method::GET, "/api/v1/resources?kind=Workload", None)
            .await
            .map(|v| v["items"].as_array().map_or(0, |a| a.len()))
            .unwrap_or(0);
        let held = entry
            .call(http::Method::GET, "/config", None)
            .await
            .map(|v| {
                v["services"].as_array().map_or(0, |s| {
                    s.iter()
                        .map(|svc| svc["endpoints"].as_array().map_or(0, |e| e.len()))
                        .sum()
                })
            })
            .unwrap_or(0);
        if registered >= instances && held >= instances {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("not every instance registered with the control plane within 20 s")
}

/// Polls a sidecar's `/ready` until it answers 200 (bounded: 20 s).
async fn wait_ready(admin: SocketAddr, children: &mut [Child], work: &Path) -> anyhow::Result<()> {
    for _ in 0..400 {
        if ready(admin).await {
            return Ok(());
        }
        all_running(children, work)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "sidecar with admin {admin} not ready after 20 s; see the logs in {}",
        work.display()
    )
}

async fn ready(admin: SocketAddr) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf)).await;
    matches!(read, Ok(Ok(_)))
        && (buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"))
}

async fn stop_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.start_kill();
    }
    for c in children.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
}

fn print_banner(
    args: &UpArgs,
    work: &Path,
    running: &Running,
    instances: &[Instance],
    network: Option<&hosts::Network>,
) {
    println!("Trellis mesh from {} is up.", args.file.display());
    println!();
    for (svc, port) in running.services.iter().zip(&running.upstream_ports) {
        let versions: Vec<String> = instances
            .iter()
            .filter(|i| &i.service == svc)
            .map(|i| format!("{} ({})", i.name, i.version))
            .collect();
        println!("  {svc}: {}", versions.join(", "));
        println!("    curl http://{port}/");
        println!("    curl -H 'Host: {svc}' http://{}/", args.outbound);
    }
    println!();
    if let Some(network) = network {
        print_hosts(network, instances);
    }
    println!("  metrics: curl http://{}/metrics", args.admin);
    println!("  config:  curl http://{}/config", args.admin);
    println!("  logs and control-plane data: {}", work.display());
    println!(
        "  control plane: export TRELLIS_CONTROL={} TRELLIS_TOKEN_FILE={}",
        running.control,
        work.join("join-token").display()
    );
    match &running.dashboard {
        Some(link) => {
            println!("  dashboard: {}/dashboard/", running.control);
            println!("    log in once with {link}");
            println!("    (or the token in the file above; `trellis dashboard` makes a new link)");
        }
        None => println!("  dashboard: off (the control plane is not on a loopback address)"),
    }
    println!("  sidecars call each other over mTLS (see \"tls\" in any sidecar's /config)");
    println!();
    println!(
        "Edit {} and save: routes and policies are re-applied live. Ctrl-C stops the mesh.",
        args.file.display()
    );
    println!("trellis up: ready");
}

/// The hosts of `--hosts`: namespace, address, instance, and a command to paste.
fn print_hosts(network: &hosts::Network, instances: &[Instance]) {
    println!(
        "  hosts: one network namespace per instance, on bridge {} (this machine: {})",
        network.subnet, network.root_addr
    );
    for inst in instances {
        if let Some(h) = &inst.host {
            println!(
                "    {:<24} {:<15} {} {}, sidecar admin http://{}/",
                h.ns, h.addr, inst.service, inst.version, inst.admin
            );
        }
    }
    // The first host calling another service, by name, as an unchanged app would.
    let Some((inst, host)) = instances
        .iter()
        .find_map(|i| i.host.as_ref().map(|h| (i, h)))
    else {
        return;
    };
    let target = instances
        .iter()
        .find(|i| i.service != inst.service)
        .unwrap_or(inst);
    println!("  apps call services by name, unchanged; their sidecars capture the calls:");
    println!(
        "    ip netns exec {} curl http://{}:{}/",
        host.ns,
        target.service,
        target.app.port()
    );
    println!();
}

/// Re-applies the manifest whenever it changes and still validates.
async fn watch_manifest(
    file: &Path,
    api: &crate::ctl::Api,
    applied: &mut BTreeSet<(String, String, String)>,
) {
    let mut last = std::fs::read(file).ok();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let current = std::fs::read(file).ok();
        if current.is_none() || current == last {
            continue;
        }
        last = current;
        match read_manifest(file) {
            Ok(manifest) => match apply_manifest(api, file, &manifest, applied).await {
                Ok(keys) => {
                    *applied = keys;
                    println!("applied the changed {}", file.display());
                }
                Err(e) => eprintln!("cannot apply the change: {e:#}"),
            },
            Err(e) => eprintln!("change rejected, the mesh keeps its last good config:\n{e:#}"),
        }
    }
}
