//! The service graph the dashboard draws: services (and the callers outside any Service, such
//! as an entry sidecar) as nodes, calls as edges, each with requests, success rate, RPS and
//! p99 over the window asked.
//!
//! Built from the same merged rows as `trellis stat` ([`crate::live_api::gather_stat`]), never
//! from a second source of numbers. An edge's numbers are the caller's sidecars' (outbound)
//! counts when the caller has a sidecar — they include what the caller's proxy failed itself
//! (a fault, no healthy endpoint) — and the callee's (inbound) counts otherwise (a caller
//! without a sidecar, or one that proved no identity). A pure function of the model and the
//! rows, so it is tested and measured without a mesh.
use crate::model::Model;
use serde::Serialize;
use std::collections::BTreeMap;
use trellis_api::service::WorkloadHealth;
use trellis_api::telemetry::{quantile, spiffe_service, StatRow};
use trellis_api::Resource;

/// Success rates at or above this are healthy; below [`WARN_BELOW`] an edge is failing.
pub const HEALTHY_FROM: f64 = 0.99;
pub const WARN_BELOW: f64 = 0.95;
/// The node that stands for callers that proved no identity.
pub const UNKNOWN: &str = "(unknown)";

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `namespace/name`.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// `service`, or `client` for a caller that is no Service of the model.
    pub kind: &'static str,
    pub instances: usize,
    pub unhealthy: usize,
    /// Instances some caller's outlier detection has ejected (see [`mark_ejected`]).
    pub ejected: usize,
    /// What the node served over the window (inbound), when anything.
    pub served: Option<Golden>,
    /// Routes, destination policy, authorization policies that name it.
    pub policies: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// `outbound` (counted by the callers' sidecars) or `inbound` (by the callee's).
    pub counted_by: &'static str,
    #[serde(flatten)]
    pub golden: Golden,
}

/// The golden numbers of an edge or a node.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Golden {
    pub requests: u64,
    pub failures: u64,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// `ok`, `warn`, `bad`, or `idle` (no requests).
    pub health: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub window_secs: u32,
    pub revision: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// Counts of one edge or node being summed.
#[derive(Default, Clone)]
struct Sum {
    requests: u64,
    failures: u64,
    rps: f64,
    buckets: Vec<u64>,
}

impl Sum {
    fn add(&mut self, r: &StatRow) {
        self.requests += r.requests;
        self.failures += r.failures;
        self.rps += r.rps;
        if self.buckets.len() < r.latency_buckets.len() {
            self.buckets.resize(r.latency_buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&r.latency_buckets) {
            *a += b;
        }
    }

    fn golden(&self) -> Golden {
        let success_rate =
            (self.requests > 0).then(|| 1.0 - self.failures as f64 / self.requests as f64);
        let ms = |q| quantile(&self.buckets, q).map(|s| s * 1000.0);
        Golden {
            requests: self.requests,
            failures: self.failures,
            rps: self.rps,
            success_rate,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            health: health(success_rate),
        }
    }
}

/// The colour class of a success rate.
pub fn health(success_rate: Option<f64>) -> &'static str {
    match success_rate {
        None => "idle",
        Some(s) if s >= HEALTHY_FROM => "ok",
        Some(s) if s >= WARN_BELOW => "warn",
        Some(_) => "bad",
    }
}

/// `namespace/name` of a caller identity; [`UNKNOWN`] (in `namespace`) when it proved none.
fn caller_id(source: &str, namespace: &str) -> String {
    match spiffe_service(source) {
        Some((ns, name)) => format!("{ns}/{name}"),
        None => format!("{namespace}/{UNKNOWN}"),
    }
}

/// `namespace/name` of a destination as a sidecar labels it (`name`, or `name.namespace` for
/// another namespace), seen from a proxy in `namespace`.
fn callee_id(service: &str, namespace: &str) -> String {
    match service.split_once('.') {
        Some((name, ns)) if !ns.contains('.') && !ns.is_empty() => format!("{ns}/{name}"),
        _ => format!("{namespace}/{service}"),
    }
}

