//! The network of `trellis up --hosts`: one Linux network namespace per instance, a "host" with
//! one address, all joined by a bridge, so each sidecar captures only its own app's traffic
//! (`--intercept --dns`) exactly as it would on a machine of its own.
//!
//! # Topology (the default `--hosts-subnet 10.78.0.0/24`)
//!
//! ```text
//!   root namespace                              namespaces this module creates
//!   ──────────────                              ──────────────────────────────
//!   trellis-up 10.78.0.1/24 ──veth──┐
//!   (control plane, entry sidecar)  │  trellis-up-switch: bridge br0
//!                                   ├──veth── trellis-reviews-v1-0: eth0 10.78.0.10/24, lo
//!                                   ├──veth── trellis-reviews-v1-1: eth0 10.78.0.11/24, lo
//!                                   └──veth── ...one per instance, in manifest order
//! ```
//!
//! - **The control plane stays in the root namespace**, on the root port's address (`.1`): the
//!   root namespace reaches every host over that port (the entry sidecar, `trellis` CLI
//!   commands, a user's `curl` to a sidecar's admin port) and every host reaches it, with no
//!   namespace of its own to enter.
//! - **A switch namespace holds the bridge**, so the root namespace gains one interface and one
//!   connected route, nothing else, and the host veths have names only inside namespaces.
//! - **Names and addresses are predictable**: host `trellis-<instance>` at `.10` + its index in
//!   manifest order, so `ip netns exec trellis-reviews-v1-0 curl http://ratings:9080/` can be
//!   pasted from the banner or the README.
//! - **Nothing leaves the bridge.** A host's default route is on-link out of `eth0` with no
//!   gateway: every address is routable (so VIPs of any `serviceAddressRange` and any
//!   resolver address reach the capture rules), yet only the hosts and the root port answer
//!   ARP, and nothing is forwarded or masqueraded, so the machine's own networks never see a
//!   host's packets. Each host's `resolv.conf` (`/etc/netns/<ns>/resolv.conf`, which `ip netns
//!   exec` mounts over `/etc/resolv.conf`) names the host's own address: the capture rules send
//!   its port-53 traffic to the sidecar's DNS, which answers mesh names; other names fail at
//!   once (the sidecar's relay finds nothing listening there).
//! - **Owned, so a `kill -9` is mended by the next start.** Each namespace's `lo` and the root
//!   veth carry the alias `trellis-up-owner-<pid>-<start time>` of the `up` process that made
//!   them (the start time tells a reused PID apart). A start removes what a dead owner left:
//!   it kills the processes still in those namespaces, deletes the namespaces (and with them
//!   their veths, bridge and iptables rules) and their `resolv.conf`. What a live owner holds
//!   is refused by name, and what carries no owner is never touched.
//!
//! Everything goes through the `ip` program (`std::process::Command`): no `setns`, no unsafe
//! code. The commands are short, so they run on the caller's thread.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trellis_api::Ipv4Cidr;

/// The namespace of every host starts with this, then the instance's name.
pub const NS_PREFIX: &str = "trellis-";
/// The namespace holding the bridge (an instance name ends in a digit, so it never clashes).
pub const SWITCH_NS: &str = "trellis-up-switch";
/// The root namespace's port on the bridge.
pub const ROOT_LINK: &str = "trellis-up";
/// Its peer, inside the switch namespace.
const ROOT_PEER: &str = "uplink";
const BRIDGE: &str = "br0";
/// A host's interface (names are per namespace, so every host has its own `eth0`).
pub const HOST_IF: &str = "eth0";
/// The alias naming the owner of what this module creates.
const OWNER_PREFIX: &str = "trellis-up-owner-";
/// The first line of a `resolv.conf` this module wrote.
const RESOLV_MARK: &str = "# written by trellis up --hosts";
/// Instances take addresses from the subnet's `.10` on (`.1` is the root port).
const FIRST_HOST: u32 = 10;
/// Where `ip` and `iptables` may live besides `PATH` (a non-login root shell may lack sbin).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Why the hosts' network cannot be made, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error(
        "`trellis up --hosts` must run as root (it creates network namespaces, veths, a bridge \
         and iptables rules); this process's effective UID is {0}"
    )]
    NotRoot(String),
    #[error(
        "`trellis up --hosts` needs `{tool}` (Debian package `{package}`); it is not on PATH \
         nor in /usr/sbin or /sbin"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`trellis up --hosts` needs {need}; `{command}` failed: {stderr}")]
    Command {
        need: &'static str,
        command: String,
        stderr: String,
    },
    #[error("{what} belongs to another running `trellis up --hosts` (PID {pid}); stop it first")]
    InUse { what: String, pid: u32 },
    #[error(
        "{what} already exists and was not made by `trellis up --hosts`; remove it \
         (`{remove}`) or stop whatever uses it"
    )]
    Foreign { what: String, remove: String },
    #[error(
        "--hosts-subnet {subnet} is already routed on this machine (`{route}`); pick another \
         subnet with --hosts-subnet"
    )]
    SubnetTaken { subnet: Ipv4Cidr, route: String },
    #[error("--hosts-subnet {subnet} has no room for {instances} instances (they start at .10)")]
    SubnetTooSmall { subnet: Ipv4Cidr, instances: usize },
}

