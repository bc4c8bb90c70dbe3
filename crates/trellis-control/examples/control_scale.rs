//! Push latency through the whole control plane: a real `trellis control` (in this process, on
//! an embedded store in a temporary folder), N simulated proxies (real xDS clients, one
//! connection each, all of one caller service), and rounds that each `apply` one changed Route
//! over the HTTP API. Measures the time from sending the apply until every proxy has applied
//! the change (its ACK follows at once).
//!
//! ```sh
//! cargo run --release -p trellis-control --example control_scale -- --clients 100,1000 --rounds 20
//! ```
mod scale_common;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use scale_common::{mesh, ms, percentile, post, round_of, route, start_control, TOKEN};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_xds::client::{AdsClient, Backoff, ClientConfig};
use trellis_xds::NodeInfo;

const WAIT: Duration = Duration::from_secs(120);

async fn bench(n: usize, rounds: usize) -> Result<(), String> {
    let dir =
        std::env::temp_dir().join(format!("trellis-control-scale-{}-{n}", std::process::id()));
    let (addr, stop) = start_control(&dir).await?;
    let base = format!("http://{addr}");
    let http = Client::builder(TokioExecutor::new()).build_http();
    post(
        &http,
        &format!("{base}/api/v1/apply"),
        format!("{}---\n{}", mesh(20), route(0)),
    )
    .await?;

    let at_round = Arc::new(AtomicUsize::new(0));
    let current: Arc<Vec<AtomicUsize>> =
        Arc::new((0..n).map(|_| AtomicUsize::new(usize::MAX)).collect());
    let uri: tonic::transport::Uri = base.parse().map_err(|e| format!("{e}"))?;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = ClientConfig::new(
            vec![uri.clone()],
            NodeInfo::new(format!("proxy-{i}"), "productpage", "default"),
        );
        c.token = Some(TOKEN.into());
        c.backoff = Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        let current = current.clone();
        let client = AdsClient::spawn(c, move |u| {
            if let Some(r) = round_of(&u.resources.to_set().resources) {
                current[i].store(r, Ordering::Release);
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        clients.push(client);
    }
    for c in &clients {
        tokio::time::timeout(WAIT, c.ready())
            .await
            .map_err(|_| "a client never synced".to_string())?
            .map_err(|e| e.to_string())?;
    }
    let connect_all = started.elapsed();
    let mut times = Vec::new();
    for round in 1..=rounds {
        at_round.store(round, Ordering::Release);
        let t0 = Instant::now();
        post(&http, &format!("{base}/api/v1/apply"), route(round)).await?;
        let deadline = t0 + WAIT;
        while current.iter().any(|c| c.load(Ordering::Acquire) != round) {
            if Instant::now() > deadline {
                return Err(format!("round {round}: not every proxy got the change"));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        times.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort();
    println!(
        "N={n} rounds={rounds}: apply -> every proxy applied: p50={:.1}ms p99={:.1}ms max={:.1}ms | all {n} connected+synced in {:.0}ms",
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 99.0)),
        ms(times.last().copied().unwrap_or_default()),
        ms(connect_all),
    );
    drop(clients);
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::main]
async fn main() {
    // Both ends of every proxy's connection live in this process, and the control port's
    // connection cap is fitted under the open-files limit: raise it as `trellis` does.
    trellis_net::fdlimit::raise();
    let mut clients = vec![100, 1000];
    let mut rounds = 20;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--clients", Some(v)) => {
                clients = v.split(',').filter_map(|n| n.parse().ok()).collect()
            }
            ("--rounds", Some(v)) => rounds = v.parse().unwrap_or(rounds),
            _ => {
                eprintln!("usage: control_scale [--clients N,N] [--rounds R]");
                std::process::exit(2);
            }
        }
    }
    for n in clients {
        if let Err(e) = bench(n, rounds).await {
            eprintln!("N={n}: {e}");
            std::process::exit(1);
        }
    }
}
