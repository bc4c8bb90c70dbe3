//! The processes `trellis up` starts must not outlive it, however it dies — SIGKILL included,
//! which no handler of its own ever sees. `up` marks each child with [`ENV`]; a marked process
//! watches its parent's PID and exits once it changes (it was re-parented: the parent is gone).
//!
//! Polling `getppid` every [`POLL`] keeps this free of unsafe code (`PR_SET_PDEATHSIG` would need
//! a `pre_exec` hook) and costs nothing measurable.
use std::time::Duration;

/// Set on a child to make it exit with the process that started it.
pub const ENV: &str = "TRELLIS_EXIT_WITH_PARENT";

const POLL: Duration = Duration::from_millis(200);

/// Starts the watch when this process was asked to exit with its parent.
pub fn exit_with_parent_if_asked() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    let parent = std::os::unix::process::parent_id();
    let watch = move || loop {
        let now = std::os::unix::process::parent_id();
        if now != parent || now == 1 {
            eprintln!("trellis: the process that started this one ({parent}) is gone; exiting");
            std::process::exit(1);
        }
        std::thread::sleep(POLL);
    };
    if let Err(e) = std::thread::Builder::new()
        .name("exit-with-parent".into())
        .spawn(watch)
    {
        eprintln!("trellis: cannot watch the parent process: {e}");
    }
}
