//! The proxy's JSON client for the control plane's HTTP API (registration, leases,
//! certificates): any replica will do, so each call tries them in turn, and every call carries
//! the join token.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long one call to the control plane may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct ControlApi {
    endpoints: Vec<String>,
    next: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    /// `Bearer <join token>`, when one was given.
    authorization: Option<http::HeaderValue>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlApiError(pub String);

impl ControlApi {
    pub fn new(endpoints: Vec<String>, token: Option<&str>) -> Self {
        let authorization = token.and_then(|t| {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {t}")).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            next: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build_http(),
            authorization,
        }
    }

    /// One call, trying each control-plane replica in turn until one answers below 500.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), ControlApiError> {
        let mut last = String::from("no control plane endpoints");
        for _ in 0..self.endpoints.len() {
            let i = self.next.load(Ordering::Relaxed) % self.endpoints.len().max(1);
            let base = &self.endpoints[i];
            let body = body.as_ref().map(|b| b.to_string()).unwrap_or_default();
            let mut req = http::Request::builder()
                .method(method.clone())
                .uri(format!("{base}{path}"))
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(auth) = &self.authorization {
                req = req.header(http::header::AUTHORIZATION, auth.clone());
            }
            let req = req
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ControlApiError(format!("bad control plane address {base}: {e}")))?;
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
        Err(ControlApiError(last))
    }
}
