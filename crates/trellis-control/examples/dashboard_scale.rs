//! What the dashboard's topology costs on a 1000-service mesh: a real control plane (in this
//! process, embedded store in a temporary folder) holding N services with 3 workloads and a
//! Route each, and one simulated proxy per service on the telemetry link (a real gRPC stream)
//! answering every stat question with its service's edges (3 callees; both sides count). Then
//! `GET /dashboard/api/topology` (with the join token) is timed: the proxies asked, their rows
//! merged, the graph built and serialized — the whole path a browser's refresh takes, apart
//! from the 0.9 s cache (each call here asks a different window, so none is served cached).
//!
//! ```sh
//! cargo run -p trellis-control --example dashboard_scale -- 1000 40
//! DASHBOARD_SCALE_HOLD=120 cargo run -p trellis-control --example dashboard_scale -- 1000 5
//! ```
// Shared with the push-latency examples; this one uses a part of it.
#[allow(dead_code)]
mod scale_common;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scale_common::{ms, percentile, post, start_control, TOKEN};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_api::telemetry::{StatAnswer, StatRow, LATENCY_BUCKETS};
use trellis_xds::NodeInfo;

/// A proxy that always answers with the same rows.
struct Fixed(Vec<u8>);

impl trellis_xds::telemetry::client::Handler for Fixed {
    fn stat(&self, _query: &[u8]) -> Vec<u8> {
        self.0.clone()
    }
    fn tap(&self, _filter: &[u8]) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, String> {
        Err("no taps here".into())
    }
}

fn manifest(n: usize) -> String {
    let mut y = String::new();
    for i in 0..n {
        y.push_str(&format!(
            "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec: {{ports: [{{port: 80, protocol: http}}]}}\n---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: svc-{i}}}\nspec: {{service: svc-{i}, rules: [{{timeout: 2s}}]}}\n"
        ));
        for k in 0..3 {
            y.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: svc-{i}-{k}}}\nspec: {{service: svc-{i}, address: 10.{}.{}.{}, port: 80}}\n",
                i / 250, i % 250, k + 1
            ));
        }
    }
    y
}

/// Service `i`'s proxy's rows: its calls to i+1, i+7, i+31 and what it served from i-1.
fn rows(i: usize, n: usize) -> Vec<u8> {
    let me = format!("spiffe://cluster.local/ns/default/sa/svc-{i}");
    let row = |direction: &str, source: &str, service: String| {
        let mut latency_buckets = vec![0; LATENCY_BUCKETS];
        latency_buckets[4] = 590;
        latency_buckets[6] = 10;
        StatRow {
            direction: direction.into(),
            namespace: "default".into(),
            source: source.into(),
            service,
            route: format!("svc-{i}"),
            requests: 600,
            failures: (i % 7) as u64,
            rps: 10.0,
            latency_buckets,
            proxies: 1,
        }
    };
    let mut out: Vec<StatRow> = [1, 7, 31]
        .iter()
        .map(|d| row("outbound", &me, format!("svc-{}", (i + d) % n)))
        .collect();
    let caller = format!(
        "spiffe://cluster.local/ns/default/sa/svc-{}",
        (i + n - 1) % n
    );
    out.push(row("inbound", &caller, format!("svc-{i}")));
    serde_json::to_vec(&StatAnswer {
        rows: out,
        window_secs: 60.0,
    })
    .unwrap_or_default()
}

async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<Bytes, String> {
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let rsp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

async fn bench(n: usize, calls: usize) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("trellis-dashboard-scale-{}", std::process::id()));
    let (addr, stop) = start_control(&dir).await?;
    let base = format!("http://{addr}");
    let http = Client::builder(TokioExecutor::new()).build_http();
    let t0 = Instant::now();
    post(&http, &format!("{base}/api/v1/apply"), manifest(n)).await?;
    println!(
        "applied {n} services, {} workloads, {n} routes in {:.0} ms",
        3 * n,
        ms(t0.elapsed())
    );
    let uri: tonic::transport::Uri = base.parse().map_err(|e| format!("{e}"))?;
    let proxies: Vec<_> = (0..n)
        .map(|i| {
            trellis_xds::telemetry::client::spawn(
                vec![uri.clone()],
                Some(TOKEN.into()),
                NodeInfo::new(format!("svc-{i}-0"), format!("svc-{i}"), "default"),
                Arc::new(Fixed(rows(i, n))),
            )
        })
        .collect();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    // Until every proxy is on the link (it answers for all of them).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = get(&client, &format!("{base}/dashboard/api/topology?window=60")).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if v["proxiesAnswered"].as_u64() == Some(n as u64) {
            println!(
                "{} nodes, {} edges, {} bytes of JSON",
                v["nodes"].as_array().map_or(0, |a| a.len()),
                v["edges"].as_array().map_or(0, |a| a.len()),
                body.len()
            );
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} proxies answer",
                v["proxiesAnswered"]
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut times = Vec::with_capacity(calls);
    for k in 0..calls {
        // A different window each call: never the cached answer.
        let window = 1 + k % 59;
        let t = Instant::now();
        get(
            &client,
            &format!("{base}/dashboard/api/topology?window={window}"),
        )
        .await?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "GET /dashboard/api/topology, {n} services, {n} proxies answering, {calls} calls: p50={:.1} ms p90={:.1} ms max={:.1} ms",
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 90.0)),
        ms(percentile(&times, 100.0)),
    );
    // The same question as `trellis stat` asks (the rows the topology is built from), for
    // what the graph adds to it.
    let mut times = Vec::with_capacity(calls);
    for k in 0..calls {
        let window = 1 + k % 59;
        let t = Instant::now();
        get(&client, &format!("{base}/api/v1/stat?window={window}")).await?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "GET /api/v1/stat (the same rows, as trellis stat gets them): p50={:.1} ms p90={:.1} ms max={:.1} ms",
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 90.0)),
        ms(percentile(&times, 100.0)),
    );
    let mut times = Vec::with_capacity(calls);
    for k in 0..calls {
        let t = Instant::now();
        get(
            &client,
            &format!("{base}/dashboard/api/services/default/svc-{}", k % n),
        )
        .await?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "GET /dashboard/api/services/NS/NAME: p50={:.1} ms max={:.1} ms",
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 100.0)),
    );
    // DASHBOARD_SCALE_HOLD=SECS keeps the mesh up for a browser (bench/dashboard_browser.py).
    if let Some(secs) = std::env::var("DASHBOARD_SCALE_HOLD")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        println!("holding for {secs} s: {base}/dashboard/?token={TOKEN}");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    for p in proxies {
        p.abort();
    }
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let calls = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    if let Err(e) = bench(n, calls).await {
        eprintln!("dashboard_scale: {e}");
        std::process::exit(1);
    }
}