/// The graph of `model`'s services and `rows`' calls.
pub fn build(model: &Model, rows: &[StatRow], window_secs: u32) -> Topology {
    let services: Vec<&trellis_api::Service> = model
        .resources()
        .filter_map(|r| match r {
            Resource::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    let mut nodes: BTreeMap<String, Node> = services
        .iter()
        .map(|s| {
            let n = Node::new(&s.metadata.namespace, &s.metadata.name, "service");
            (n.id.clone(), n)
        })
        .collect();
    count_members(model, &services, &mut nodes);
    let sums = Sums::of(rows);
    let mut edges = Vec::with_capacity(sums.outbound.len() + sums.inbound.len());
    for ((from, to), sum) in &sums.outbound {
        edges.push(edge(from, to, "outbound", sum));
    }
    for ((from, to), sum) in &sums.inbound {
        if !sums.outbound.contains_key(&(from.clone(), to.clone())) {
            edges.push(edge(from, to, "inbound", sum));
        }
    }
    for e in &edges {
        for id in [&e.from, &e.to] {
            if !nodes.contains_key(id) {
                let (ns, name) = id.split_once('/').unwrap_or(("", id));
                nodes.insert(id.clone(), Node::new(ns, name, "client"));
            }
        }
    }
    for (id, sum) in sums.served {
        if let Some(n) = nodes.get_mut(&id) {
            n.served = Some(sum.golden());
        }
    }
    Topology {
        window_secs,
        revision: model.revision,
        nodes: nodes.into_values().collect(),
        edges,
    }
}

impl Node {
    fn new(namespace: &str, name: &str, kind: &'static str) -> Self {
        Node {
            id: format!("{namespace}/{name}"),
            namespace: namespace.into(),
            name: name.into(),
            kind,
            instances: 0,
            unhealthy: 0,
            ejected: 0,
            served: None,
            policies: 0,
        }
    }
}

/// The rows summed per (caller, callee) on each side, and per service served.
#[derive(Default)]
struct Sums {
    outbound: BTreeMap<(String, String), Sum>,
    inbound: BTreeMap<(String, String), Sum>,
    served: BTreeMap<String, Sum>,
}

impl Sums {
    fn of(rows: &[StatRow]) -> Self {
        let mut s = Sums::default();
        for r in rows {
            let from = caller_id(&r.source, &r.namespace);
            if r.direction == "outbound" {
                let to = callee_id(&r.service, &r.namespace);
                s.outbound.entry((from, to)).or_default().add(r);
            } else {
                let to = format!("{}/{}", r.namespace, r.service);
                s.served.entry(to.clone()).or_default().add(r);
                s.inbound.entry((from, to)).or_default().add(r);
            }
        }
        s
    }
}

/// Counts, per service node, the distinct instances some proxy has ejected.
pub fn mark_ejected(topology: &mut Topology, ejections: &[super::ejections::Ejection]) {
    let mut seen: BTreeMap<String, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for e in ejections {
        seen.entry(format!("{}/{}", e.namespace, e.service))
            .or_default()
            .insert(&e.address);
    }
    for n in &mut topology.nodes {
        n.ejected = seen.get(&n.id).map_or(0, |s| s.len());
    }
}

fn edge(from: &str, to: &str, counted_by: &'static str, sum: &Sum) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        counted_by,
        golden: sum.golden(),
    }
}

/// The services a workload may belong to, found without trying every service: those that name
/// it by `spec.service` (no selector), and those whose selector's first label it carries (each
/// candidate is then checked with [`trellis_api::Service::selects`], the one rule).
#[derive(Default)]
struct MemberIndex<'a> {
    by_name: BTreeMap<(&'a str, &'a str), Vec<&'a trellis_api::Service>>,
    by_label: BTreeMap<(&'a str, &'a str, &'a str), Vec<&'a trellis_api::Service>>,
}

impl<'a> MemberIndex<'a> {
    fn new(services: &[&'a trellis_api::Service]) -> Self {
        let mut ix = Self::default();
        for s in services {
            let ns = s.metadata.namespace.as_str();
            match s.spec.selector.iter().next() {
                None => ix
                    .by_name
                    .entry((ns, s.metadata.name.as_str()))
                    .or_default()
                    .push(s),
                Some((k, v)) => ix
                    .by_label
                    .entry((ns, k.as_str(), v.as_str()))
                    .or_default()
                    .push(s),
            }
        }
        ix
    }

    fn services_of(&self, w: &'a trellis_api::Workload) -> Vec<&'a trellis_api::Service> {
        let ns = w.metadata.namespace.as_str();
        let mut out: Vec<&trellis_api::Service> = Vec::new();
        if let Some(name) = w.spec.service.as_deref() {
            out.extend(self.by_name.get(&(ns, name)).into_iter().flatten());
        }
        for (k, v) in &w.metadata.labels {
            let found = self.by_label.get(&(ns, k.as_str(), v.as_str()));
            out.extend(found.into_iter().flatten().filter(|s| s.selects(w)));
        }
        out
    }
}

/// Instances (and unhealthy ones) and policies per service node.
fn count_members(
    model: &Model,
    services: &[&trellis_api::Service],
    nodes: &mut BTreeMap<String, Node>,
) {
    let index = MemberIndex::new(services);
    let mut id = String::new();
    for r in model.resources() {
        let (ns, target) = match r {
            Resource::Workload(w) => {
                for s in index.services_of(w) {
                    id.clear();
                    id.push_str(&s.metadata.namespace);
                    id.push('/');
                    id.push_str(&s.metadata.name);
                    if let Some(n) = nodes.get_mut(&id) {
                        n.instances += 1;
                        if w.spec.health == WorkloadHealth::Unhealthy {
                            n.unhealthy += 1;
                        }
                    }
                }
                continue;
            }
            Resource::Route(x) => (&x.metadata.namespace, &x.spec.service),
            Resource::DestinationPolicy(x) => (&x.metadata.namespace, &x.spec.service),
            Resource::AuthorizationPolicy(x) => (&x.metadata.namespace, &x.spec.service),
            _ => continue,
        };
        if let Some(n) = nodes.get_mut(&format!("{ns}/{target}")) {
            n.policies += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::model;

    const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: ratings}
spec: {selector: {app: ratings}, ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: ratings-0, labels: {app: ratings, version: v1}}
spec: {address: 127.0.0.3, port: 1}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: other-0, labels: {app: other}}
spec: {address: 127.0.0.4, port: 1}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: reviews-0}
spec: {service: reviews, address: 127.0.0.1, port: 1}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: reviews-1}
spec: {service: reviews, address: 127.0.0.2, port: 1, health: Unhealthy}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: reviews}
spec: {service: reviews, rules: [{timeout: 1s}]}
";

    fn row(direction: &str, source: &str, service: &str, requests: u64, failures: u64) -> StatRow {
        let mut latency_buckets = vec![0; trellis_api::telemetry::LATENCY_BUCKETS];
        latency_buckets[3] = requests;
        StatRow {
            direction: direction.into(),
            namespace: "default".into(),
            source: source.into(),
            service: service.into(),
            route: "r".into(),
            requests,
            failures,
            rps: requests as f64 / 10.0,
            latency_buckets,
            proxies: 1,
        }
    }

    const ENTRY: &str = "spiffe://cluster.local/ns/default/sa/entry";
    const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

    #[test]
    fn callers_edges_prefer_the_callers_counts() {
        let m = model(MESH);
        let rows = vec![
            // The entry's sidecar: 100 to reviews (2 failed), 50 to ratings all aborted.
            row("outbound", ENTRY, "reviews", 60, 2),
            row("outbound", ENTRY, "reviews", 40, 0),
            row("outbound", ENTRY, "ratings", 50, 50),
            // reviews' sidecars saw 98 of them (the fault never reached ratings).
            row("inbound", ENTRY, "reviews", 98, 0),
            // A caller without a sidecar, and one with no identity.
            row("inbound", REVIEWS, "ratings", 10, 0),
            row("inbound", "", "reviews", 5, 0),
        ];
        let t = build(&m, &rows, 10);
        let edge = |from: &str, to: &str| {
            t.edges
                .iter()
                .find(|e| e.from == from && e.to == to)
                .unwrap_or_else(|| panic!("no edge {from} -> {to}: {:?}", t.edges))
        };
        let e = edge("default/entry", "default/reviews");
        assert_eq!(
            (e.counted_by, e.golden.requests, e.golden.failures),
            ("outbound", 100, 2)
        );
        assert_eq!(e.golden.health, "warn");
        assert!((e.golden.rps - 10.0).abs() < 1e-9);
        assert!(e.golden.p99_ms.is_some());
        let f = edge("default/entry", "default/ratings");
        assert_eq!((f.golden.success_rate, f.golden.health), (Some(0.0), "bad"));
        let g = edge("default/reviews", "default/ratings");
        assert_eq!((g.counted_by, g.golden.health), ("inbound", "ok"));
        edge(&format!("default/{UNKNOWN}"), "default/reviews");
        assert_eq!(t.edges.len(), 4);
        let node = |id: &str| t.nodes.iter().find(|n| n.id == id).unwrap();
        let reviews = node("default/reviews");
        assert_eq!(
            (reviews.instances, reviews.unhealthy, reviews.policies),
            (2, 1, 1)
        );
        assert_eq!(reviews.served.as_ref().map(|s| s.requests), Some(103));
        assert_eq!(node("default/entry").kind, "client");
        assert_eq!(node("default/ratings").kind, "service");
        assert_eq!(node("default/ratings").instances, 1, "selected by label");
        // One instance ejected by two callers counts once.
        let mut t = t.clone();
        let ejection = |by: &str| super::super::ejections::Ejection {
            by: by.into(),
            service: "reviews".into(),
            namespace: "default".into(),
            address: "127.0.0.2:1".into(),
            ejections: 1,
        };
        mark_ejected(&mut t, &[ejection("a"), ejection("b")]);
        let reviews = t.nodes.iter().find(|n| n.id == "default/reviews").unwrap();
        assert_eq!(reviews.ejected, 1);
    }

    #[test]
    fn health_classes() {
        assert_eq!(health(None), "idle");
        assert_eq!(health(Some(1.0)), "ok");
        assert_eq!(health(Some(0.96)), "warn");
        assert_eq!(health(Some(0.5)), "bad");
    }

    #[test]
    fn callee_names_across_namespaces() {
        assert_eq!(callee_id("ratings", "default"), "default/ratings");
        assert_eq!(callee_id("ratings.shop", "default"), "shop/ratings");
        assert_eq!(caller_id("", "shop"), format!("shop/{UNKNOWN}"));
    }

    /// The topology of 1000 services, 3000 instances and 6000 edges (12 000 rows) is built in
    /// well under a frame budget on any machine; printed, never asserted (see bench/notes.md).
    #[test]
    fn a_thousand_services() {
        let (m, rows) = synthetic(1000);
        let t0 = std::time::Instant::now();
        let t = build(&m, &rows, 60);
        let built = t0.elapsed();
        let json = serde_json::to_vec(&t).unwrap();
        println!(
            "1000 services, {} rows: built in {built:?}, JSON {} bytes in {:?} total",
            rows.len(),
            json.len(),
            t0.elapsed()
        );
        assert_eq!(t.nodes.len(), 1000);
        assert_eq!(t.edges.len(), 3000);
    }

    /// `n` services with 3 instances each; service i calls i+1, i+7 and i+31 (both sides count).
    fn synthetic(n: usize) -> (Model, Vec<StatRow>) {
        let mut yaml = String::new();
        for i in 0..n {
            yaml.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{ports: [{{port: 80, protocol: http}}]}}\n"
            ));
            for k in 0..3 {
                yaml.push_str(&format!(
                    "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: svc-{i}-{k}}}\nspec: {{service: svc-{i}, address: 10.{}.{}.{k}, port: 80}}\n",
                    i / 250,
                    i % 250
                ));
            }
        }
        let m = model(&yaml);
        let mut rows = Vec::new();
        for i in 0..n {
            let me = format!("spiffe://cluster.local/ns/default/sa/svc-{i}");
            for d in [1, 7, 31] {
                let to = format!("svc-{}", (i + d) % n);
                rows.push(row("outbound", &me, &to, 100, (i % 10) as u64));
                rows.push(row("inbound", &me, &to, 100, (i % 10) as u64));
            }
        }
        (m, rows)
    }
}