/// The programs the network is built with, found once.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: PathBuf,
    pub iptables: PathBuf,
}

/// Checks what `--hosts` needs before anything is made: root, `ip` and `iptables`.
pub fn require() -> Result<Tools, HostsError> {
    let uid = effective_uid();
    if uid.as_deref() != Some("0") {
        return Err(HostsError::NotRoot(uid.unwrap_or_else(|| "unknown".into())));
    }
    let find = |tool: &'static str, package: &'static str| {
        find_tool(tool).ok_or(HostsError::MissingTool { tool, package })
    };
    Ok(Tools {
        ip: find("ip", "iproute2")?,
        iptables: find("iptables", "iptables")?,
    })
}

/// The effective UID, from `/proc/self/status` (no libc call, so no unsafe code).
fn effective_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1).map(str::to_string)
}

/// The absolute path of `name`, from `PATH` or the usual sbin directories.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// One instance's host: its namespace and its address on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    pub instance: String,
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// The namespaces, veths and bridge of one `up --hosts`; removed by [`Network::teardown`], and
/// on drop (an error or a panic half-way through building included).
#[derive(Debug)]
pub struct Network {
    ip: PathBuf,
    iptables: PathBuf,
    pub subnet: Ipv4Cidr,
    /// The root namespace's address on the bridge (the control plane listens there).
    pub root_addr: Ipv4Addr,
    pub hosts: Vec<Host>,
    /// Namespaces made so far, the switch first.
    namespaces: Vec<String>,
    root_link: bool,
    /// `/etc/netns/<ns>` folders holding a `resolv.conf` written here.
    resolv_dirs: Vec<PathBuf>,
}

impl Network {
    /// Removes what a dead earlier run left, then builds the switch, the root port and one host
    /// per instance (in order, from `.10`).
    pub fn build(
        tools: &Tools,
        subnet: Ipv4Cidr,
        instances: &[String],
    ) -> Result<Network, HostsError> {
        let ip = tools.ip.clone();
        for removed in remove_leftovers(&ip) {
            eprintln!("trellis up: removed {removed}, left by an earlier run that was killed");
        }
        let addrs = host_addrs(subnet, instances.len())?;
        check_no_other_run(&ip)?;
        check_subnet_free(&ip, subnet)?;
        let mut net = Network {
            ip,
            iptables: tools.iptables.clone(),
            subnet,
            root_addr: Ipv4Addr::from(u32::from(subnet.network()) + 1),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            root_link: false,
            resolv_dirs: Vec::new(),
        };
        // From here on, an error drops `net`, which removes whatever exists so far.
        net.add_namespace(SWITCH_NS)?;
        net.ip(
            "bridges (CONFIG_BRIDGE)",
            &["-n", SWITCH_NS, "link", "add", BRIDGE, "type", "bridge"],
        )?;
        net.ip("bridges", &["-n", SWITCH_NS, "link", "set", BRIDGE, "up"])?;
        net.add_root_port()?;
        for (instance, addr) in instances.iter().zip(addrs) {
            net.add_host(instance, addr)?;
        }
        Ok(net)
    }

    /// Runs `ip ARGS`; `need` names what it needs, for the error.
    fn ip(&self, need: &'static str, args: &[&str]) -> Result<String, HostsError> {
        run(&self.ip, args).map_err(|(command, stderr)| HostsError::Command {
            need,
            command,
            stderr,
        })
    }

