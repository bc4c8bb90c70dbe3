//! What `trellis stat`, `trellis top` and `trellis tap` exchange with the control plane, and the
//! control plane with the proxies (as JSON on the telemetry stream): one set of shapes for all
//! three, so the proxy, the replicas and the CLI cannot drift apart.
//!
//! Golden numbers travel as counts and latency-histogram buckets, never as percentiles: buckets
//! from many proxies add up, percentiles do not. The percentiles are computed once, after the
//! merge ([`quantile`]), the way Prometheus's `histogram_quantile` does.
use serde::{Deserialize, Serialize};

/// The upper bounds (seconds) of the proxies' latency histogram buckets: 100 µs doubling up to
/// about 6.5 s; a last bucket (`+Inf`) follows them.
pub fn latency_bounds() -> [f64; LATENCY_BUCKETS - 1] {
    let mut b = [0.0; LATENCY_BUCKETS - 1];
    let mut v = 0.0001;
    for slot in &mut b {
        *slot = v;
        v *= 2.0;
    }
    b
}

/// Buckets of the latency histogram, the last one `+Inf`.
pub const LATENCY_BUCKETS: usize = 18;

/// The longest window a stat query may ask for: what each proxy keeps.
pub const MAX_WINDOW_SECS: u32 = 60;

/// Request headers a tap never shows: they carry credentials.
pub const REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

/// What a stat query asks each proxy for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatQuery {
    /// How far back from now, in seconds (1..=[`MAX_WINDOW_SECS`]).
    pub window_secs: u32,
    /// `inbound` or `outbound`; both when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// The destination service's name; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The calling service's name (read from the caller's SPIFFE identity); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl StatQuery {
    /// Whether a row with these labels is asked for.
    pub fn matches(&self, direction: &str, source: &str, service: &str) -> bool {
        self.direction.as_deref().is_none_or(|d| d == direction)
            && self.to.as_deref().is_none_or(|t| t == service)
            && self
                .from
                .as_deref()
                .is_none_or(|f| spiffe_service(source).is_some_and(|(_, s)| s == f))
    }
}

/// The namespace and service of a `spiffe://DOMAIN/ns/NS/sa/NAME` identity.
pub fn spiffe_service(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/').skip(1);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(name)) => Some((ns, name)),
        _ => None,
    }
}

/// One edge as proxies saw it over a window: who called (`source`) which service through which
/// route, with what outcome and latency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatRow {
    pub direction: String,
    /// The namespace of the proxies that counted it.
    pub namespace: String,
    /// The caller's SPIFFE identity, empty when it proved none.
    pub source: String,
    pub service: String,
    pub route: String,
    pub requests: u64,
    /// Requests classified as failures (5xx, or a gRPC status other than OK).
    pub failures: u64,
    /// Requests per second over the window (summed over proxies).
    pub rps: f64,
    /// Response latency to headers: counts per bucket of [`latency_bounds`] (not cumulative),
    /// [`LATENCY_BUCKETS`] long.
    pub latency_buckets: Vec<u64>,
    /// Proxies that counted this edge.
    #[serde(default)]
    pub proxies: u32,
}

impl StatRow {
    /// The edge this row counts (what rows are merged by), in the order rows are listed:
    /// namespace, service, direction, source, route.
    pub fn edge(&self) -> (&str, &str, &str, &str, &str) {
        (
            &self.namespace,
            &self.service,
            &self.direction,
            &self.source,
            &self.route,
        )
    }

    /// Adds `other`'s counts into this row.
    pub fn absorb(&mut self, other: &StatRow) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.rps += other.rps;
        self.proxies += other.proxies.max(1);
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine += theirs;
        }
    }

    /// The share of requests that succeeded, `None` with no requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - self.failures as f64 / self.requests as f64)
    }
}

/// One proxy's answer to a [`StatQuery`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatAnswer {
    pub rows: Vec<StatRow>,
    /// The window the proxy's numbers cover (shorter than asked when it started recently).
    pub window_secs: f64,
}

/// Merges rows of the same edge (summing counts, rates and buckets), listed in edge order
/// (see [`StatRow::edge`]). A replica merges every proxy's rows: a map, not a scan per row.
pub fn merge_rows(rows: impl IntoIterator<Item = StatRow>) -> Vec<StatRow> {
    type Key = (String, String, String, String, String);
    let mut merged: std::collections::BTreeMap<Key, StatRow> = Default::default();
    for row in rows {
        let (ns, svc, dir, src, route) = row.edge();
        let key = (ns.into(), svc.into(), dir.into(), src.into(), route.into());
        match merged.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().absorb(&row),
            std::collections::btree_map::Entry::Vacant(e) => {
                let proxies = row.proxies.max(1);
                e.insert(StatRow { proxies, ..row });
            }
        }
    }
    merged.into_values().collect()
}

/// The `q` quantile (0..=1) of a latency histogram in seconds, interpolated linearly within
/// the bucket that holds it, as Prometheus's `histogram_quantile` does; `None` when empty. A
/// quantile in the `+Inf` bucket is the highest finite bound.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let bounds = latency_bounds();
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        below += count;
    }
    bounds.last().copied()
}

