//! Self-registration: a sidecar with an inbound side registers its workload with the control
//! plane under a lease and keeps the lease alive, so the workload leaves every caller's endpoint
//! set soon after the instance dies (kill -9 included). On graceful shutdown it deregisters
//! first, before draining, so callers stop sending before the listener closes.
//!
//! Any control-plane replica will do: they share the store, so a keep-alive may go to a
//! different replica than the registration did.
//!
//! **Healthy only once it can serve.** Callers leave out `Unhealthy` workloads, so a sidecar
//! registers as `Unhealthy` at once (the workload is visible, and takes no traffic) and reports
//! `Healthy` only when a request sent to it would reach the app: its first config is in force,
//! it holds its workload certificate when the control plane's CA issues one (until then its
//! inbound gate answers `503 not-ready` and mTLS callers cannot even connect), and the app is
//! reachable, meaning the configured health check passes, or with none a TCP connection to the
//! app is accepted. Registering as `Healthy` at start made callers send to a sidecar that could
//! only refuse them. From then on the health check (when configured) moves it between the two.
use crate::control_api::ControlApi;
use crate::resilience::health::Health;
use crate::state::ProxyState;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_api::service::WorkloadHealth;
use trellis_api::{Resource, Workload};

/// How often readiness and the health verdict are looked at.
const HEALTH_PERIOD: Duration = Duration::from_millis(200);
/// How long the app gets to accept the readiness probe's TCP connection.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Registration {
    api: Arc<ControlApi>,
    workload: Mutex<Workload>,
    ttl: Duration,
    lease: AtomicI64,
    /// One registration at a time (the keep-alive loop and a health change may both register):
    /// the lease kept is then always the one the workload was last written under.
    registering: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RegistrationError(String);

