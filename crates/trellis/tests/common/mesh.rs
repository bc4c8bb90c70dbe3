//! A steered mesh of real processes for the control-plane tests: `trellis control` replicas
//! (embedded store or etcd), demo apps with sidecars registering themselves, an xDS-steered
//! caller, background load that counts failures, and real etcd — one member or a 3-member
//! cluster — on free loopback ports, every process stopped by PID when dropped.
use super::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn control(dir: &Path, name: &str, addr: SocketAddr, store: &str) -> Proc {
    Proc::spawn(
        dir,
        name,
        &[
            "control".into(),
            format!("--listen={addr}"),
            format!("--store={store}"),
            format!("--data-dir={}", dir.join(format!("{name}-data")).display()),
        ],
    )
}

pub fn apply(control: &str, dir: &Path, text: &str) {
    let file = dir.join(format!("apply-{}.yaml", rand::random::<u32>()));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .args(["apply", "-f", file.to_str().unwrap()])
        .env("TRELLIS_CONTROL", control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A demo app and its sidecar registering with the control plane(s).
pub fn instance(dir: &Path, controls: &str, name: &str, version: &str) -> (Proc, Proc, SocketAddr) {
    let p = Ports::free();
    let app = Proc::spawn(
        dir,
        &format!("{name}-app"),
        &[
            "demo-app".into(),
            format!("--listen={}", p.app),
            "--name=web".into(),
            format!("--version={version}"),
            format!("--instance={name}"),
        ],
    );
    let sidecar = Proc::spawn(
        dir,
        &format!("{name}-proxy"),
        &[
            "proxy".into(),
            format!("--control={controls}"),
            format!("--node-id={name}"),
            "--service=web".into(),
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
            format!("--label=version={version}"),
            "--lease-ttl=2s".into(),
        ],
    );
    (app, sidecar, p.admin)
}

pub fn caller(dir: &Path, controls: &str) -> Caller {
    caller_named(dir, controls, "caller")
}

/// A caller sidecar (outbound only) with its own node id, steered by the control plane(s).
pub fn caller_named(dir: &Path, controls: &str, name: &str) -> Caller {
    let (outbound, admin) = (free_addr(), free_addr());
    Caller {
        proc: Proc::spawn(
            dir,
            name,
            &[
                "proxy".into(),
                format!("--control={controls}"),
                format!("--node-id={name}"),
                "--service=caller".into(),
                format!("--outbound={outbound}"),
                format!("--admin={admin}"),
            ],
        ),
        outbound,
        admin,
        upstreams: Vec::new(),
    }
}

/// An outbound-only sidecar of `service` (its node id too), steered by the control plane(s):
/// a caller with its own identity, `spiffe://cluster.local/ns/default/sa/<service>`.
pub fn caller_of(dir: &Path, controls: &str, service: &str) -> Caller {
    let (outbound, admin) = (free_addr(), free_addr());
    Caller {
        proc: Proc::spawn(
            dir,
            service,
            &[
                "proxy".into(),
                format!("--control={controls}"),
                format!("--node-id={service}"),
                format!("--service={service}"),
                format!("--outbound={outbound}"),
                format!("--admin={admin}"),
            ],
        ),
        outbound,
        admin,
        upstreams: Vec::new(),
    }
}

/// Waits (15 s at most) until the proxy at `admin` holds a Workload of `service`, so a test's
/// first request to it is not spent finding out.
pub async fn wait_for_workload(admin: SocketAddr, service: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let config = config_of(admin).await;
        if config["resources"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|r| r["kind"] == "Workload" && r["spec"]["service"] == service)
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the proxy at {admin} never learnt an endpoint of {service}");
}

/// `n` control-plane replicas over one store, answering.
pub struct Replicas {
    pub procs: Vec<Option<Proc>>,
    pub addrs: Vec<SocketAddr>,
    /// `http://addr` of each.
    pub urls: Vec<String>,
}

impl Replicas {
    pub async fn start(dir: &Path, n: usize, store: &str) -> Replicas {
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let mut replicas = Replicas {
            procs: Vec::new(),
            urls: addrs.iter().map(|a| format!("http://{a}")).collect(),
            addrs,
        };
        replicas.restart(dir, store).await;
        replicas
    }

    /// Starts every replica (again) on its address and waits until each answers.
    pub async fn restart(&mut self, dir: &Path, store: &str) {
        self.procs = self
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Some(control(dir, &format!("control-{i}"), *a, store)))
            .collect();
        for a in &self.addrs {
            wait_api(*a).await;
        }
    }

    /// Every replica, comma-separated, as proxies and the CLI take them.
    pub fn all(&self) -> String {
        self.urls.join(",")
    }

    /// kill -9 of every replica.
    pub fn kill_all(&mut self) {
        for p in self.procs.iter_mut().filter_map(Option::take) {
            kill9(p);
        }
    }
}

/// Waits until the instances and the caller are ready and the caller holds `n` endpoints.
pub async fn wait_mesh(instances: &[(Proc, Proc, SocketAddr)], caller: &Caller, n: usize) {
    for (_, _, admin) in instances {
        wait_ready(*admin).await;
    }
    wait_ready(caller.admin).await;
    wait_endpoints(caller.admin, n).await;
}

pub async fn config_of(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = get_status(admin, "/config").await.unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Waits (bounded) until the caller holds `n` endpoints of `web`.
pub async fn wait_endpoints(admin: SocketAddr, n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..600 {
        let j = config_of(admin).await;
        let count = j["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "web"))
            .and_then(|s| s["endpoints"].as_array().map(|e| e.len()))
            .unwrap_or(0);
        if count == n {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("caller never held {n} endpoints of web");
}

/// Background traffic: counts answers by version and failures until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    by_version: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

pub fn load(outbound: SocketAddr) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let by_version = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let (s, f, v) = (stop.clone(), failed.clone(), by_version.clone());
    let task = tokio::spawn(async move {
        let c = http1();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            let a = get(&c, outbound, Some("web"), "/", &[]).await;
            if a.status == 200 {
                let ver = a.json()["version"].as_str().unwrap_or("?").to_string();
                *v.lock().unwrap().entry(ver).or_default() += 1;
            } else {
                f.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "failed: {} {:?} {}",
                    a.status,
                    a.header("trellis-error"),
                    a.body
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Load {
        stop,
        failed,
        by_version,
        task,
    }
}

impl Load {
    pub fn reset(&self) -> HashMap<String, usize> {
        std::mem::take(&mut *self.by_version.lock().unwrap())
    }
    pub async fn finish(self) -> (usize, HashMap<String, usize>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.failed.load(Ordering::Relaxed),
            self.by_version.lock().unwrap().clone(),
        )
    }
}

/// A real etcd (Debian's etcd-server, installed by the test script) on free loopback ports.
pub fn etcd(dir: &Path) -> (Proc, String) {
    let bin = etcd_bin();
    let (client, peer) = (free_addr(), free_addr());
    let data = dir.join("etcd-data");
    let child = std::process::Command::new(bin)
        .args([
            "--name=trellis-test",
            &format!("--data-dir={}", data.display()),
            &format!("--listen-client-urls=http://{client}"),
            &format!("--advertise-client-urls=http://{client}"),
            &format!("--listen-peer-urls=http://{peer}"),
            &format!("--initial-advertise-peer-urls=http://{peer}"),
            &format!("--initial-cluster=trellis-test=http://{peer}"),
        ])
        .stdout(std::fs::File::create(dir.join("etcd.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("etcd.err.log")).unwrap())
        .spawn()
        .expect("start etcd");
    (
        Proc {
            name: "etcd".into(),
            child,
            log: dir.join("etcd.err.log"),
        },
        format!("{client}"),
    )
}

pub async fn wait_etcd(client: &str) {
    let addr: SocketAddr = client.parse().unwrap();
    for _ in 0..400 {
        if let Ok((200, body)) = get_status(addr, "/health").await {
            if body.contains("true") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("etcd at {client} never became healthy");
}

/// A 3-member etcd cluster on loopback; members can be killed and started again.
pub struct EtcdCluster {
    pub members: Vec<Option<Proc>>,
    args: Vec<Vec<String>>,
    pub clients: Vec<SocketAddr>,
    dir: std::path::PathBuf,
}

impl EtcdCluster {
    pub async fn start(dir: &Path) -> EtcdCluster {
        let peers: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let clients: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://{p}"))
            .collect();
        let args: Vec<Vec<String>> = (0..3)
            .map(|i| {
                vec![
                    format!("--name=m{i}"),
                    format!("--data-dir={}", dir.join(format!("etcd-m{i}")).display()),
                    format!("--listen-client-urls=http://{}", clients[i]),
                    format!("--advertise-client-urls=http://{}", clients[i]),
                    format!("--listen-peer-urls=http://{}", peers[i]),
                    format!("--initial-advertise-peer-urls=http://{}", peers[i]),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new".into(),
                    "--initial-cluster-token=trellis-test".into(),
                    "--heartbeat-interval=50".into(),
                    "--election-timeout=500".into(),
                ]
            })
            .collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            args,
            clients,
            dir: dir.to_path_buf(),
        };
        for i in 0..3 {
            let p = cluster.spawn(i);
            cluster.members.push(Some(p));
        }
        for c in &cluster.clients {
            wait_etcd(&c.to_string()).await;
        }
        cluster
    }

    fn spawn(&self, i: usize) -> Proc {
        let bin = etcd_bin();
        let log = self.dir.join(format!("etcd-m{i}.log"));
        let child = Command::new(bin)
            .args(&self.args[i])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(self.dir.join(format!("etcd-m{i}.err.log"))).unwrap())
            .spawn()
            .expect("start etcd");
        Proc {
            name: format!("etcd-m{i}"),
            child,
            log,
        }
    }

    /// `etcd://a,b,c` for `--store`.
    pub fn store(&self) -> String {
        let list: Vec<String> = self.clients.iter().map(ToString::to_string).collect();
        format!("etcd://{}", list.join(","))
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(p) = self.members[i].take() {
            let _ = Command::new("kill")
                .args(["-9", &p.pid().to_string()])
                .status();
            drop(p);
        }
    }

    /// Starts member `i` again on its data directory and waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        let p = self.spawn(i);
        self.members[i] = Some(p);
        wait_etcd(&self.clients[i].to_string()).await;
    }
}

fn etcd_bin() -> &'static str {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("etcd is not installed: run scripts/test.sh, which installs Debian's etcd-server")
}

/// kill -9 of a process by PID.
pub fn kill9(p: Proc) {
    let _ = Command::new("kill")
        .args(["-9", &p.pid().to_string()])
        .status();
    drop(p);
}
