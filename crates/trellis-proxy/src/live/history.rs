//! The recent past of this proxy's golden numbers, so `trellis stat --window 30s` is answered at
//! once and exactly: every [`SAMPLE_EVERY`] the request count and latency families are read
//! (encoded, then parsed back: nothing is added to the request path) and kept for
//! [`MAX_WINDOW_SECS`]; a query subtracts the sample at the window's start from the counts now.
//!
//! Counters start at zero when the proxy does, so a proxy younger than the window answers over
//! its whole life (and says so in `windowSecs`).
use crate::metrics::Metrics;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_api::telemetry::{StatAnswer, StatQuery, StatRow, LATENCY_BUCKETS, MAX_WINDOW_SECS};

/// How often the families are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Edge {
    direction: String,
    source: String,
    service: String,
    route: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: u64,
    failures: u64,
    /// Cumulative bucket counts, as the exposition gives them.
    cumulative: [u64; LATENCY_BUCKETS],
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    edges: HashMap<Edge, Totals>,
}

/// The samples of the last [`MAX_WINDOW_SECS`].
pub struct History {
    metrics: Arc<Metrics>,
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            started: Instant::now(),
            samples: Mutex::new(VecDeque::new()),
        })
    }

    /// Samples every [`SAMPLE_EVERY`] until the task is aborted.
    pub fn spawn_sampler(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.sample();
            }
        })
    }

    fn read(&self) -> Sample {
        Sample {
            at: Instant::now(),
            edges: parse(&self.metrics.encode_golden()),
        }
    }

    fn sample(&self) {
        let s = self.read();
        let keep = Duration::from_secs(u64::from(MAX_WINDOW_SECS)) + SAMPLE_EVERY;
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        while samples
            .front()
            .is_some_and(|old| s.at.duration_since(old.at) > keep)
        {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    /// The numbers of the edges `query` asks for, over its window (up to now).
    pub fn answer(&self, query: &StatQuery, namespace: &str) -> StatAnswer {
        let now = self.read();
        let window = Duration::from_secs(u64::from(query.window_secs.clamp(1, MAX_WINDOW_SECS)));
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        // The newest sample at or before the window's start; else the oldest kept (or the
        // proxy's start, when every count was zero).
        let base = samples
            .iter()
            .rev()
            .find(|s| now.at.duration_since(s.at) >= window)
            .or_else(|| {
                samples
                    .front()
                    .filter(|_| now.at.duration_since(self.started) > window)
            });
        let (since, empty) = (self.started, HashMap::new());
        let (base_at, base_edges) = base.map_or((since, &empty), |s| (s.at, &s.edges));
        let secs = now.at.duration_since(base_at).as_secs_f64().max(0.001);
        let rows = now
            .edges
            .iter()
            .filter(|(e, _)| query.matches(&e.direction, &e.source, &e.service))
            .filter_map(|(e, t)| {
                let before = base_edges.get(e).cloned().unwrap_or_default();
                let requests = t.requests.saturating_sub(before.requests);
                (requests > 0).then(|| StatRow {
                    direction: e.direction.clone(),
                    namespace: namespace.to_string(),
                    source: e.source.clone(),
                    service: e.service.clone(),
                    route: e.route.clone(),
                    requests,
                    failures: t.failures.saturating_sub(before.failures),
                    rps: requests as f64 / secs,
                    latency_buckets: per_bucket(&t.cumulative, &before.cumulative),
                    proxies: 1,
                })
            })
            .collect();
        StatAnswer {
            rows,
            window_secs: secs,
        }
    }
}

/// Counts per bucket over the window, from two cumulative histograms.
fn per_bucket(now: &[u64; LATENCY_BUCKETS], before: &[u64; LATENCY_BUCKETS]) -> Vec<u64> {
    let delta: Vec<u64> = now
        .iter()
        .zip(before)
        .map(|(n, b)| n.saturating_sub(*b))
        .collect();
    let mut below = 0;
    delta
        .iter()
        .map(|&cumulative| {
            let here = cumulative.saturating_sub(below);
            below = cumulative.max(below);
            here
        })
        .collect()
}

/// The edges of an OpenMetrics text of the golden families.
fn parse(text: &str) -> HashMap<Edge, Totals> {
    let mut edges: HashMap<Edge, Totals> = HashMap::new();
    let bounds = trellis_api::telemetry::latency_bounds();
    for line in text.lines() {
        let Some((name, labels, value)) = sample_line(line) else {
            continue;
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| *n == k)
                .map_or(String::new(), |(_, v)| v.clone())
        };
        let edge = || Edge {
            direction: label("direction"),
            source: label("source"),
            service: label("service"),
            route: label("route"),
        };
        match name {
            "trellis_requests_total" => {
                let t = edges.entry(edge()).or_default();
                t.requests += value;
                if label("classification") == "failure" {
                    t.failures += value;
                }
            }
            "trellis_request_duration_seconds_bucket" => {
                let le = label("le");
                let slot = if le == "+Inf" {
                    Some(LATENCY_BUCKETS - 1)
                } else {
                    le.parse::<f64>()
                        .ok()
                        .and_then(|le| bounds.iter().position(|b| (b - le).abs() <= le * 1e-9))
                };
                if let Some(i) = slot {
                    // Series of one edge that differ in other labels (the destination subset)
                    // add up.
                    edges.entry(edge()).or_default().cumulative[i] += value;
                }
            }
            _ => {}
        }
    }
    edges
}