    /// Creates namespace `ns` and marks it as this process's at once.
    fn add_namespace(&mut self, ns: &str) -> Result<(), HostsError> {
        if let Err((command, stderr)) = run(&self.ip, &["netns", "add", ns]) {
            return Err(if stderr.contains("exists") {
                taken_namespace(&self.ip, ns)
            } else {
                HostsError::Command {
                    need: "network namespaces",
                    command,
                    stderr,
                }
            });
        }
        self.namespaces.push(ns.to_string());
        let owner = owner_alias(std::process::id());
        self.ip(
            "network namespaces",
            &["-n", ns, "link", "set", "lo", "alias", &owner],
        )?;
        self.ip("loopback", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The root namespace's port on the bridge, `.1`, marked with this process as owner.
    fn add_root_port(&mut self) -> Result<(), HostsError> {
        let created = run(
            &self.ip,
            &[
                "link", "add", ROOT_LINK, "type", "veth", "peer", "name", ROOT_PEER, "netns",
                SWITCH_NS,
            ],
        );
        if let Err((command, stderr)) = created {
            return Err(if stderr.contains("exists") {
                taken_link(&self.ip)
            } else {
                HostsError::Command {
                    need: "veth pairs (CONFIG_VETH)",
                    command,
                    stderr,
                }
            });
        }
        self.root_link = true;
        let owner = owner_alias(std::process::id());
        self.ip("veth pairs", &["link", "set", ROOT_LINK, "alias", &owner])?;
        self.attach(ROOT_PEER)?;
        let cidr = format!("{}/{}", self.root_addr, self.subnet.prefix());
        self.ip("IPv4 addresses", &["addr", "add", &cidr, "dev", ROOT_LINK])?;
        self.ip("veth pairs", &["link", "set", ROOT_LINK, "up"])?;
        Ok(())
    }

    /// A host: its namespace, a veth from its `eth0` to the bridge, its address, an on-link
    /// default route and its `resolv.conf`.
    fn add_host(&mut self, instance: &str, addr: Ipv4Addr) -> Result<(), HostsError> {
        let ns = format!("{NS_PREFIX}{instance}");
        self.add_namespace(&ns)?;
        // Created directly in the two namespaces: no name ever exists in the root one.
        let port = format!("v{}", self.hosts.len());
        self.ip(
            "veth pairs (CONFIG_VETH)",
            &[
                "link", "add", "name", HOST_IF, "netns", &ns, "type", "veth", "peer", "name",
                &port, "netns", SWITCH_NS,
            ],
        )?;
        self.attach(&port)?;
        let cidr = format!("{addr}/{}", self.subnet.prefix());
        self.ip(
            "IPv4 addresses",
            &["-n", &ns, "addr", "add", &cidr, "dev", HOST_IF],
        )?;
        self.ip("veth pairs", &["-n", &ns, "link", "set", HOST_IF, "up"])?;
        self.ip(
            "routes",
            &["-n", &ns, "route", "add", "default", "dev", HOST_IF],
        )?;
        self.write_resolv_conf(&ns, addr)?;
        self.hosts.push(Host {
            instance: instance.to_string(),
            ns,
            addr,
        });
        Ok(())
    }

    /// Adds a switch-side veth end to the bridge and brings it up.
    fn attach(&self, port: &str) -> Result<(), HostsError> {
        self.ip(
            "bridge ports",
            &["-n", SWITCH_NS, "link", "set", port, "master", BRIDGE],
        )?;
        self.ip(
            "bridge ports",
            &["-n", SWITCH_NS, "link", "set", port, "up"],
        )?;
        Ok(())
    }

    fn write_resolv_conf(&mut self, ns: &str, addr: Ipv4Addr) -> Result<(), HostsError> {
        let dir = resolv_dir(ns);
        let file = dir.join("resolv.conf");
        if std::fs::read_to_string(&file).is_ok_and(|t| !t.starts_with(RESOLV_MARK)) {
            return Err(HostsError::Foreign {
                what: file.display().to_string(),
                remove: format!("rm {}", file.display()),
            });
        }
        let text = format!(
            "{RESOLV_MARK}: port 53 goes to the sidecar's DNS, which answers mesh names\n\
             nameserver {addr}\n"
        );
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, text));
        self.resolv_dirs.push(dir);
        written.map_err(|e| HostsError::Command {
            need: "a writable /etc/netns",
            command: format!("write {}", file.display()),
            stderr: e.to_string(),
        })
    }

