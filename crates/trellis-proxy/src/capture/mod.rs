//! Transparent capture (`trellis proxy --intercept`): iptables rules that send the app's
//! outbound TCP to the proxy's capture listener, inbound TCP to its inbound listener and port-53
//! traffic to its DNS answerer, installed when the proxy starts and removed when it stops.
//!
//! Why the proxy installs the rules itself instead of a separate privileged `trellis init` step
//! (istio-init, linkerd-init): on a host or VM there is no pod whose init container runs first
//! and whose network namespace dies with it. Rules tied to the proxy's own lifetime are removed
//! when it stops (SIGTERM, Ctrl-C, `/shutdown`, a normal exit), so a stopped sidecar never leaves
//! the host's traffic pointing at a closed port; and the proxy needs `CAP_NET_ADMIN` anyway to
//! mark its own sockets. After a `kill -9` (or a power cut) the rules stay: the app's outbound
//! TCP then meets a closed port (connection refused: capture fails closed, never around the
//! mesh) until the proxy starts again, which removes any rules left over before it installs,
//! or until `trellis intercept-remove` removes them.
//!
//! What it must never do: capture its own traffic (the mark rule is first), leave half a rule
//! set installed when a rule fails (it removes what it added and says which rule failed), or
//! touch a chain that is not its own.
pub mod accept;
pub mod rules;

pub use rules::{RuleSet, INBOUND_CHAIN, OUTPUT_CHAIN};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Most times one jump is deleted (a rule installed twice by hand is removed twice).
const MAX_JUMP_DELETES: usize = 16;

/// Why capture could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot run {program}: {error} (capture needs Debian's `iptables` package, nft backend, and root or CAP_NET_ADMIN)")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("`{program} {args}` failed: {stderr}")]
    Rule {
        program: String,
        args: String,
        stderr: String,
    },
}

/// Runs one iptables command (`-w`: wait for the xtables lock rather than fail).
fn iptables(program: &Path, args: &[String]) -> Result<(), CaptureError> {
    let out = Command::new(program)
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| CaptureError::Spawn {
            program: program.display().to_string(),
            error,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Rule {
            program: program.display().to_string(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Removes every rule and chain capture may have added; succeeds when none are there.
pub fn remove(program: &Path) -> Result<(), CaptureError> {
    for step in rules::removal() {
        match step {
            rules::Removal::Jump(args) => {
                for _ in 0..MAX_JUMP_DELETES {
                    match iptables(program, &args) {
                        Ok(()) => continue,
                        Err(CaptureError::Rule { .. }) => break, // no such rule (any more)
                        Err(e) => return Err(e),
                    }
                }
            }
            rules::Removal::Chain(chain) => {
                let flush = vec!["-t".into(), "nat".into(), "-F".into(), chain.into()];
                if iptables(program, &flush).is_ok() {
                    let delete = vec!["-t".into(), "nat".into(), "-X".into(), chain.into()];
                    iptables(program, &delete)?;
                }
            }
        }
    }
    Ok(())
}

/// Installed rules; dropping it removes them.
pub struct Capture {
    program: PathBuf,
    removed: bool,
}

impl Capture {
    /// Removes leftovers, then installs `rules`. On a failed rule, removes what it added.
    pub fn install(program: impl Into<PathBuf>, rules: &RuleSet) -> Result<Self, CaptureError> {
        let program = program.into();
        remove(&program)?;
        for args in rules.install() {
            if let Err(e) = iptables(&program, &args) {
                let _ = remove(&program);
                return Err(e);
            }
        }
        tracing::info!(
            outbound_port = rules.outbound_port,
            inbound_port = ?rules.inbound_port,
            dns_port = ?rules.dns_port,
            mark = format!("{:#x}", rules.mark),
            "capture rules installed"
        );
        Ok(Self {
            program,
            removed: false,
        })
    }

    /// Removes the rules now (also done on drop).
    pub fn remove(mut self) -> Result<(), CaptureError> {
        self.removed = true;
        remove(&self.program)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        match remove(&self.program) {
            Ok(()) => tracing::info!("capture rules removed"),
            Err(e) => {
                tracing::error!(error = %e, "cannot remove the capture rules; run `trellis intercept-remove`")
            }
        }
    }
}
