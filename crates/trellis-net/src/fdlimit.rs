//! The open-files limit: raised as far as allowed at startup, and respected by connection caps.
//!
//! Why: every connection is a file descriptor. Many systems start processes with a soft limit
//! of 1024 while allowing far more (the hard limit); a control plane for 1000 proxies needs
//! more than that. And a cap on accepted connections above the limit is no cap at all: `accept`
//! starts failing (`EMFILE`) before the cap is reached, and so does everything else that needs
//! a descriptor (the store, outgoing connections). [`fit_cap`] keeps a cap under the limit with
//! room to spare, so a flood of connections is shed by the cap rather than by `EMFILE`.

/// Raises the soft limit on open files to the hard limit. Returns the soft limit now in
/// force, or `None` when it cannot be read.
pub fn raise() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => Some(soft),
        Err(e) => {
            tracing::debug!(error = %e, "cannot raise the open-files limit");
            soft_limit()
        }
    }
}

/// The soft limit on open files, when it can be read.
pub fn soft_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// Descriptors kept for everything but accepted connections under a limit of `limit`: an
/// eighth of it, at least 64.
pub fn reserve(limit: u64) -> u64 {
    (limit / 8).max(64)
}

/// `wanted`, lowered if needed to fit under the soft open-files limit with [`reserve`] to spare
/// (at least 16).
pub fn fit_cap(wanted: usize) -> usize {
    match soft_limit() {
        Some(limit) => fit_cap_under(wanted, limit),
        None => wanted,
    }
}

fn fit_cap_under(wanted: usize, limit: u64) -> usize {
    let room = limit.saturating_sub(reserve(limit)).max(16);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_under_the_limit() {
        assert_eq!(fit_cap_under(16_384, 1024), 896);
        assert_eq!(fit_cap_under(100, 1024), 100);
        assert_eq!(fit_cap_under(16_384, 1 << 20), 16_384);
        assert_eq!(fit_cap_under(500, 20), 16);
        let raised = raise().expect("readable on Linux");
        assert_eq!(soft_limit(), Some(raised));
        assert!(fit_cap(usize::MAX) < raised as usize);
    }
}
