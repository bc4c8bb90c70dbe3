//! Which instances outlier detection has taken out of rotation, and in whose pools: each proxy
//! ejects on its own (from what its own requests saw), so the control plane's model does not
//! know; the dashboard asks this replica's proxies over the telemetry link (question kind
//! `endpoints`), as `trellis stat` asks for numbers.
use crate::api::ApiState;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long the proxies get to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One endpoint one proxy has ejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ejection {
    /// The proxy (node id) that ejected it.
    #[serde(default)]
    pub by: String,
    /// The ejected instance's service and namespace.
    pub service: String,
    #[serde(default)]
    pub namespace: String,
    /// `ip:port`, as the Workload gives it.
    pub address: String,
    #[serde(default)]
    pub ejections: u64,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    ejected: Vec<Ejection>,
}

/// Every ejection this replica's proxies report (none without a telemetry link).
pub async fn gather(s: &ApiState) -> Vec<Ejection> {
    let Some(hub) = &s.telemetry else {
        return Vec::new();
    };
    let mut asked = hub.ask(|_| true, "endpoints", Bytes::from_static(b"{}"), false);
    let mut out = Vec::new();
    let mut answered = 0;
    let deadline = tokio::time::sleep(TIMEOUT);
    tokio::pin!(deadline);
    while answered < asked.asked {
        tokio::select! {
            reply = asked.answers.recv() => {
                let Some(reply) = reply else { break };
                answered += 1;
                if let Ok(a) = serde_json::from_slice::<Answer>(&reply.body) {
                    out.extend(a.ejected.into_iter().map(|mut e| {
                        e.by = reply.proxy.node_id.clone();
                        e
                    }));
                }
            }
            () = &mut deadline => break,
        }
    }
    out
}
