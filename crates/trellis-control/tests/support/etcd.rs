//! A real etcd (Debian's `etcd-server` 3.4) per test: free loopback ports (never 2379/2380),
//! its own temporary data directory, killed by PID when the guard drops.
//!
//! If etcd is not installed the tests fail, saying how to get it — a skipped etcd suite would
//! look green while testing nothing.
use super::TempDir;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use trellis_control::{EtcdOptions, EtcdStore};

pub struct Etcd {
    bin: PathBuf,
    pub dir: TempDir,
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

fn find_etcd() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcd is not installed, so the etcd store cannot be tested: run `bash \
                 scripts/test.sh` (it installs Debian's etcd-server) or `apt-get install -y \
                 etcd-server`"
            )
        })
}

/// A port that was free a moment ago, and is not etcd's well-known 2379/2380.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot find a free port: {e}"));
        if port != 2379 && port != 2380 {
            return port;
        }
    }
}

impl Etcd {
    /// Starts etcd and waits (at most 30 s) until it answers.
    pub async fn start() -> Self {
        let mut etcd = Self {
            bin: find_etcd(),
            dir: TempDir::new("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn options(&self) -> EtcdOptions {
        let mut options = EtcdOptions::new(vec![self.url()]);
        options.request_timeout = Duration::from_secs(2);
        options.connect_timeout = Duration::from_secs(1);
        options
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("etcd.log")
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("cannot open the etcd log: {e}"));
        let child = Command::new(&self.bin)
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.0.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .env_remove("ETCD_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("etcd exited early ({status}); log:\n{}", self.log_tail());
                }
            }
            if EtcdStore::connect(self.options()).await.is_ok() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("etcd did not answer within 30s; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`, keeping the data directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts etcd again after [`Etcd::kill`].
    pub async fn resume(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
