//! Debian's Prometheus (installed by the test command) scraping a running mesh: two callers with
//! their own identities call one service, one of them with a known share of failures, and the
//! PromQL in docs/observability.md gives each edge (caller identity → service) its request
//! count and success rate exactly as sent, from the callee's inbound side and from each caller's
//! outbound side alike, plus a rate and a p99.
mod common;

use common::mesh::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, protocol: http}]}
";

/// The size of each body batch sends.
const BODY: usize = 100;

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BATCH: &str = "spiffe://cluster.local/ns/default/sa/batch";

/// An instant PromQL query: each result series as (its labels named in `by`, value).
async fn query(prom: SocketAddr, promql: &str, by: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let (status, body) = get_status(
        prom,
        &format!("/api/v1/query?query={}", trellis::ctl::encode(promql)),
    )
    .await
    .expect("Prometheus answers");
    assert_eq!(status, 200, "{promql}: {body}");
    let v: Value = serde_json::from_str(&body).expect(&body);
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{promql}: {body}"))
        .iter()
        .map(|series| {
            let key = by
                .iter()
                .map(|l| {
                    series["metric"][*l]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            let value = series["value"][1]
                .as_str()
                .unwrap_or("NaN")
                .parse()
                .unwrap_or(f64::NAN);
            (key, value)
        })
        .collect()
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn promql_gives_each_edge_its_requests_and_success_rate() {
    let dir = tempdir("prometheus");
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let _cp = control(&dir, "control", cp_addr, "embedded");
    wait_api(cp_addr).await;
    apply(&url, &dir, MESH);
    let (_app, _sidecar, web_admin) = instance(&dir, &url, "web-0", "v1");
    let frontend = caller_of(&dir, &url, "frontend");
    let batch = caller_of(&dir, &url, "batch");
    for admin in [web_admin, frontend.admin, batch.admin] {
        wait_ready(admin).await;
    }
    wait_for_workload(frontend.admin, "web").await;
    wait_for_workload(batch.admin, "web").await;

    let prom_addr = free_addr();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: mesh\n    static_configs:\n      - targets: ['{web_admin}', '{}', '{}']\n",
            frontend.admin, batch.admin
        ),
    )
    .unwrap();
    let prometheus = External::spawn(
        &dir,
        "prometheus",
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            &format!("--web.listen-address={prom_addr}"),
        ],
    );

    // Prometheus up and scraping all three sidecars before any traffic, so every counter is
    // seen from its first values on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = get_status(prom_addr, "/api/v1/query?query=sum(up)").await;
        if let Ok((200, body)) = &up {
            if body.contains("\"3\"]") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the three sidecars ({up:?}); its log:\n{}",
            prometheus.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic over a few seconds, so rate() has samples to work with: frontend sends 40
    // requests of which 10 are answered 503 by the app, each claiming (falsely) to come from
    // another workload; batch sends 20 that all succeed, POSTs by curl of a 100-byte body that
    // the app echoes.
    let client = http1();
    let payload = dir.join("payload");
    std::fs::write(&payload, [b'x'; BODY]).unwrap();
    for round in 0..4 {
        for i in 0..10 {
            let fail = (round * 10 + i) % 4 == 3;
            let path = if fail { "/status/503" } else { "/" };
            let forged = [("trellis-source-workload", "forged")];
            let a = get(&client, frontend.outbound, Some("web"), path, &forged).await;
            assert_eq!(a.status, if fail { 503 } else { 200 }, "{}", a.body);
            assert!(
                !a.body.contains("trellis-source-workload"),
                "the header naming the caller's workload reached the app: {}",
                a.body
            );
        }
        for _ in 0..5 {
            let out = tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "--fail-with-body",
                    "-H",
                    "Host: web",
                    "--data-binary",
                ])
                .arg(format!("@{}", payload.display()))
                .arg(format!("http://{}/echo", batch.outbound))
                .output()
                .await
                .expect("curl runs");
            assert!(out.status.success(), "{out:?}");
            assert_eq!(out.stdout.len(), BODY, "{out:?}");
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    // Prometheus has everything once both sides' totals reach what was sent.
    let total = "sum by (direction) (trellis_requests_total{service=\"web\"})";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = query(prom_addr, total, &["direction"]).await;
        if got.values().filter(|v| **v == 60.0).count() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the 60 requests (it has {got:?}); its log:\n{}",
            prometheus.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Requests per edge, from the callee's side and from the callers' side.
    let inbound = query(
        prom_addr,
        "sum by (source, service) (trellis_requests_total{direction=\"inbound\"})",
        &["source", "service"],
    )
    .await;
    let outbound = query(
        prom_addr,
        "sum by (source, service) (trellis_requests_total{direction=\"outbound\"})",
        &["source", "service"],
    )
    .await;
    for side in [&inbound, &outbound] {
        assert_eq!(side.get(&key(&[FRONTEND, "web"])), Some(&40.0), "{side:?}");
        assert_eq!(side.get(&key(&[BATCH, "web"])), Some(&20.0), "{side:?}");
    }

    // The same edges by instance: each caller's own workload, never the name its app forged;
    // the answering instance; and mutual TLS on both sides of the hop.
    for direction in ["inbound", "outbound"] {
        let by_workload = query(
            prom_addr,
            &format!("sum by (source_workload, destination_workload, mtls) (trellis_requests_total{{direction=\"{direction}\",service=\"web\"}})"),
            &["source_workload", "destination_workload", "mtls"],
        )
        .await;
        let expected = BTreeMap::from([
            (key(&["batch", "web-0", "true"]), 20.0),
            (key(&["frontend", "web-0", "true"]), 40.0),
        ]);
        assert_eq!(by_workload, expected, "{direction}");
    }

    // Body bytes per edge, each way: batch's 20 bodies of 100 bytes, echoed back; the same
    // figures on the callee's side and the caller's.
    for (family, direction) in [
        ("trellis_http_request_bytes_total", "inbound"),
        ("trellis_http_request_bytes_total", "outbound"),
        ("trellis_http_response_bytes_total", "inbound"),
        ("trellis_http_response_bytes_total", "outbound"),
    ] {
        let bytes = query(
            prom_addr,
            &format!("sum by (source) ({family}{{direction=\"{direction}\",service=\"web\",source=\"{BATCH}\"}})"),
            &["source"],
        )
        .await;
        assert_eq!(
            bytes.get(&key(&[BATCH])),
            Some(&(20.0 * BODY as f64)),
            "{family} {direction}: {bytes:?}"
        );
    }
    let answers = "sum by (direction) (trellis_http_response_bytes_total{service=\"web\",source_workload=\"frontend\"})";
    let answers = query(prom_addr, answers, &["direction"]).await;
    let (inbound_bytes, outbound_bytes) = (
        answers.get(&key(&["inbound"])),
        answers.get(&key(&["outbound"])),
    );
    assert!(
        inbound_bytes.is_some_and(|b| *b > 0.0) && inbound_bytes == outbound_bytes,
        "frontend's answers, as both sidecars counted them: {answers:?}"
    );

    // Success rate per edge: the documented query.
    let success = query(
        prom_addr,
        "sum by (source) (trellis_requests_total{direction=\"inbound\",service=\"web\",classification=\"success\"}) / sum by (source) (trellis_requests_total{direction=\"inbound\",service=\"web\"})",
        &["source"],
    )
    .await;
    assert_eq!(success.get(&key(&[FRONTEND])), Some(&0.75), "{success:?}");
    assert_eq!(success.get(&key(&[BATCH])), Some(&1.0), "{success:?}");

    // A rate and a p99 per edge exist and are numbers.
    let rps = query(
        prom_addr,
        "sum by (source) (rate(trellis_requests_total{direction=\"inbound\",service=\"web\"}[1m]))",
        &["source"],
    )
    .await;
    for edge in [FRONTEND, BATCH] {
        assert!(rps.get(&key(&[edge])).is_some_and(|r| *r > 0.0), "{rps:?}");
    }
    let p99 = query(
        prom_addr,
        "histogram_quantile(0.99, sum by (source, le) (rate(trellis_request_duration_seconds_bucket{direction=\"inbound\",service=\"web\"}[1m])))",
        &["source"],
    )
    .await;
    for edge in [FRONTEND, BATCH] {
        assert!(
            p99.get(&key(&[edge]))
                .is_some_and(|s| s.is_finite() && *s > 0.0),
            "{p99:?}"
        );
    }
}
