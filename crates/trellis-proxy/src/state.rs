//! What every connection handler shares: the current config snapshot (swapped atomically, read
//! without locks), upstream connections, metrics, and who this proxy is.
use crate::config::Snapshot;
use crate::metrics::Metrics;
use crate::resilience::health::{self, CheckConfig, Health};
use crate::settings::{LocalIdentity, Settings};
use crate::tls::MeshTls;
use crate::upstream::{self, Upstreams};
use arc_swap::ArcSwapOption;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;

pub struct ProxyState {
    pub snapshot: ArcSwapOption<Snapshot>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    pub access_log: Arc<crate::access_log::AccessLog>,
    /// Live taps (`trellis tap`, `trellis top`) open on this proxy.
    pub taps: Arc<crate::live::tap::Taps>,
    pub tracer: Arc<crate::trace::Exporter>,
    pub identity: LocalIdentity,
    pub settings: Settings,
    /// The last config change that was rejected, and why (shown on `/config`).
    pub last_error: Mutex<Option<String>>,
    /// The local application, when this sidecar has an inbound side.
    pub app: Option<SocketAddr>,
    /// Active health checking of the local app: the config it runs with and its verdicts.
    health: Mutex<Option<(CheckConfig, watch::Receiver<Health>)>>,
    /// The xDS client's status, when config comes from a control plane.
    control: Mutex<Option<watch::Receiver<trellis_xds::ClientStatus>>>,
    /// Mesh mTLS, once a certificate is in hand (at start for files, after the CA answered for
    /// the control plane); set once, then rotated underneath.
    tls: OnceLock<Arc<MeshTls>>,
    /// This sidecar's SPIFFE identity as a metric label, once it has a certificate.
    local_source: OnceLock<Arc<str>>,
    /// This sidecar's service as the inbound side's metric label, shared.
    service_label: Arc<str>,
    /// This sidecar's Workload name (its node id): the label, and the header naming it to peers.
    workload: OnceLock<(Arc<str>, http::HeaderValue)>,
    /// The workloads of callers, as inbound metrics label them.
    pub source_workloads: crate::metrics::workloads::WorkloadNames,
    /// On-demand discovery, when this proxy discovers services as they are called.
    on_demand: OnceLock<crate::ondemand::OnDemand>,
    /// Whether readiness waits for [`ProxyState::tls`] (a control plane's CA will provide it).
    tls_expected: std::sync::atomic::AtomicBool,
    /// Why this proxy is not ready although its config is in force (a gateway whose listeners
    /// are not bound yet); `None` when nothing else holds readiness back.
    held: Mutex<Option<&'static str>>,
    /// The version of each snapshot installed, for whoever acts on a change (the gateway).
    installed: watch::Sender<u64>,
    /// Inbound denials are logged at most about once a second: a hostile caller decides how
    /// often they happen.
    pub denial_log: trellis_net::LogThrottle,
    /// Other events a remote peer can cause once per connection or request (a refused
    /// handshake, an app that does not answer): also at most about a line a second.
    pub peer_log: trellis_net::LogThrottle,
}

impl ProxyState {
    pub fn new(identity: LocalIdentity, settings: Settings, app: Option<SocketAddr>) -> Arc<Self> {
        let metrics = Metrics::new();
        let service_label = Arc::from(identity.service.as_str());
        Arc::new(Self {
            snapshot: ArcSwapOption::empty(),
            upstreams: Upstreams::new(settings.upstream_idle_timeout),
            metrics: metrics.clone(),
            access_log: Arc::new(crate::access_log::AccessLog::new(
                metrics.access_log_dropped.clone(),
            )),
            taps: Arc::new(crate::live::tap::Taps::new(metrics.taps_open.clone())),
            tracer: Arc::new(crate::trace::Exporter::new(
                metrics.spans_exported.clone(),
                metrics.spans_dropped.clone(),
            )),
            identity,
            settings,
            last_error: Mutex::new(None),
            app,
            health: Mutex::new(None),
            control: Mutex::new(None),
            tls: OnceLock::new(),
            local_source: OnceLock::new(),
            service_label,
            workload: OnceLock::new(),
            source_workloads: Default::default(),
            on_demand: OnceLock::new(),
            tls_expected: std::sync::atomic::AtomicBool::new(false),
            held: Mutex::new(None),
            installed: watch::Sender::new(0),
            denial_log: trellis_net::LogThrottle::per_second(),
            peer_log: trellis_net::LogThrottle::per_second(),
        })
    }

