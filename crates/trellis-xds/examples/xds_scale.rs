//! Push latency at scale: N simulated proxies (real `AdsClient`s, one TCP connection each) and
//! one in-process `AdsServer` on loopback. Each round changes one Route and measures the time
//! from handing the new view to the server until every proxy's ACK has reached the server, and
//! until each proxy applied it.
//!
//! ```sh
//! cargo run --release -p trellis-xds --example xds_scale -- --clients 100,1000 --rounds 30
//! ```
//! Options: `--clients N[,N...]` (default 100,1000), `--rounds R` (30), `--mode delta|sotw`
//! (delta), `--workloads W` per service in the view (20). Prints one line per N.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_api::Resource;
use trellis_xds::client::{AdsClient, Backoff, ClientConfig};
use trellis_xds::resource::ROUTE;
use trellis_xds::server::{AdsServer, ServerConfig, SharedViews, View};
use trellis_xds::{Mode, NodeInfo};

const WAIT: Duration = Duration::from_secs(120);

struct Options {
    clients: Vec<usize>,
    rounds: usize,
    mode: Mode,
    workloads: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        clients: vec![100, 1000],
        rounds: 30,
        mode: Mode::Delta,
        workloads: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--clients" => {
                o.clients = value
                    .split(',')
                    .map(|n| n.trim().parse().map_err(bad))
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => o.rounds = value.parse().map_err(bad)?,
            "--workloads" => o.workloads = value.parse().map_err(bad)?,
            "--mode" => {
                o.mode = match value.as_str() {
                    "delta" => Mode::Delta,
                    "sotw" => Mode::Sotw,
                    _ => return Err(format!("--mode is delta or sotw, not {value}")),
                }
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// Three services with `workloads` instances each, a policy and a route whose timeout is `round`
/// seconds (so each round changes exactly one resource).
fn mesh(round: usize, workloads: usize) -> Result<Vec<Resource>, String> {
    let mut yaml = String::from(
        "apiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: cluster.local}\n",
    );
    for svc in ["reviews", "ratings", "details"] {
        yaml.push_str(&format!(
            "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {svc}}}\nspec:\n  selector: {{app: {svc}}}\n  ports: [{{name: http, port: 9080, protocol: http}}]\n---\napiVersion: trellis.dev/v1\nkind: DestinationPolicy\nmetadata: {{name: {svc}}}\nspec:\n  service: {svc}\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n"
        ));
        for i in 0..workloads {
            yaml.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: {svc}-{i}, labels: {{app: {svc}, version: v1}}}}\nspec: {{service: {svc}, address: 127.0.{}.{}, port: 9080}}\n",
                i / 250,
                i % 250 + 1
            ));
        }
    }
    yaml.push_str(&format!(
        "---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: reviews}}\nspec:\n  service: reviews\n  rules:\n    - backends: [{{service: reviews, subset: v1}}]\n      timeout: {}s\n",
        round + 1
    ));
    trellis_api::parse_documents("bench.yaml", &yaml)
        .map(|s| s.resources)
        .map_err(|e| e.to_string())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn run(n: usize, o: &Options) -> Result<(), String> {
    let views = Arc::new(SharedViews::new(View::from_resources(&mesh(
        0,
        o.workloads,
    )?)));
    let server = AdsServer::new(views.clone(), ServerConfig::default());
    let registry = server.registry();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    // Per client: when it applied the current round's change.
    let applied: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..n).map(|_| Mutex::new(None)).collect());
    let uri: tonic::transport::Uri = format!("http://{addr}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = ClientConfig::new(
            vec![uri.clone()],
            NodeInfo::new(format!("proxy-{i}"), "productpage", "default"),
        );
        c.mode = o.mode;
        c.backoff = Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        let applied = applied.clone();
        let client = AdsClient::spawn(c, move |_| {
            if let Some(slot) = applied.get(i) {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        clients.push(client);
    }
    for c in &clients {
        tokio::time::timeout(WAIT, c.ready())
            .await
            .map_err(|_| "a client did not become ready".to_string())?
            .map_err(|e| e.to_string())?;
    }
    wait_until("every stream registered", || registry.len() == n).await?;
    let connect_all = started.elapsed();

    let mut all_acked = Vec::new();
    let mut per_proxy = Vec::new();
    for round in 1..=o.rounds {
        let next = View::from_resources(&mesh(round, o.workloads)?);
        let version = next
            .get(ROUTE)
            .map(|t| t.version().to_string())
            .unwrap_or_default();
        for slot in applied.iter() {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let t0 = Instant::now();
        views.set(next);
        wait_until("every proxy's ACK", || registry.all_acked(ROUTE, &version)).await?;
        all_acked.push(t0.elapsed());
        for slot in applied.iter() {
            if let Some(at) = *slot.lock().unwrap_or_else(|e| e.into_inner()) {
                per_proxy.push(at.duration_since(t0));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    all_acked.sort();
    per_proxy.sort();
    println!(
        "mode={:?} N={n} rounds={} view={} resources: apply->every ACK p50={} p99={} max={} | per-proxy apply p50={} p99={} | all connected+synced in {}",
        o.mode,
        o.rounds,
        views.current().types().map(|(_, t)| t.len()).sum::<usize>(),
        ms(percentile(&all_acked, 50.0)),
        ms(percentile(&all_acked, 99.0)),
        ms(all_acked.last().copied().unwrap_or_default()),
        ms(percentile(&per_proxy, 50.0)),
        ms(percentile(&per_proxy, 99.0)),
        ms(connect_all),
    );
    drop(clients);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    Ok(())
}

fn main() {
    let result = options().and_then(|o| {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        rt.block_on(async {
            for &n in &o.clients {
                run(n, &o).await?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        eprintln!("xds_scale: {e}");
        std::process::exit(1);
    }
}
