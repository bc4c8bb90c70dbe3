//! What every trellis process does before its verb runs: logging, the descriptor limit, the
//! exit-with-parent watch, and the async runtime sized as asked.
use std::process::ExitCode;

/// Logs to stderr with `filter` (tracing's env-filter syntax; `info` when it does not parse),
/// in colour only on a terminal (and not with `NO_COLOR` set): a log file or a pipe gets plain
/// text a reader or `grep` can use.
pub fn init_logging(filter: &str) {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Libraries' warnings about what a peer did (h2 writes one per rapid-reset connection and
    // per unsolicited PING ack) are written at most about once a second each.
    let format =
        trellis_net::liblog::ThrottleLibraryWarnings::new(tracing_subscriber::fmt::format());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .event_format(format)
        .init();
}

/// Sets the process up, runs `verb` on a runtime of `workers` threads (0: one per CPU; 1: the
/// current thread only) and turns its outcome into the exit code, printing the error chain.
pub fn run<F>(log: &str, workers: usize, verb: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    init_logging(log);
    crate::orphan::exit_with_parent_if_asked();
    // Every connection is a descriptor; many systems start processes at a soft limit of 1024
    // while allowing far more. Connection caps are fitted under whatever limit is in force.
    trellis_net::fdlimit::raise();
    let mut builder = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(verb) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