    /// What every path that connects upstream needs of this proxy (see [`upstream::Context`]).
    pub fn upstream_context(&self) -> upstream::Context<'_> {
        upstream::Context {
            metrics: &self.metrics,
            tls: self.tls(),
            connect_timeout: self.settings.connect_timeout,
            workload: self.workload.get().map(|(_, header)| header),
        }
    }

    /// Turns on-demand discovery on (once, when the xDS client starts).
    pub fn set_on_demand(&self, on_demand: crate::ondemand::OnDemand) {
        let _ = self.on_demand.set(on_demand);
    }

    /// On-demand discovery, when this proxy discovers services as they are called.
    pub fn on_demand(&self) -> Option<&crate::ondemand::OnDemand> {
        self.on_demand.get()
    }

    /// Mesh mTLS, when this proxy has a certificate.
    pub fn tls(&self) -> Option<&Arc<MeshTls>> {
        self.tls.get()
    }

    /// Installs mesh mTLS (once) and applies the trust bundle of the config in force.
    pub fn set_tls(&self, tls: Arc<MeshTls>) {
        if let Some(id) = tls.certs.identity() {
            let _ = self.local_source.set(Arc::from(id.to_string()));
        }
        if self.tls.set(tls).is_err() {
            tracing::warn!("mesh TLS was already set up; keeping the first");
        }
        if let Some(snap) = self.snapshot.load_full() {
            self.apply_trust_bundle(&snap);
        }
    }

    /// The `source` label of this sidecar's outbound requests: its own identity.
    pub fn local_source(&self) -> Arc<str> {
        self.local_source
            .get()
            .cloned()
            .unwrap_or_else(crate::metrics::no_label)
    }

    /// This sidecar's service, as the inbound side labels its requests.
    pub fn service_label(&self) -> Arc<str> {
        self.service_label.clone()
    }

    /// Names this sidecar's instance (its Workload name, the node id) in metrics and to peers;
    /// the first name given stays. A name that is not a workload name is refused.
    pub fn set_workload(&self, name: &str) -> Result<(), String> {
        let header = crate::metrics::workloads::is_workload_name(name.as_bytes())
            .then(|| http::HeaderValue::from_str(name).ok())
            .flatten()
            .ok_or_else(|| format!("{name:?} is not a workload name: use 1 to 253 characters of a-z, A-Z, 0-9, '.', '-', '_'"))?;
        let _ = self.workload.set((Arc::from(name), header));
        Ok(())
    }

    /// This sidecar's instance as a metric label (`""` when it was not named).
    pub fn workload_label(&self) -> Arc<str> {
        self.workload
            .get()
            .map_or_else(crate::metrics::no_label, |(name, _)| name.clone())
    }

    /// The `source` label of a caller that proved no identity.
    pub fn unknown_source(&self) -> Arc<str> {
        crate::metrics::no_label()
    }

    /// Readiness waits for a workload certificate.
    pub fn expect_tls(&self) {
        self.tls_expected
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Readiness waits, saying `why`, until [`ProxyState::release_readiness`].
    pub fn hold_readiness(&self, why: &'static str) {
        if let Ok(mut held) = self.held.lock() {
            *held = Some(why);
        }
    }

    pub fn release_readiness(&self) {
        if let Ok(mut held) = self.held.lock() {
            *held = None;
        }
    }

    /// Ready to serve: config in force, when expected a certificate, and nothing held back.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.snapshot.load().is_none() {
            return Err("no config yet");
        }
        if self.tls_expected.load(std::sync::atomic::Ordering::Relaxed) && self.tls.get().is_none()
        {
            return Err("no workload certificate yet");
        }
        if let Some(why) = self.held.lock().ok().and_then(|h| *h) {
            return Err(why);
        }
        Ok(())
    }

    /// Tells of every snapshot installed from now on (its version; a receiver sees the latest).
    pub fn watch_installs(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }

    fn apply_trust_bundle(&self, snapshot: &Snapshot) {
        if let (Some(tls), Some(roots)) = (self.tls.get(), &snapshot.trust_roots) {
            tls.update_bundle(roots);
        }
    }

    /// Installs a new snapshot; requests already running keep the one they started with.
    pub fn install(&self, snapshot: Snapshot) {
        self.metrics.config_version.set(snapshot.version as i64);
        let check = self.health_check_config(&snapshot);
        // The bundle is parsed again only when it changed (most updates are endpoints).
        let previous = self.snapshot.load();
        if previous.as_ref().map(|p| &p.trust_roots) != Some(&snapshot.trust_roots) {
            self.apply_trust_bundle(&snapshot);
        }
        let version = snapshot.version;
        self.snapshot.store(Some(Arc::new(snapshot)));
        self.installed.send_replace(version);
        self.apply_health_check(check);
    }

    /// The active health check the own service's DestinationPolicy asks for.
    fn health_check_config(&self, snapshot: &Snapshot) -> Option<CheckConfig> {
        self.app?;
        snapshot.health_check.as_ref().map(CheckConfig::from_config)
    }

    /// Starts, restarts or stops the checker when its config changed. Dropping the old
    /// receiver ends the old checker.
    fn apply_health_check(&self, check: Option<CheckConfig>) {
        let (Some(app), Ok(mut current)) = (self.app, self.health.lock()) else {
            return;
        };
        if current.as_ref().map(|(c, _)| c) == check.as_ref() {
            return;
        }
        *current = check.map(|c| {
            let rx = health::spawn(app, c.clone());
            (c, rx)
        });
    }

    pub fn set_control_status(&self, rx: watch::Receiver<trellis_xds::ClientStatus>) {
        if let Ok(mut c) = self.control.lock() {
            *c = Some(rx);
        }
    }

    /// The xDS client's status as JSON, when config comes from a control plane.
    pub fn control_status(&self) -> Option<serde_json::Value> {
        let c = self.control.lock().ok()?;
        let status = c.as_ref()?.borrow().clone();
        serde_json::to_value(status).ok()
    }

    /// The local app's health verdict, when it is checked.
    pub fn local_health(&self) -> Option<Health> {
        let current = self.health.lock().ok()?;
        current.as_ref().map(|(_, rx)| rx.borrow().clone())
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