/// A sample's labels: (name, unescaped value).
type Labels<'a> = Vec<(&'a str, String)>;

/// `name{k="v",...} value` → its parts; `None` for comments and other shapes.
fn sample_line(line: &str) -> Option<(&str, Labels<'_>, u64)> {
    if line.starts_with('#') {
        return None;
    }
    let open = line.find('{')?;
    let name = &line[..open];
    let mut labels = Vec::new();
    let mut rest = &line[open + 1..];
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            rest = after;
            break;
        }
        let eq = rest.find("=\"")?;
        let key = &rest[..eq];
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break eq + 2 + i + 1,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        rest = &rest[end..];
    }
    let number = rest.split_whitespace().next()?;
    let value = number.parse::<f64>().ok()?;
    Some((name, labels, value as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::LatencyLabels;

    fn edge(m: &Arc<Metrics>, direction: &'static str, service: &str, status: u16, n: usize) {
        for _ in 0..n {
            let rsp = http::Response::builder()
                .status(status)
                .body(crate::body::empty())
                .unwrap();
            let labels = LatencyLabels {
                direction,
                source: Arc::from("spiffe://mesh.local/ns/default/sa/web"),
                service: service.into(),
                route: "r".into(),
                destination_subset: if status >= 500 { "v2" } else { "v1" }.into(),
                source_workload: "web-0".into(),
                destination_workload: if status >= 500 { "b-1" } else { "b-0" }.into(),
                mtls: "true",
            };
            drop(m.record_request(labels, "", rsp, Instant::now(), None));
        }
    }

    #[test]
    fn counts_and_buckets_come_back_from_the_exposition() {
        let m = Metrics::new();
        edge(&m, "inbound", "ratings", 200, 7);
        edge(&m, "inbound", "ratings", 503, 3);
        let edges = parse(&m.encode_golden());
        let (e, t) = edges.iter().next().unwrap();
        assert_eq!(edges.len(), 1);
        assert_eq!(e.source, "spiffe://mesh.local/ns/default/sa/web");
        assert_eq!((t.requests, t.failures), (10, 3));
        assert_eq!(t.cumulative[LATENCY_BUCKETS - 1], 10);
    }

    #[test]
    fn a_window_counts_only_what_happened_in_it() {
        let m = Metrics::new();
        let h = History::new(m.clone());
        edge(&m, "outbound", "ratings", 200, 5);
        // A sample taken "long ago" holds the first five.
        let mut old = h.read();
        old.at = Instant::now() - Duration::from_secs(40);
        h.samples.lock().unwrap().push_back(old);
        edge(&m, "outbound", "ratings", 500, 2);
        edge(&m, "inbound", "other", 200, 1);
        let q = StatQuery {
            window_secs: 30,
            to: Some("ratings".into()),
            ..StatQuery::default()
        };
        let a = h.answer(&q, "default");
        assert_eq!(a.rows.len(), 1, "{a:?}");
        let r = &a.rows[0];
        assert_eq!((r.requests, r.failures), (2, 2));
        assert_eq!(r.latency_buckets.iter().sum::<u64>(), 2);
        assert_eq!(r.namespace, "default");
        assert!(a.window_secs >= 40.0);
    }

    #[test]
    fn per_bucket_undoes_the_cumulative_sum() {
        let mut now = [0; LATENCY_BUCKETS];
        let mut before = [0; LATENCY_BUCKETS];
        for (i, v) in now.iter_mut().enumerate() {
            *v = 10 + i as u64;
        }
        before[0] = 5;
        let b = per_bucket(&now, &before);
        assert_eq!(b[0], 5);
        assert_eq!(b[1], 6);
        assert_eq!(b[2], 1);
        assert_eq!(b.iter().sum::<u64>(), 27, "the buckets add up to the total");
    }

    #[test]
    fn garbage_lines_are_skipped() {
        for line in ["", "#x", "a{", "a{b=\"c", "a{b=\"c\"} x", "a{b=\"c\\"] {
            assert!(sample_line(line).is_none(), "{line}");
        }
    }
}
