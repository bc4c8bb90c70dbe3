//! Shared pieces of the end-to-end tests: real `trellis` processes on loopback, stopped by PID
//! when a test ends, and small HTTP clients.
#![allow(dead_code)]

pub mod mesh;
pub mod pki;
pub mod up;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis");
/// The sidecar-only binary; it takes `trellis proxy`'s flags without the `proxy` verb.
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_trellis-proxy");

/// The join token every process a test starts shares: the control plane requires it, and the
/// CLI and proxies present it (all read `TRELLIS_TOKEN`).
pub const TOKEN: &str = "test-join-token-0123456789abcdef";

/// A loopback port that was free a moment ago, never one this test process handed out before
/// (the kernel may offer a just-released port again). Taken below Linux's ephemeral range
/// (32768..), so the many outgoing connections of tests running beside it cannot take it
/// before the process it is meant for binds it.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = rand::random_range(20_000..32_768);
        let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let addr = l.local_addr().expect("local addr");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// A child process killed (by PID) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
        Self::spawn_program(dir, name, BIN, args)
    }

    /// Like [`Proc::spawn`], of another of the package's binaries.
    pub fn spawn_program(dir: &Path, name: &str, program: &str, args: &[String]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .env("TRELLIS_LOG", "info")
            .env("TRELLIS_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn trellis");
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM by PID via the `kill` utility (no unsafe code in tests).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits up to `limit` for exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "trellis-test-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

/// Blocks until `GET /ready` on `admin` answers 200 (bounded: 20 s).
pub async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((200, _)) = get_status(admin, "/ready").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("proxy with admin {admin} never became ready");
}

/// Waits until something accepts connections on `addr` (bounded: 20 s).
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listening on {addr}");
}

pub async fn get_status(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let rsp = http1()
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

pub type H1Client = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn http1() -> H1Client {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2() -> H1Client {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An answer reduced to what tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET http://{addr}{path}` with an optional `Host` and extra headers.
pub async fn get(
    client: &H1Client,
    addr: SocketAddr,
    host: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    if let Some(h) = host {
        req = req.header(http::header::HOST, h);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request failed");
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One service instance: a demo app and its sidecar.
pub struct Instance {
    pub app: Proc,
    pub sidecar: Proc,
    pub app_addr: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

/// Addresses of an instance, chosen before its config is written.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub app: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn free() -> Self {
        Self {
            app: free_addr(),
            inbound: free_addr(),
            admin: free_addr(),
        }
    }
}

/// Starts `demo-app` with `app_args` and a sidecar with an inbound listener in front of it.
/// The config file must already exist.
pub fn start_instance(
    dir: &Path,
    config: &Path,
    service: &str,
    instance: &str,
    app_args: &[&str],
    ports: Ports,
) -> Instance {
    let Ports {
        app: app_addr,
        inbound,
        admin,
    } = ports;
    let mut args = vec![
        "demo-app".to_string(),
        format!("--listen={app_addr}"),
        format!("--name={service}"),
        format!("--instance={instance}"),
    ];
    args.extend(app_args.iter().map(|s| s.to_string()));
    let app = Proc::spawn(dir, &format!("{instance}-app"), &args);
    let sidecar = Proc::spawn(
        dir,
        &format!("{instance}-proxy"),
        &[
            "proxy".into(),
            format!("--config={}", config.display()),
            format!("--service={service}"),
            "--outbound=off".into(),
            format!("--inbound={inbound}"),
            format!("--app={app_addr}"),
            format!("--admin={admin}"),
            "--detect-timeout=300ms".into(),
        ],
    );
    Instance {
        app,
        sidecar,
        app_addr,
        inbound,
        admin,
    }
}

/// The caller's sidecar: a Host-routed outbound port plus optional per-upstream ports.
pub struct Caller {
    pub proc: Proc,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
}

pub fn start_caller(dir: &Path, config: &Path, upstreams: &[&str]) -> Caller {
    start_caller_with(dir, config, upstreams, &["--detect-timeout=300ms".into()])
}

/// A Workload document for an instance.
pub fn workload(name: &str, service: &str, version: &str, addr: SocketAddr) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata:\n  name: {name}\n  labels:\n    app: {service}\n    version: {version}\nspec:\n  service: {service}\n  address: {}\n  port: {}\n",
        addr.ip(),
        addr.port()
    )
}

/// An `echo` instance (Workload `echo-0` with its sidecar, port declared `protocol`) and a
/// caller with a Host port and a per-upstream port to it, from one static manifest; `extra`
/// (more Workloads, a DestinationPolicy) goes between the Service and `echo-0`.
pub struct EchoPair {
    pub dir: PathBuf,
    pub instance: Instance,
    pub caller: Caller,
}

pub async fn echo_pair(tag: &str, protocol: &str, extra: &str, app_args: &[&str]) -> EchoPair {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let text = format!(
        "{}{extra}{}",
        service("echo", protocol),
        workload("echo-0", "echo", "v1", ports.inbound)
    );
    write_config(&config, &text);
    let instance = start_instance(&dir, &config, "echo", "echo-0", app_args, ports);
    let caller = start_caller(&dir, &config, &["echo"]);
    wait_ready(instance.admin).await;
    wait_ready(caller.admin).await;
    wait_listening(instance.app_addr).await;
    EchoPair {
        dir,
        instance,
        caller,
    }
}

/// A Service document.
pub fn service(name: &str, protocol: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n    - port: 80\n      protocol: {protocol}\n"
    )
}

/// Writes config atomically so a watching proxy never sees half a file.
pub fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

pub fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("metrics exposition must parse")
}

