//! Throw-away networks for the chaos tests, built from Linux network namespaces.
//!
//! # Topology
//!
//! ```text
//!   root namespace (the test process)          namespaces this module creates
//!   ─────────────────────────────────          ──────────────────────────────
//!   trchaos<X> 10.77.X.1/24 ──veth──┐
//!                                   │   switch ns: bridge br0
//!                                   ├──veth── h1 ns: eth0 10.77.X.11/24, lo
//!                                   ├──veth── h2 ns: eth0 10.77.X.12/24, lo
//!                                   ├──veth── h3 ns: eth0 10.77.X.13/24, lo
//!                                   └──veth── hc ns: eth0 10.77.X.10/24, lo
//! ```
//!
//! Every "host" is its own network namespace with one address; a "switch" namespace holds the
//! bridge that joins them. The test process cannot enter a namespace without `setns` (unsafe
//! code and a new dependency), so the root namespace gets one more port on the bridge, `.1`:
//! the test reaches the sidecars' listeners and admin ports directly over it. The /24 exists
//! only on these interfaces; no namespace has a default route, so no packet can leave the
//! topology, and the root namespace only gains a connected route for the /24 on its own veth.
//!
//! # Isolation between concurrent tests
//!
//! The subnet octet `X` is claimed atomically by creating the root-side veth `trchaos<X>`
//! (`ip link add` fails if another test holds it); its alias records the owner's PID. Namespace
//! names carry the owner's PID and `X`. Leftovers of a test process that was killed before its
//! `Drop` ran are recognised by their dead owner PID and removed by the next test.
//!
//! Processes start in a namespace with `ip netns exec NS trellis ...`, which `exec`s in place, so
//! the PID the test holds is the trellis process itself (checked through `/proc/PID/exe`) and
//! `kill -9` by PID hits it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_trellis");

/// Prefix of every namespace this module creates: `trellis-chaos-<pid>-<X>-<role>`.
const NS_PREFIX: &str = "trellis-chaos-";
/// Prefix of the root-side veth, `trchaos<X>` (at most 10 characters, under IFNAMSIZ).
const ROOT_IF_PREFIX: &str = "trchaos";
/// The alias on the root-side veth naming its owner: `trellis-chaos-pid-<pid>`.
const OWNER_ALIAS: &str = "trellis-chaos-pid-";
/// The interface of a host namespace (each namespace has its own interface names).
pub const HOST_IF: &str = "eth0";

/// The outcome of a command: stdout on success, a message with stderr otherwise.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool(cmd))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{cmd}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs an `ip` command that must succeed; `what` names the kernel feature it needs, so a
/// machine without it fails with a message saying what is missing.
fn must(what: &str, args: &[&str]) -> String {
    run("ip", args).unwrap_or_else(|e| {
        panic!("chaos tests need {what}, and setting it up failed: {e}");
    })
}

/// Where `ip` and `iptables` may live besides `PATH` (a non-login root shell may lack sbin).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The absolute path of `name`, from `PATH` or the usual sbin directories.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The absolute path of `name`; fails with a clear message when it is missing.
fn tool(name: &str) -> String {
    let package = if name == "ip" { "iproute2" } else { name };
    match find_tool(name) {
        Some(p) => p.display().to_string(),
        None => panic!(
            "chaos tests need `{name}` (Debian package `{package}`; scripts/test.sh installs it)"
        ),
    }
}

/// Fails with a clear message when not root (the effective UID), or when `ip` or `iptables` is
/// missing (`scripts/test.sh` installs Debian's `iproute2` and `iptables` when they are absent).
pub fn require_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(
        uid,
        Some("0"),
        "chaos tests must run as root: they create network namespaces, veths and iptables rules"
    );
    tool("ip");
    tool("iptables");
}

/// Held while a chaos test runs, so chaos tests run one at a time even when nextest runs them
/// as parallel processes: each one drives a steady load through seven processes, and two at
/// once on a small machine would measure CPU contention, not the mesh. The lock
/// is an abstract Unix socket: binding is atomic and the kernel releases it when the process
/// dies, so a killed test never leaves it stuck.
pub struct SuiteLock {
    _socket: UnixListener,
}

