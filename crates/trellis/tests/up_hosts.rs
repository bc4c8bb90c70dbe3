//! `trellis up --hosts` on the bundled example: every instance in a network namespace of its
//! own. From one host, an unmodified `curl http://ratings:9080/` by name reaches a ratings
//! instance (and the other way round, `reviews`), carried by the hosts' capturing sidecars;
//! SIGINT removes every namespace, interface, resolv.conf and process it made, and leaves the
//! root namespace's iptables rules as they were. A run killed with `kill -9` leaves its
//! namespaces behind, and the next start removes them (and what still ran in them).
//!
//! The namespace names are fixed (`trellis-<instance>`), so these tests run one at a time, under
//! the chaos suite's lock (which also keeps them apart from the other namespace tests).
//! Needs root, `ip`, `iptables` and `curl` (scripts/test.sh).
mod common;
mod netns;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_trellis");
/// The example's instances, in manifest order.
const INSTANCES: [&str; 5] = [
    "reviews-v1-0",
    "reviews-v1-1",
    "reviews-v2-0",
    "ratings-v1-0",
    "ratings-v1-1",
];
const SWITCH_NS: &str = "trellis-up-switch";
const ROOT_LINK: &str = "trellis-up";
/// How long `up --hosts` may take to print its banner (a debug build on a small machine).
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long it may take to stop after SIGINT.
const STOP_LIMIT: Duration = Duration::from_secs(60);

fn manifest() -> String {
    format!("{}/../../examples/mesh.yaml", env!("CARGO_MANIFEST_DIR"))
}