/// Sum of samples of `name` whose labels include all of `labels`.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Sum of a counter family's samples whose labels include all of `labels`, from `/metrics`.
pub async fn counter(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = get_status(admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    sample(&parse_metrics(&text), name, labels)
}

/// Blocks until a control plane's `/api/v1/health` answers 200 (bounded: 20 s).
pub async fn wait_api(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((200, _)) = get_status(addr, "/api/v1/health").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("control plane API at {addr} never answered");
}

/// A program that is not `trellis` (a third-party server, say), killed by PID when dropped.
pub struct External {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl External {
    /// Starts `program` with `args`, its output in `dir/<name>.log`.
    pub fn spawn(dir: &Path, name: &str, program: &str, args: &[&str]) -> External {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} (scripts/test.sh installs it): {e}")
            });
        External {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sidecar with an inbound listener in front of whatever listens on `ports.app`, with
/// `extra` flags added (they may repeat and so override the defaults here).
pub fn start_sidecar(
    dir: &Path,
    config: &Path,
    service: &str,
    ports: Ports,
    extra: &[String],
) -> Proc {
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        format!("--service={service}"),
        "--outbound=off".into(),
        format!("--inbound={}", ports.inbound),
        format!("--app={}", ports.app),
        format!("--admin={}", ports.admin),
    ];
    args.extend(extra.iter().cloned());
    Proc::spawn(dir, &format!("{service}-proxy"), &args)
}

/// A caller's sidecar like [`start_caller`], with `extra` flags.
pub fn start_caller_with(
    dir: &Path,
    config: &Path,
    upstreams: &[&str],
    extra: &[String],
) -> Caller {
    let (outbound, admin) = (free_addr(), free_addr());
    let mut args = vec![
        "proxy".to_string(),
        format!("--config={}", config.display()),
        "--service=caller".into(),
        format!("--outbound={outbound}"),
        format!("--admin={admin}"),
        "--watch-interval=100ms".into(),
    ];
    let mut ports = Vec::new();
    for u in upstreams {
        let p = free_addr();
        args.push(format!("--upstream={u}={p}"));
        ports.push(p);
    }
    args.extend(extra.iter().cloned());
    Caller {
        proc: Proc::spawn(dir, "caller-proxy", &args),
        outbound,
        admin,
        upstreams: ports,
    }
}

/// Runs curl with `args` (bounded by `--max-time 20`) and returns its stdout; curl is installed
/// by scripts/test.sh.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