    /// The `iptables` program the sidecars install their capture rules with.
    pub fn iptables(&self) -> &Path {
        &self.iptables
    }

    /// `ip netns exec NS PROGRAM`: `ip` execs `program` in place, so the child's PID is the
    /// program's own and killing it by PID stops the program, not a wrapper.
    pub fn command(&self, host: &Host, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.ip);
        cmd.args(["netns", "exec", &host.ns]).arg(program);
        cmd
    }

    /// Kills whatever still runs in the namespaces (bounded wait), deletes them (their veths,
    /// bridge and iptables rules go with them) and the `resolv.conf` files. Idempotent.
    pub fn teardown(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = delete_namespace(&self.ip, &ns) {
                eprintln!("trellis up: {e}");
            }
        }
        if std::mem::take(&mut self.root_link) {
            // Already gone with its peer in the switch namespace; harmless otherwise.
            let _ = run(&self.ip, &["link", "del", ROOT_LINK]);
        }
        for dir in self.resolv_dirs.drain(..) {
            remove_resolv_dir(&dir);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The outcome of a command: stdout on success; the command line and stderr otherwise.
fn run(program: &Path, args: &[&str]) -> Result<String, (String, String)> {
    let line = || format!("{} {}", program.display(), args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| (line(), e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err((line(), format!("{} ({})", stderr, out.status)))
    }
}

/// The addresses of `n` hosts: `.10`, `.11`, ... of `subnet`, all inside it.
fn host_addrs(subnet: Ipv4Cidr, n: usize) -> Result<Vec<Ipv4Addr>, HostsError> {
    let room = subnet
        .host_count()
        .saturating_sub(u64::from(FIRST_HOST) - 1);
    if (n as u64) > room {
        return Err(HostsError::SubnetTooSmall {
            subnet,
            instances: n,
        });
    }
    let first = u32::from(subnet.network()) + FIRST_HOST;
    Ok((0..n as u32).map(|i| Ipv4Addr::from(first + i)).collect())
}

/// Names are fixed, so one `up --hosts` runs on a machine at a time: refuses to start beside a
/// live one (its root port names it), before its subnet looks taken.
fn check_no_other_run(ip: &Path) -> Result<(), HostsError> {
    let text = run(ip, &["-o", "link", "show", ROOT_LINK]).unwrap_or_default();
    match owner_in(&text) {
        Some(owner) if owner_alive(owner) => Err(taken_link(ip)),
        _ => Ok(()),
    }
}

/// Refuses a subnet that a route of this machine already covers (other than the default
/// route), so the hosts never shadow a real network.
fn check_subnet_free(ip: &Path, subnet: Ipv4Cidr) -> Result<(), HostsError> {
    let routes = run(ip, &["-4", "route", "show", "match", &subnet.to_string()]).map_err(
        |(command, stderr)| HostsError::Command {
            need: "`ip route`",
            command,
            stderr,
        },
    )?;
    match routes
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("default"))
    {
        Some(route) => Err(HostsError::SubnetTaken {
            subnet,
            route: route.trim().to_string(),
        }),
        None => Ok(()),
    }
}

/// `trellis-up-owner-<pid>-<start time>` for process `pid`.
fn owner_alias(pid: u32) -> String {
    format!("{OWNER_PREFIX}{pid}-{}", start_time(pid).unwrap_or(0))
}

/// When process `pid` started (clock ticks since boot, field 22 of `/proc/PID/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The owner `(pid, start time)` named by an alias in `ip -o link show` output, if any.
fn owner_in(text: &str) -> Option<(u32, u64)> {
    let rest = text.split(OWNER_PREFIX).nth(1)?;
    let token = rest.split_whitespace().next()?;
    let (pid, start) = token.split_once('-')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Whether the owner still runs: its PID exists and started when the alias says.
fn owner_alive((pid, start): (u32, u64)) -> bool {
    start_time(pid) == Some(start)
}

/// The owner recorded on namespace `ns`'s `lo`.
fn namespace_owner(ip: &Path, ns: &str) -> Option<(u32, u64)> {
    owner_in(&run(ip, &["-n", ns, "-o", "link", "show", "lo"]).ok()?)
}

/// Why an existing namespace cannot be taken (leftovers of dead owners are already gone).
fn taken_namespace(ip: &Path, ns: &str) -> HostsError {
    match namespace_owner(ip, ns) {
        Some((pid, _)) => HostsError::InUse {
            what: format!("network namespace {ns}"),
            pid,
        },
        None => HostsError::Foreign {
            what: format!("network namespace {ns}"),
            remove: format!("ip netns del {ns}"),
        },
    }
}

/// Why the root port's name cannot be taken.
fn taken_link(ip: &Path) -> HostsError {
    let text = run(ip, &["-o", "link", "show", ROOT_LINK]).unwrap_or_default();
    match owner_in(&text) {
        Some((pid, _)) => HostsError::InUse {
            what: format!("interface {ROOT_LINK}"),
            pid,
        },
        None => HostsError::Foreign {
            what: format!("interface {ROOT_LINK}"),
            remove: format!("ip link del {ROOT_LINK}"),
        },
    }
}

/// Kills every process in `ns` (SIGKILL by PID), waits (bounded) until they are gone, then
/// deletes the namespace. A process left running would keep the namespace alive, unnamed.
fn delete_namespace(ip: &Path, ns: &str) -> Result<(), String> {
    let pids: Vec<u32> = run(ip, &["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| process_running(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    run(ip, &["netns", "del", ns])
        .map(|_| ())
        .map_err(|(command, stderr)| format!("`{command}` failed: {stderr}"))
}

/// Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn resolv_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Removes a `resolv.conf` written here and its folder, if nothing else is in it.
fn remove_resolv_dir(dir: &Path) {
    let file = dir.join("resolv.conf");
    let ours = std::fs::read_to_string(&file).is_ok_and(|t| t.starts_with(RESOLV_MARK));
    if ours {
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes what an `up --hosts` killed before its teardown left: namespaces whose owner is
/// dead (with the processes still in them and their `resolv.conf`), and the root port.
/// Returns what it removed.
pub fn remove_leftovers(ip: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let list = run(ip, &["netns", "list"]).unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if !ns.starts_with(NS_PREFIX) {
            continue;
        }
        if namespace_owner(ip, ns).is_some_and(|o| !owner_alive(o)) {
            match delete_namespace(ip, ns) {
                Ok(()) => removed.push(format!("network namespace {ns}")),
                Err(e) => eprintln!("trellis up: cannot remove leftover {ns}: {e}"),
            }
            remove_resolv_dir(&resolv_dir(ns));
        }
    }
    let link = run(ip, &["-o", "link", "show", ROOT_LINK]).unwrap_or_default();
    if owner_in(&link).is_some_and(|o| !owner_alive(o))
        && run(ip, &["link", "del", ROOT_LINK]).is_ok()
    {
        removed.push(format!("interface {ROOT_LINK}"));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_take_addresses_from_ten_inside_the_subnet() {
        let subnet: Ipv4Cidr = "10.78.0.0/24".parse().unwrap();
        let addrs = host_addrs(subnet, 3).unwrap();
        assert_eq!(addrs[0], Ipv4Addr::new(10, 78, 0, 10));
        assert_eq!(addrs[2], Ipv4Addr::new(10, 78, 0, 12));
        assert_eq!(host_addrs(subnet, 245).unwrap().len(), 245);
        assert!(matches!(
            host_addrs(subnet, 246),
            Err(HostsError::SubnetTooSmall { .. })
        ));
        let small: Ipv4Cidr = "10.78.0.0/28".parse().unwrap();
        assert_eq!(
            host_addrs(small, 5).unwrap()[4],
            Ipv4Addr::new(10, 78, 0, 14)
        );
        assert!(host_addrs(small, 6).is_err());
    }

    #[test]
    fn owners_are_read_back_from_link_aliases() {
        let line = "1: lo: <LOOPBACK,UP> mtu 65536 ...\\    alias trellis-up-owner-1234-5678";
        assert_eq!(owner_in(line), Some((1234, 5678)));
        assert_eq!(owner_in("1: lo: <LOOPBACK> mtu 65536"), None);
        assert_eq!(owner_in("alias trellis-up-owner-x-1"), None);
        let me = std::process::id();
        let alias = owner_alias(me);
        assert!(owner_alive(owner_in(&alias).unwrap()), "{alias}");
        // A reused PID started at another time is not the owner.
        assert!(!owner_alive((me, start_time(me).unwrap() + 1)));
    }
}