pub async fn lock_suite(limit: Duration) -> SuiteLock {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"trellis-chaos-suite-lock")
        .expect("abstract socket name");
    let deadline = Instant::now() + limit;
    loop {
        match UnixListener::bind_addr(&addr) {
            Ok(socket) => return SuiteLock { _socket: socket },
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("could not take the chaos suite lock within {limit:?}: {e}"),
        }
    }
}

/// One simulated machine: a namespace with one address on the shared bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// Short role name, e.g. `h1` or `hc`.
    pub role: String,
    /// The namespace name, for `ip netns exec`.
    pub ns: String,
    pub addr: Ipv4Addr,
}

impl Host {
    /// Runs a command inside this host's namespace; panics with its stderr on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.ns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full).unwrap_or_else(|e| panic!("on host {}: {e}", self.role))
    }

    /// Starts `trellis ARGS` inside this host's namespace, logging to `dir/label.log`.
    pub fn spawn(&self, dir: &Path, label: &str, args: &[String]) -> NsProc {
        let log = dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(tool("ip"))
            .args(["netns", "exec", &self.ns, BIN])
            .args(args)
            .env("TRELLIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn `ip netns exec ... trellis`");
        let proc = NsProc {
            label: label.to_string(),
            child,
            log,
        };
        proc.wait_exec();
        proc
    }

    /// Starts another program (an app, a server, a sniffer) inside this host's namespace,
    /// logging to `dir/label.log`; killed by PID when dropped like a trellis process.
    pub fn spawn_program(&self, dir: &Path, label: &str, program: &str, args: &[&str]) -> NsProc {
        let log = dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(tool("ip"))
            .args(["netns", "exec", &self.ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} (scripts/test.sh installs it): {e}")
            });
        NsProc {
            label: label.to_string(),
            child,
            log,
        }
    }

    /// Drops every packet arriving at this host from the network (`iptables -A INPUT -i eth0
    /// -j DROP`): peers' SYNs go unanswered and established connections go silent, as when a
    /// machine falls off the network. Loopback inside the host keeps working.
    pub fn partition(&self) {
        self.exec(&[
            &tool("iptables"),
            "-A",
            "INPUT",
            "-i",
            HOST_IF,
            "-j",
            "DROP",
        ]);
    }

    /// Removes the rule `partition` added.
    pub fn heal_partition(&self) {
        self.exec(&[
            &tool("iptables"),
            "-D",
            "INPUT",
            "-i",
            HOST_IF,
            "-j",
            "DROP",
        ]);
    }
}

/// `iptables-save` output without counters and comments: which rules and chains exist, to
/// compare before and after.
pub fn rule_text(iptables_save: &str) -> String {
    iptables_save
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Packet counters of the capture chain's rules on `host` (`TRELLIS_OUTPUT` in its nat table),
/// each with the rule's text.
pub fn capture_chain_counters(host: &Host) -> Vec<(u64, String)> {
    host.exec(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-L",
        "TRELLIS_OUTPUT",
        "-n",
        "-v",
        "-x",
    ])
    .lines()
    .skip(2)
    .filter_map(|l| {
        let pkts = l.split_whitespace().next()?.parse().ok()?;
        Some((pkts, l.to_string()))
    })
    .collect()
}

/// resolv.conf for `ip netns exec` in `ns` (it bind-mounts /etc/netns/NS/resolv.conf); removed
/// on drop.
pub struct NsResolvConf(PathBuf);

impl NsResolvConf {
    pub fn write(ns: &str, nameserver: Ipv4Addr) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )
        .expect("write resolv.conf");
        Self(dir)
    }
}

impl Drop for NsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process inside a namespace (trellis, or another program), killed with SIGKILL (by PID)
/// when dropped.
pub struct NsProc {
    pub label: String,
    child: Child,
    pub log: PathBuf,
}