impl Registration {
    pub fn new(api: Arc<ControlApi>, workload: Workload, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            api,
            workload: Mutex::new(workload),
            ttl,
            lease: AtomicI64::new(0),
            registering: tokio::sync::Mutex::new(()),
        })
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), RegistrationError> {
        self.api
            .call(method, path, body)
            .await
            .map_err(|e| RegistrationError(e.0))
    }

    fn workload(&self) -> Result<Workload, RegistrationError> {
        self.workload
            .lock()
            .map(|w| w.clone())
            .map_err(|_| RegistrationError("registration state poisoned".into()))
    }

    /// Registers (as `Unhealthy` until the sidecar can serve, see the module docs), then keeps
    /// the lease alive and reports health changes, for as long as the task runs.
    pub async fn run(self: Arc<Self>, state: Arc<ProxyState>) {
        if let Ok(mut w) = self.workload.lock() {
            w.spec.health = WorkloadHealth::Unhealthy;
        }
        if let Err(e) = self.register().await {
            tracing::warn!(error = %e, "registration failed; retrying");
        }
        tokio::select! {
            _ = self.clone().keep_alive_loop() => {}
            _ = self.report_health(state) => {}
        }
    }

    /// Follows readiness and then the local app's health verdict, reporting each change.
    async fn report_health(&self, state: Arc<ProxyState>) {
        let mut served = false;
        let mut waiting_logged = None;
        loop {
            let health = match serving(&state, served).await {
                Ok(()) => {
                    if !served {
                        tracing::info!("ready to serve: reporting the workload healthy");
                    }
                    served = true;
                    WorkloadHealth::Healthy
                }
                Err(why) => {
                    if !served && waiting_logged.as_ref() != Some(&why) {
                        tracing::info!(reason = %why, "not reporting the workload healthy yet");
                        waiting_logged = Some(why);
                    }
                    WorkloadHealth::Unhealthy
                }
            };
            self.set_health(health).await;
            tokio::time::sleep(HEALTH_PERIOD).await;
        }
    }

    /// Reports the local app's health: the workload is registered again with it, so the control
    /// plane takes an unhealthy instance out of every caller's endpoint set and puts it back
    /// when it recovers (and the old lease, no longer holding anything, is revoked).
    pub async fn set_health(&self, health: trellis_api::service::WorkloadHealth) {
        let changed = match self.workload.lock() {
            Ok(mut w) if w.spec.health != health => {
                w.spec.health = health;
                true
            }
            _ => false,
        };
        if changed {
            if let Err(e) = self.register().await {
                tracing::warn!(error = %e, "could not report health; the keep-alive loop retries");
                self.lease.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Registers the workload under a fresh lease, then revokes the lease it was registered
    /// under before: that one holds nothing any more (the workload moved to the new lease), and
    /// left to lapse it would linger in the store for a TTL and be logged as deleting resources.
    pub async fn register(&self) -> Result<(), RegistrationError> {
        let _one_at_a_time = self.registering.lock().await;
        let current = self.workload()?;
        let name = current.metadata.name.clone();
        let workload = serde_json::to_value(Resource::Workload(current))
            .map_err(|e| RegistrationError(e.to_string()))?;
        let body = json!({"workload": workload, "ttlSeconds": self.ttl.as_secs().max(1)});
        let (status, v) = self
            .call(http::Method::POST, "/api/v1/workloads", Some(body))
            .await?;
        match v["leaseId"].as_i64() {
            Some(id) if status < 300 => {
                let old = self.lease.swap(id, Ordering::Relaxed);
                tracing::info!(workload = %name, lease = format!("{id:x}"), "registered with the control plane");
                if old != 0 && old != id {
                    self.revoke(old).await;
                }
                Ok(())
            }
            _ => Err(RegistrationError(format!(
                "registration refused ({status}): {}",
                v["error"].as_str().unwrap_or("no reason given")
            ))),
        }
    }

    /// Keeps the lease alive every ttl/3 for as long as the task runs; registers again when the
    /// lease is gone (the control plane lost it, or this proxy was cut off longer than the TTL).
    pub async fn keep_alive_loop(self: Arc<Self>) {
        let period = (self.ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(period).await;
            let id = self.lease.load(Ordering::Relaxed);
            let result = if id == 0 {
                self.register().await
            } else {
                match self
                    .call(http::Method::POST, &format!("/api/v1/leases/{id}"), None)
                    .await
                {
                    Ok((404, _)) => {
                        tracing::warn!("lease expired; registering again");
                        self.register().await
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "keep-alive failed; will retry");
            }
        }
    }

    /// Revokes a lease the workload no longer lives under. A failure is harmless: the lease
    /// lapses after its TTL instead.
    async fn revoke(&self, lease: i64) {
        let path = format!("/api/v1/leases/{lease}");
        match self.call(http::Method::DELETE, &path, None).await {
            Ok((status, _)) if status < 300 || status == 404 => {}
            Ok((status, v)) => {
                tracing::debug!(lease, status, error = %v["error"], "old lease not revoked; it will lapse")
            }
            Err(e) => tracing::debug!(lease, error = %e, "old lease not revoked; it will lapse"),
        }
    }

    /// Revokes the lease, removing the workload from every caller at once.
    pub async fn deregister(&self) {
        let id = self.lease.swap(0, Ordering::Relaxed);
        if id == 0 {
            return;
        }
        match self
            .call(http::Method::DELETE, &format!("/api/v1/leases/{id}"), None)
            .await
        {
            Ok(_) => tracing::info!("deregistered from the control plane"),
            Err(e) => tracing::warn!(error = %e, "deregistration failed; the lease will lapse"),
        }
    }
}

/// Whether a request sent to this sidecar now would reach the app; `Err` says why not. Before
/// the sidecar first served (`served` false), a health check that has not decided yet, or an
/// app that does not accept a connection, is not ready; after, only the health check's verdict
/// counts (an undecided check after a config change does not take a serving workload out).
pub async fn serving(state: &ProxyState, served: bool) -> Result<(), String> {
    state.ready().map_err(str::to_string)?;
    match state.local_health() {
        Some(Health::Healthy) => Ok(()),
        Some(Health::Unhealthy(why)) => Err(format!("the app's health check fails: {why}")),
        Some(Health::Unknown) if !served => {
            Err("the app's health check has not passed yet".to_string())
        }
        Some(Health::Unknown) => Ok(()),
        None if served => Ok(()),
        None => match state.app {
            Some(app) => app_accepts(app).await,
            None => Ok(()),
        },
    }
}

async fn app_accepts(app: SocketAddr) -> Result<(), String> {
    match tokio::time::timeout(APP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(app)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the app at {app} does not accept connections: {e}")),
        Err(_) => Err(format!(
            "the app at {app} did not accept a connection within {APP_CONNECT_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Snapshot;
    use crate::settings::{LocalIdentity, Settings};

    fn identity() -> LocalIdentity {
        LocalIdentity {
            service: "web".into(),
            namespace: "default".into(),
            zone: None,
        }
    }

    fn install_config(state: &ProxyState) {
        let text = "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80, protocol: http}]\n";
        let resources = trellis_api::parse_documents("test", text).expect("parses");
        let snap = Snapshot::build(1, "test".into(), resources, None, &identity()).expect("builds");
        state.install(snap);
    }

    #[tokio::test]
    async fn not_healthy_before_config_certificate_and_app() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = app.local_addr().unwrap();
        let state = ProxyState::new(identity(), Settings::default(), Some(addr));
        state.expect_tls();
        let why = serving(&state, false).await.unwrap_err();
        assert!(why.contains("no config"), "{why}");
        install_config(&state);
        let why = serving(&state, false).await.unwrap_err();
        assert!(why.contains("certificate"), "{why}");
    }

    #[tokio::test]
    async fn not_healthy_until_the_app_accepts_a_connection() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = app.local_addr().unwrap();
        drop(app);
        let state = ProxyState::new(identity(), Settings::default(), Some(addr));
        install_config(&state);
        let why = serving(&state, false).await.unwrap_err();
        assert!(why.contains("does not accept connections"), "{why}");
        // Once it has served, the TCP probe is not repeated (a health check, if any, decides).
        assert_eq!(serving(&state, true).await, Ok(()));
        let _app = tokio::net::TcpListener::bind(addr).await.unwrap();
        assert_eq!(serving(&state, false).await, Ok(()));
    }
}