/// `trellis up --hosts` as a child of the test; SIGTERM then SIGKILL (by PID) when dropped.
struct UpHosts {
    child: Child,
    banner: Vec<String>,
    /// Its stdout, line by line (kept, so its later lines find a reader).
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl UpHosts {
    /// Starts it and waits (bounded) for its banner's last line.
    fn start(dir: &Path, tag: &str) -> UpHosts {
        let stderr = dir.join(format!("{tag}.stderr.log"));
        let work = dir.join(tag);
        let mut child = Command::new(BIN)
            .args([
                "up",
                "--hosts",
                &manifest(),
                &format!("--outbound={}", common::free_addr()),
                &format!("--admin={}", common::free_addr()),
                &format!("--control={}", common::free_addr()),
                "--upstream-base=0",
                &format!("--work-dir={}", work.display()),
                "--exit-after=300s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr log"))
            .spawn()
            .expect("start trellis up --hosts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut up = UpHosts {
            child,
            banner: Vec::new(),
            lines: rx,
            stderr,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match up
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let done = line.contains("trellis up: ready");
                    up.banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "trellis up --hosts exited before its banner: {:?}\nstderr: {}\nlogs in {}",
                    up.banner,
                    up.stderr_text(),
                    work.display()
                ),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "trellis up --hosts printed no banner within {START_LIMIT:?}: {:?}\n\
                     stderr: {}\nlogs in {}",
                    up.banner,
                    up.stderr_text(),
                    work.display()
                ),
            }
        }
        up
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal` by PID and waits (bounded) for the exit.
    fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "trellis up did not exit within {limit:?} of {signal}: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for UpHosts {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ns_of(instance: &str) -> String {
    format!("trellis-{instance}")
}

/// The namespaces `up --hosts` makes for the example.
fn our_namespaces() -> Vec<String> {
    INSTANCES
        .iter()
        .map(|i| ns_of(i))
        .chain([SWITCH_NS.to_string()])
        .collect()
}

fn output(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn stdout(program: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&output(program, args).stdout).into_owned()
}

/// The namespaces that exist now, by name.
fn namespaces() -> Vec<String> {
    stdout("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `iptables-save` of the root namespace without counters and comments: what rules exist.
fn root_rules() -> String {
    netns::rule_text(&stdout("iptables-save", &[]))
}

/// The PIDs of every process in our namespaces.
fn pids_in_namespaces() -> Vec<u32> {
    our_namespaces()
        .iter()
        .flat_map(|ns| {
            stdout("ip", &["netns", "pids", ns])
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether `pid` runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// `curl http://NAME:PORT/` inside `ns`, unmodified: the JSON body of the first 200 within a
/// few tries (the example's ratings fails 20% of requests; its route retries most away).
fn curl_by_name(ns: &str, url: &str) -> serde_json::Value {
    let mut last = String::new();
    for _ in 0..5 {
        let out = output(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "curl",
                "-sS",
                "-m",
                "10",
                "-w",
                "\n%{http_code}",
                url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some((body, "200")) = text.rsplit_once('\n') {
            return serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{url} from {ns}: not JSON ({e}): {body}"));
        }
        last = format!("{text} {}", String::from_utf8_lossy(&out.stderr));
    }
    panic!("{url} from {ns} never answered 200: {last}");
}

/// Asserts nothing `up --hosts` made is left: namespaces, the root port, resolv.conf files, the
/// processes that ran in them; and that the root namespace's rules are as they were.
fn assert_all_gone(rules_before: &str, pids: &[u32]) {
    let left: Vec<String> = namespaces()
        .into_iter()
        .filter(|n| our_namespaces().contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(
        !output("ip", &["link", "show", ROOT_LINK]).status.success(),
        "interface {ROOT_LINK} left behind"
    );
    for ns in our_namespaces() {
        let dir = Path::new("/etc/netns").join(&ns);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    let alive: Vec<&u32> = pids.iter().filter(|p| running(**p)).collect();
    assert!(alive.is_empty(), "processes left running: {alive:?}");
    assert_eq!(root_rules(), rules_before, "root iptables rules changed");
}

/// The checks both tests make once the mesh is up: the banner names every host and the
/// command to paste, the namespaces exist, and an unchanged curl by name from one host reaches
/// the other service's app.
fn assert_hosts_answer(up: &UpHosts) {
    let banner = up.banner.join("\n");
    for (i, instance) in INSTANCES.iter().enumerate() {
        let line = format!("{} 10.78.0.{}", ns_of(instance), 10 + i);
        let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            banner.lines().any(|l| words(l).contains(&line)),
            "banner lacks {line:?}:\n{banner}"
        );
    }
    assert!(
        banner.contains("ip netns exec trellis-reviews-v1-0 curl http://ratings:9080/"),
        "{banner}"
    );
    let present = namespaces();
    for ns in our_namespaces() {
        assert!(present.contains(&ns), "{ns} missing: {present:?}");
    }
    let ratings = curl_by_name(&ns_of("reviews-v1-0"), "http://ratings:9080/");
    assert_eq!(ratings["service"], "ratings", "{ratings}");
    let instance = ratings["instance"].as_str().unwrap_or_default();
    assert!(instance.starts_with("ratings-v1-"), "{ratings}");
    // The other way round: reviews' policy lets in mesh callers of namespace `default`, which
    // the ratings sidecar's certificate says it is.
    let reviews = curl_by_name(&ns_of("ratings-v1-1"), "http://reviews:9080/");
    assert_eq!(reviews["service"], "reviews", "{reviews}");
    assert!(
        reviews["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("reviews-v")),
        "{reviews}"
    );
}

#[tokio::test]
async fn up_hosts_answers_by_name_and_sigint_removes_everything() {
    netns::require_tools();
    let _lock = netns::lock_suite(Duration::from_secs(900)).await;
    let dir = common::tempdir("up-hosts");
    let rules_before = root_rules();
    let started = Instant::now();
    let mut up = UpHosts::start(&dir, "up");
    eprintln!("banner after {:?}", started.elapsed());
    assert_hosts_answer(&up);

    // A user's process on a host, still running at Ctrl-C: stopped with the mesh too.
    let mut user = Command::new("ip")
        .args(["netns", "exec", &ns_of("ratings-v1-1"), "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start sleep in a host");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_in_namespaces().contains(&user.id()) {
        assert!(Instant::now() < deadline, "sleep never ran in the host");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = pids_in_namespaces();
    // Five apps, five sidecars, the user's sleep.
    assert!(pids.len() >= 11, "{pids:?}");

    let status = up.signal_and_wait("-INT", STOP_LIMIT);
    assert!(status.success(), "{status}: {}", up.stderr_text());
    let user_status = user.wait().expect("reap sleep");
    assert!(!user_status.success(), "sleep was killed: {user_status}");
    assert_all_gone(&rules_before, &pids);
    eprintln!("whole test {:?}", started.elapsed());
}

#[tokio::test]
async fn a_run_killed_with_sigkill_is_cleaned_by_the_next_start() {
    netns::require_tools();
    let _lock = netns::lock_suite(Duration::from_secs(900)).await;
    let dir = common::tempdir("up-hosts-kill");
    let rules_before = root_rules();
    let mut first = UpHosts::start(&dir, "first");
    let pids = pids_in_namespaces();
    assert!(pids.len() >= 10, "{pids:?}");
    first.signal_and_wait("-KILL", Duration::from_secs(10));
    // No handler saw that: the namespaces stay until the next start.
    let present = namespaces();
    for ns in our_namespaces() {
        assert!(present.contains(&ns), "{ns} gone without a teardown?");
    }

    let mut second = UpHosts::start(&dir, "second");
    let said = second.stderr_text();
    for ns in our_namespaces() {
        assert!(
            said.contains(&format!("removed network namespace {ns}")),
            "the second start did not report removing {ns}: {said}"
        );
    }
    let alive: Vec<&u32> = pids.iter().filter(|p| running(**p)).collect();
    assert!(alive.is_empty(), "the first run's processes: {alive:?}");
    assert_hosts_answer(&second);
    let pids = pids_in_namespaces();
    let status = second.signal_and_wait("-INT", STOP_LIMIT);
    assert!(status.success(), "{status}: {}", second.stderr_text());
    assert_all_gone(&rules_before, &pids);
}
