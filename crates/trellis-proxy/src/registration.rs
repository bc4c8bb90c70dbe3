//! Self-registration: a sidecar with an inbound side registers its workload with the control
//! plane under a lease and keeps the lease alive, so the workload leaves every caller's endpoint
//! set soon after the instance dies (kill -9 included). On graceful shutdown it deregisters
//! first, before draining, so callers stop sending before the listener closes.
//!
//! Any control-plane replica will do: they share the store, so a keep-alive may go to a
//! different replica than the registration did.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trellis_api::{Resource, Workload};

/// How long one call to the control plane may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Registration {
    endpoints: Vec<String>,
    next: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    workload: Mutex<Workload>,
    ttl: Duration,
    lease: AtomicI64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RegistrationError(String);

impl Registration {
    pub fn new(endpoints: Vec<String>, workload: Workload, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            next: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build_http(),
            workload: Mutex::new(workload),
            ttl,
            lease: AtomicI64::new(0),
        })
    }

    /// One call, trying each control-plane replica in turn until one answers.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), RegistrationError> {
        let mut last = String::from("no control plane endpoints");
        for _ in 0..self.endpoints.len() {
            let i = self.next.load(Ordering::Relaxed) % self.endpoints.len().max(1);
            let base = &self.endpoints[i];
            let body = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            let req = http::Request::builder()
                .method(method.clone())
                .uri(format!("{base}{path}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| RegistrationError(format!("bad control plane address {base}: {e}")))?;
            match tokio::time::timeout(CALL_TIMEOUT, self.client.request(req)).await {
                Ok(Ok(rsp)) => {
                    let status = rsp.status().as_u16();
                    let bytes = rsp
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if status < 500 {
                        return Ok((status, value));
                    }
                    last = format!("{base}: {status} {}", value["error"]);
                }
                Ok(Err(e)) => last = format!("{base}: {e}"),
                Err(_) => last = format!("{base}: no answer within {CALL_TIMEOUT:?}"),
            }
            self.next.fetch_add(1, Ordering::Relaxed);
        }
        Err(RegistrationError(last))
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