impl NsProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ip netns exec` has exec'd trellis in place (same PID), so that killing this
    /// PID kills trellis and not a wrapper that would leave it running.
    fn wait_exec(&self) {
        let want = std::fs::canonicalize(BIN).expect("canonical path of the trellis binary");
        let exe = format!("/proc/{}/exe", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        while Instant::now() < deadline {
            match std::fs::read_link(&exe) {
                Ok(p) if p == want => return,
                Ok(p) => last = Some(p),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "{}: PID {} is {last:?}, not {}; `ip netns exec` did not exec trellis in place. Log: {}",
            self.label,
            self.pid(),
            want.display(),
            self.log_text()
        );
    }

    /// SIGTERM by PID (`kill -TERM`), then waits (bounded) for the exit; `None` if it did not
    /// exit within `limit` (the caller's Drop then kills it).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `kill -9` by PID, then reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) until the log contains `needle`, e.g. demo-app's `listening on`.
    pub async fn wait_log(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging {needle:?}: {}",
                    self.label,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} did not log {needle:?} within {limit:?}: {}",
            self.label,
            self.log_text()
        );
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The namespaces, bridge and veths of one test; all removed on drop, even after a panic.
pub struct Topology {
    /// The third octet of `10.77.X.0/24`.
    pub subnet: u8,
    /// The test process's own address on the bridge.
    pub root_addr: Ipv4Addr,
    pub hosts: Vec<Host>,
    root_if: String,
    switch_ns: Option<String>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Topology {
    /// Builds the switch, one host namespace per `(role, last octet)`, and the root port.
    pub fn create(hosts: &[(&str, u8)]) -> Topology {
        require_tools();
        remove_leftovers();
        let pid = std::process::id();
        let subnet = claim_subnet(pid);
        let mut topo = Topology {
            subnet,
            root_addr: Ipv4Addr::new(10, 77, subnet, 1),
            hosts: Vec::new(),
            root_if: format!("{ROOT_IF_PREFIX}{subnet}"),
            switch_ns: None,
        };
        // From here on, a panic drops `topo`, which removes whatever exists so far.
        let switch = format!("{NS_PREFIX}{pid}-{subnet}-sw");
        must("network namespaces", &["netns", "add", &switch]);
        topo.switch_ns = Some(switch.clone());
        must(
            "bridges (CONFIG_BRIDGE)",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        );
        must("bridges", &["-n", &switch, "link", "set", "br0", "up"]);
        // The root port: `trchaos<X>p` moves into the switch and joins the bridge.
        let peer = format!("{}p", topo.root_if);
        must(
            "moving a veth between namespaces",
            &["link", "set", &peer, "netns", &switch],
        );
        attach(&switch, &peer);
        let cidr = format!("{}/24", topo.root_addr);
        must(
            "IPv4 addresses",
            &["addr", "add", &cidr, "dev", &topo.root_if],
        );
        must("veth pairs", &["link", "set", &topo.root_if, "up"]);
        for (role, octet) in hosts {
            let host = Host {
                role: role.to_string(),
                ns: format!("{NS_PREFIX}{pid}-{subnet}-{role}"),
                addr: Ipv4Addr::new(10, 77, subnet, *octet),
            };
            must("network namespaces", &["netns", "add", &host.ns]);
            topo.hosts.push(host.clone());
            // Created directly in the two namespaces: no name ever exists in the root one.
            must(
                "veth pairs (CONFIG_VETH)",
                &[
                    "link", "add", "name", HOST_IF, "netns", &host.ns, "type", "veth", "peer",
                    "name", role, "netns", &switch,
                ],
            );
            attach(&switch, role);
            let cidr = format!("{}/24", host.addr);
            must(
                "IPv4 addresses",
                &["-n", &host.ns, "addr", "add", &cidr, "dev", HOST_IF],
            );
            must(
                "veth pairs",
                &["-n", &host.ns, "link", "set", HOST_IF, "up"],
            );
            must("loopback", &["-n", &host.ns, "link", "set", "lo", "up"]);
        }
        // iptables must work inside a namespace for the partition scenario; check it now so a
        // missing netfilter fails here, by name, rather than half-way through a scenario.
        if let Some(h) = topo.hosts.first() {
            if let Err(e) = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &h.ns,
                    &tool("iptables"),
                    "-L",
                    "INPUT",
                    "-n",
                ],
            ) {
                panic!("chaos tests need iptables (netfilter) inside a network namespace: {e}");
            }
        }
        topo
    }

    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| panic!("no host {role} in the topology"))
    }
}

/// Adds a switch-side veth end to the bridge and brings it up.
fn attach(switch: &str, port: &str) {
    must(
        "bridge ports",
        &["-n", switch, "link", "set", port, "master", "br0"],
    );
    must("bridge ports", &["-n", switch, "link", "set", port, "up"]);
}

/// Claims `10.77.X.0/24` for this test by creating the root-side veth pair `trchaos<X>` /
/// `trchaos<X>p` (creation is atomic: it fails when another test holds `X`). Skips any `X` that
/// a route of the machine already covers (other than the default route), so the test never
/// shadows a real network.
fn claim_subnet(pid: u32) -> u8 {
    let start = (pid as usize).wrapping_mul(7) + NEXT.fetch_add(1, Ordering::Relaxed) * 37;
    for i in 0..254 {
        let x = ((start + i) % 254 + 1) as u8;
        let routes = run(
            "ip",
            &["-4", "route", "show", "match", &format!("10.77.{x}.0/24")],
        )
        .unwrap_or_default();
        if routes
            .lines()
            .any(|l| !l.trim().is_empty() && !l.starts_with("default"))
        {
            continue;
        }
        let name = format!("{ROOT_IF_PREFIX}{x}");
        let peer = format!("{name}p");
        match run(
            "ip",
            &["link", "add", &name, "type", "veth", "peer", "name", &peer],
        ) {
            Ok(_) => {
                let alias = format!("{OWNER_ALIAS}{pid}");
                must("veth pairs", &["link", "set", &name, "alias", &alias]);
                return x;
            }
            Err(e) if e.contains("exists") => continue,
            Err(e) => panic!("chaos tests need veth pairs (CONFIG_VETH): {e}"),
        }
    }
    panic!("no free 10.77.X.0/24 subnet for a chaos topology (all 254 taken or routed)");
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces (and the processes still in them) and root veths left by chaos tests
/// whose process no longer exists: a test killed before its `Drop` ran.
fn remove_leftovers() {
    let names = run("ip", &["netns", "list"]).unwrap_or_default();
    for line in names.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let owner = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|p| !pid_alive(p)) {
            eprintln!("chaos: removing namespace {name} left by a dead test process");
            // Its processes (sidecars, apps) outlived the test; a deleted namespace would hide
            // them but keep them running.
            let pids = run("ip", &["netns", "pids", name]).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = run("ip", &["netns", "del", name]);
        }
    }
    let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // `N: trchaos12@if3: <...> ... \    alias trellis-chaos-pid-1234`
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        if !name.starts_with(ROOT_IF_PREFIX) {
            continue;
        }
        let owner = line
            .split(OWNER_ALIAS)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|p| !pid_alive(p)) {
            eprintln!("chaos: removing veth {name} left by a dead test process");
            let _ = run("ip", &["link", "del", name]);
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth ends in it, and with them their peers.
        for h in &self.hosts {
            if let Err(e) = run("ip", &["netns", "del", &h.ns]) {
                eprintln!("chaos teardown: {e}");
            }
        }
        if let Some(sw) = &self.switch_ns {
            if let Err(e) = run("ip", &["netns", "del", sw]) {
                eprintln!("chaos teardown: {e}");
            }
        }
        // Already gone if its peer was in the switch namespace; harmless otherwise.
        let _ = run("ip", &["link", "del", &self.root_if]);
    }
}
