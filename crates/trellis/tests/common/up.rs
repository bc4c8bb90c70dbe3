//! `trellis up` on a bundled example, as a user starts it: the banner read from its stdout, its
//! work directory (join token, logs) kept, and the whole mesh stopped when the test ends.
use super::{free_addr, tempdir, BIN};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `trellis up`, stopped when dropped: SIGTERM first, so it stops the processes it
/// started; SIGKILL by PID only if it hangs.
pub struct Up {
    pub child: Child,
    /// The entry sidecar's outbound listener.
    pub outbound: SocketAddr,
    /// The entry sidecar's admin endpoint.
    pub admin: SocketAddr,
    /// The control plane's API (and dashboard).
    pub control: SocketAddr,
    /// `--work-dir`: the join token, the processes' logs.
    pub dir: PathBuf,
    /// Its stdout up to and including the ready line.
    pub banner: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
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

/// Starts `trellis up examples/{example}` (exiting by itself after `exit_after`) and returns once
/// it printed its ready line, or panics after `ready_within`.
///
/// Ports are chosen free and bound later by the mesh's processes; another test can take one in
/// between, and then `trellis up` exits before its banner. Such a start is tried again with
/// other ports (bounded).
pub fn up(example: &str, exit_after: &str, ready_within: Duration) -> Up {
    for _ in 0..3 {
        if let Some(up) = try_up(example, exit_after, ready_within) {
            return up;
        }
    }
    panic!("trellis up exited before it was ready, three times; see the logs above");
}

/// One start; `None` when it exited before its banner.
fn try_up(example: &str, exit_after: &str, ready_within: Duration) -> Option<Up> {
    let dir = tempdir("up");
    let (outbound, admin, control) = (free_addr(), free_addr(), free_addr());
    let path = format!("{}/../../examples/{example}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(BIN)
        .args([
            "up",
            &path,
            &format!("--outbound={outbound}"),
            &format!("--admin={admin}"),
            &format!("--control={control}"),
            "--upstream-base=0",
            &format!("--work-dir={}", dir.display()),
            &format!("--exit-after={exit_after}"),
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("up.stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + ready_within;
    let mut banner = Vec::new();
    loop {
        let err = || std::fs::read_to_string(dir.join("up.stderr.log")).unwrap_or_default();
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let done = line.contains("trellis up: ready");
                banner.push(line);
                if done {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                eprintln!(
                    "trellis up exited before it was ready: {banner:?}\nstderr: {}",
                    err()
                );
                return None;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "trellis up never became ready: {banner:?}\nstderr: {}",
                    err()
                )
            }
        }
    }
    Some(Up {
        child,
        outbound,
        admin,
        control,
        dir,
        banner,
    })
}
