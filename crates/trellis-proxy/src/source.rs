//! Where config comes from today: a YAML file, read at start and polled for changes. A change is
//! parsed, validated and compiled before it is installed; a bad change is logged, counted and
//! shown on `/config`, and the last good snapshot stays in force.
use crate::config::Snapshot;
use crate::metrics::ResultLabels;
use crate::state::ProxyState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    // The wrapped errors are part of each message, not error sources, so a report that prints
    // the source chain does not say everything twice.
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("invalid config:\n{0}")]
    Invalid(trellis_api::ConfigError),
    #[error("config cannot be applied: {0}")]
    Build(crate::config::BuildError),
}

impl From<trellis_api::ConfigError> for LoadError {
    fn from(e: trellis_api::ConfigError) -> Self {
        LoadError::Invalid(e)
    }
}

impl From<crate::config::BuildError> for LoadError {
    fn from(e: crate::config::BuildError) -> Self {
        LoadError::Build(e)
    }
}

/// Reads, parses and compiles `path` into a snapshot with the given version.
pub fn load(
    path: &Path,
    version: u64,
    previous: Option<&Snapshot>,
    local: &crate::settings::LocalIdentity,
) -> Result<Snapshot, LoadError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: display.clone(),
        error,
    })?;
    let resources = trellis_api::parse_documents(&display, &text)?;
    Ok(Snapshot::build(
        version, display, resources, previous, local,
    )?)
}

/// Polls `path` every `interval`; applies each change that loads cleanly.
pub async fn watch(path: PathBuf, interval: Duration, state: Arc<ProxyState>) {
    let mut last = std::fs::read(&path).ok();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let current = match tokio::fs::read(&path).await {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "config file unreadable; keeping current config");
                continue;
            }
        };
        if current == last {
            continue;
        }
        last = current;
        reload(&path, &state);
    }
}

/// Loads `path` and installs it, or keeps the current snapshot and records why not.
pub fn reload(path: &Path, state: &ProxyState) -> bool {
    let previous = state.snapshot.load_full();
    let version = previous.as_ref().map_or(1, |s| s.version + 1);
    let result = load(path, version, previous.as_deref(), &state.identity);
    let outcome = match result {
        Ok(snapshot) => {
            tracing::info!(path = %path.display(), version, "config applied");
            state.install(snapshot);
            state.set_last_error(None);
            "applied"
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config change rejected; keeping the last good config");
            state.set_last_error(Some(e.to_string()));
            "rejected"
        }
    };
    state
        .metrics
        .reloads
        .get_or_create(&ResultLabels { result: outcome })
        .inc();
    outcome == "applied"
}
