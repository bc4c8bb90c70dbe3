//! What this proxy tells the control plane when asked over the telemetry link
//! (`trellis_xds::telemetry`): its golden numbers over a recent window ([`history`]) for
//! `trellis stat`, the requests passing now ([`tap`]) for `trellis tap` and `trellis top`, and
//! the endpoints it has ejected, for the dashboard.
pub mod history;
pub mod tap;

use history::History;
use std::sync::Arc;
use tap::Taps;
use tokio::sync::mpsc;
use trellis_api::telemetry::{StatQuery, TapFilter};

/// Answers the control plane's questions for one proxy.
pub struct Live {
    pub history: Arc<History>,
    pub taps: Arc<Taps>,
    pub node_id: String,
    pub namespace: String,
    /// The endpoints this proxy has ejected, as the dashboard asks for them (JSON).
    pub ejected: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
}

impl trellis_xds::telemetry::Handler for Live {
    fn stat(&self, query: &[u8]) -> Vec<u8> {
        let answer = match serde_json::from_slice::<StatQuery>(query) {
            Ok(q) => serde_json::to_vec(&self.history.answer(&q, &self.namespace)),
            Err(e) => {
                serde_json::to_vec(&serde_json::json!({ "error": format!("bad stat query: {e}") }))
            }
        };
        answer.unwrap_or_default()
    }

    fn tap(&self, filter: &[u8]) -> Result<mpsc::Receiver<Vec<u8>>, String> {
        let filter: TapFilter =
            serde_json::from_slice(filter).map_err(|e| format!("bad tap filter: {e}"))?;
        Ok(self.taps.open(filter, &self.node_id, &self.namespace))
    }

    fn endpoints(&self) -> Vec<u8> {
        (self.ejected)()
    }
}
