//! The series of each edge, found with one hash per request.
//!
//! A request touches up to five series of its edge (its count, latency to headers and to the
//! end, body bytes each way), each in a `Family` keyed by the full label set: the edge's eight
//! labels, hashed with SipHash once per family per request. This table keeps, per edge, the
//! handles of all of them (and of its counts by outcome), so a request hashes its edge once,
//! with a fast hash (foldhash), and takes one shared reference. The families stay what
//! `/metrics` encodes; the handles here are clones of their series, so both see the same
//! numbers. Series are never removed from the families, so a handle never goes stale.
//!
//! Label values are bounded (names from config, caller workloads interned and capped, see
//! [`super::workloads`]), so the table is bounded as the families are.
use super::{LatencyLabels, RequestLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What a request came to, besides its edge: code, reason, gRPC status, classification.
pub type OutcomeKey = (u16, &'static str, &'static str, &'static str);

/// The handles of one edge's series.
pub struct EdgeSeries {
    labels: LatencyLabels,
    pub latency: Histogram,
    pub to_end: Histogram,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    requests: RwLock<FastMap<OutcomeKey, Counter>>,
}

impl EdgeSeries {
    /// Counts one request of this edge that came to `outcome`.
    pub fn count(&self, family: &Family<RequestLabels, Counter>, outcome: OutcomeKey) {
        if let Some(counter) = self
            .requests
            .read()
            .ok()
            .and_then(|m| m.get(&outcome).cloned())
        {
            counter.inc();
            return;
        }
        let (code, reason, grpc_status, classification) = outcome;
        let l = &self.labels;
        let counter = family.get_or_create_owned(&RequestLabels {
            direction: l.direction,
            source: l.source.clone(),
            service: l.service.clone(),
            route: l.route.clone(),
            destination_subset: l.destination_subset.clone(),
            code,
            reason,
            grpc_status,
            classification,
            source_workload: l.source_workload.clone(),
            destination_workload: l.destination_workload.clone(),
            mtls: l.mtls,
        });
        counter.inc();
        if let Ok(mut m) = self.requests.write() {
            m.insert(outcome, counter);
        }
    }
}

/// The families an edge's series live in.
pub struct EdgeFamilies<'a> {
    pub latency: &'a Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub to_end: &'a Family<LatencyLabels, Histogram, fn() -> Histogram>,
    pub request_bytes: &'a Family<LatencyLabels, Counter>,
    pub response_bytes: &'a Family<LatencyLabels, Counter>,
}

/// Every edge seen so far, with its series.
#[derive(Default)]
pub struct Edges {
    map: RwLock<FastMap<LatencyLabels, Arc<EdgeSeries>>>,
}

impl Edges {
    /// The series of `labels`' edge, made in `families` the first time it is seen.
    pub fn get(&self, labels: LatencyLabels, families: EdgeFamilies<'_>) -> Arc<EdgeSeries> {
        if let Some(series) = self.map.read().ok().and_then(|m| m.get(&labels).cloned()) {
            return series;
        }
        let series = Arc::new(EdgeSeries {
            latency: families.latency.get_or_create_owned(&labels),
            to_end: families.to_end.get_or_create_owned(&labels),
            request_bytes: families.request_bytes.get_or_create_owned(&labels),
            response_bytes: families.response_bytes.get_or_create_owned(&labels),
            requests: RwLock::default(),
            labels: labels.clone(),
        });
        match self.map.write() {
            Ok(mut m) => m.entry(labels).or_insert(series).clone(),
            Err(_) => series,
        }
    }
}
