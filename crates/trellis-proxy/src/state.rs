//! What every connection handler shares: the current config snapshot (swapped atomically, read
//! without locks), upstream connections, metrics, and who this proxy is.
use crate::config::Snapshot;
use crate::http::upstream::Upstreams;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The service instance this sidecar stands beside.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    pub service: String,
    pub namespace: String,
    pub zone: Option<String>,
}

/// Knobs that are not part of mesh config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    /// Largest request head (line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
        }
    }
}

pub struct ProxyState {
    pub snapshot: ArcSwapOption<Snapshot>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub identity: LocalIdentity,
    pub settings: Settings,
    /// The last config change that was rejected, and why (shown on `/config`).
    pub last_error: Mutex<Option<String>>,
}

impl ProxyState {
    pub fn new(identity: LocalIdentity, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwapOption::empty(),
            upstreams: Upstreams::new(settings.connect_timeout),
            metrics: Metrics::new(),
            identity,
            settings,
            last_error: Mutex::new(None),
        })
    }

    /// Installs a new snapshot; requests already running keep the one they started with.
    pub fn install(&self, snapshot: Snapshot) {
        self.metrics.config_version.set(snapshot.version as i64);
        self.snapshot.store(Some(Arc::new(snapshot)));
    }

    pub fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}
