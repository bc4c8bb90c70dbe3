//! Self-registration: a sidecar with an inbound side registers its workload with the control
//! plane under a lease and keeps the lease alive, so the workload leaves every caller's endpoint
//! set soon after the instance dies (kill -9 included). On graceful shutdown it deregisters
//! first, before draining, so callers stop sending before the listener closes.
//!
//! Any control-plane replica will do: they share the store, so a keep-alive may go to a
//! different replica than the registration did.
use crate::control_api::ControlApi;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_api::{Resource, Workload};

pub struct Registration {
    api: Arc<ControlApi>,
    workload: Mutex<Workload>,
    ttl: Duration,
    lease: AtomicI64,
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

    /// Reports the local app's health: the workload is registered again with it, so the control
    /// plane takes an unhealthy instance out of every caller's endpoint set and puts it back
    /// when it recovers. The old lease, no longer holding anything, lapses.
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

    /// Registers the workload under a fresh lease.
    pub async fn register(&self) -> Result<(), RegistrationError> {
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
                self.lease.store(id, Ordering::Relaxed);
                tracing::info!(workload = %name, lease = format!("{id:x}"), "registered with the control plane");
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