/// Which requests a tap shows, and how many at most.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TapFilter {
    /// `inbound` or `outbound`; both when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Only requests to this destination service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Only paths starting with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Only this method (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Events per second each proxy sends at most; the rest are counted as `dropped`.
    #[serde(default = "default_tap_rate")]
    pub max_per_second: u32,
}

fn default_tap_rate() -> u32 {
    100
}

impl TapFilter {
    /// Whether a request with this method and path may match (the destination is known later).
    pub fn admits_request(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }

    /// Whether a finished request matches in full.
    pub fn matches(&self, e: &TapEvent) -> bool {
        self.admits_request(&e.method, &e.path)
            && self.direction.as_deref().is_none_or(|d| d == e.direction)
            && self.to.as_deref().is_none_or(|t| t == e.destination)
    }
}

/// One request seen by a tap: what arrived, what the proxy decided and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapEvent {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// The proxy (node id) that saw it.
    pub proxy: String,
    pub namespace: String,
    pub direction: String,
    /// The caller's SPIFFE identity (empty when none was proved) and address.
    pub source: String,
    pub source_address: String,
    /// The destination service and the route that matched.
    pub destination: String,
    pub route: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// The proxy's `trellis-error` reason, empty when the app answered.
    pub reason: String,
    pub duration_ms: f64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Request headers as received, credentials ([`REDACTED_HEADERS`]) shown as `<redacted>`.
    pub request_headers: Vec<(String, String)>,
    /// Events this proxy left out since the last one sent (over its rate limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Splits a byte stream of newline-delimited JSON (a tap's answer) into lines.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Largest line kept; a longer one is cut there (a tap event is far smaller).
    pub const MAX_LINE: usize = 1 << 20;

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole line, without its newline.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let Some(at) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > Self::MAX_LINE {
                return Some(std::mem::take(&mut self.buf));
            }
            return None;
        };
        let mut line: Vec<u8> = self.buf.drain(..=at).collect();
        line.pop();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut l = Lines::default();
        l.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(l.next_line().unwrap(), b"{\"a\":1}");
        assert!(l.next_line().is_none());
        l.push(b":2}\n\n");
        assert_eq!(l.next_line().unwrap(), b"{\"b\":2}");
        assert_eq!(l.next_line().unwrap(), b"");
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        let mut b = vec![0u64; LATENCY_BUCKETS];
        // 100 requests between 0.4 and 0.8 ms (bucket 3: 0.0004..0.0008 s).
        b[3] = 100;
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.0006).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&[0; LATENCY_BUCKETS], 0.5), None);
        // Everything past the last bound: the highest finite bound.
        let mut inf = vec![0u64; LATENCY_BUCKETS];
        inf[LATENCY_BUCKETS - 1] = 3;
        assert_eq!(quantile(&inf, 0.99), latency_bounds().last().copied());
    }

    #[test]
    fn rows_of_one_edge_merge_and_others_stay_apart() {
        let row = |source: &str, n: u64| StatRow {
            direction: "inbound".into(),
            namespace: "default".into(),
            source: source.into(),
            service: "ratings".into(),
            requests: n,
            failures: 1,
            rps: n as f64 / 10.0,
            latency_buckets: vec![n; LATENCY_BUCKETS],
            ..StatRow::default()
        };
        let merged = merge_rows([row("b", 5), row("a", 10), row("a", 30)]);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            (merged[0].source.as_str(), merged[1].source.as_str()),
            ("a", "b"),
            "listed in edge order"
        );
        assert_eq!(merged[0].requests, 40);
        assert_eq!(merged[0].failures, 2);
        assert_eq!(merged[0].proxies, 2);
        assert_eq!(merged[0].latency_buckets[0], 40);
        assert!((merged[0].rps - 4.0).abs() < 1e-9);
        assert_eq!(merged[0].success_rate(), Some(0.95));
    }

    #[test]
    fn from_matches_the_callers_service_in_its_identity() {
        let q = StatQuery {
            from: Some("productpage".into()),
            ..StatQuery::default()
        };
        assert!(q.matches(
            "inbound",
            "spiffe://mesh.local/ns/default/sa/productpage",
            "x"
        ));
        assert!(!q.matches("inbound", "spiffe://mesh.local/ns/default/sa/reviews", "x"));
        assert!(!q.matches("inbound", "", "x"));
        assert_eq!(spiffe_service("spiffe://td/ns/a/sa/b"), Some(("a", "b")));
        assert_eq!(spiffe_service("spiffe://td/other"), None);
    }

    #[test]
    fn a_tap_filter_checks_method_path_direction_and_destination() {
        let f = TapFilter {
            method: Some("get".into()),
            path_prefix: Some("/api".into()),
            to: Some("ratings".into()),
            ..TapFilter::default()
        };
        let e = TapEvent {
            method: "GET".into(),
            path: "/api/x".into(),
            destination: "ratings".into(),
            direction: "outbound".into(),
            ..TapEvent::default()
        };
        assert!(f.matches(&e));
        assert!(!f.matches(&TapEvent {
            destination: "reviews".into(),
            ..e.clone()
        }));
        assert!(!f.admits_request("POST", "/api"));
        assert!(!f.admits_request("GET", "/other"));
    }
}
