//! The control plane's guarantees under attack, with real processes and a real 3-member etcd
//! cluster: every replica killed for longer than the lease TTL under load fails no request and
//! shrinks no endpoint set; kill -9 at random moments during a loop of multi-document applies
//! leaves each apply whole or absent, on both stores (500 documents on etcd, past its
//! 128-operation transaction limit); a manifest whose documents only make sense together,
//! applied under load, fails no request. Everything is asserted from the side that must be
//! protected: what the caller received, what the store holds.
mod common;

use common::mesh::*;
use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICE: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, protocol: http}]}
";

fn policy(subsets: &[&str]) -> String {
    let list: Vec<String> = subsets
        .iter()
        .map(|s| format!("{{name: {s}, labels: {{version: {s}}}}}"))
        .collect();
    format!(
        "apiVersion: trellis.dev/v1
kind: DestinationPolicy
metadata: {{name: web}}
spec:
  service: web
  loadBalancer: {{algorithm: RoundRobin}}
  subsets: [{}]
",
        list.join(", ")
    )
}

fn split(weights: &[(&str, u32)]) -> String {
    let backends: Vec<String> = weights
        .iter()
        .map(|(s, w)| format!("{{service: web, subset: {s}, weight: {w}}}"))
        .collect();
    format!(
        "apiVersion: trellis.dev/v1
kind: Route
metadata: {{name: web}}
spec:
  service: web
  rules:
    - backends: [{}]
",
        backends.join(", ")
    )
}

/// How many endpoints of `web` the proxy at `admin` holds (`None` if its admin is not answering).
async fn endpoint_count(admin: SocketAddr) -> Option<usize> {
    let (_, body) = get_status(admin, "/config").await.ok()?;
    let j: serde_json::Value = serde_json::from_str(&body).ok()?;
    j["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .and_then(|s| s["endpoints"].as_array().map(Vec::len))
}

/// Samples the caller's endpoint count every 25 ms until stopped; returns the smallest seen.
fn watch_endpoints(admin: SocketAddr) -> (Arc<AtomicBool>, tokio::task::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut least = usize::MAX;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Some(n) = endpoint_count(admin).await {
                least = least.min(n);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        least
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_down_longer_than_the_lease_fails_no_request() {
    let dir = tempdir("cp-outage");
    let cluster = EtcdCluster::start(&dir).await;
    let store = cluster.store();
    let mut replicas = Replicas::start(&dir, 3, &store).await;
    let (urls, all) = (replicas.urls.clone(), replicas.all());
    apply(
        &urls[0],
        &dir,
        &format!(
            "{SERVICE}---\n{}---\n{}",
            policy(&["v1", "v2"]),
            split(&[("v1", 1), ("v2", 1)])
        ),
    );
    // Sidecars with a 2 s lease: the outage below is three times that.
    let instances = [
        instance(&dir, &all, "web-v1", "v1"),
        instance(&dir, &all, "web-v2", "v2"),
    ];
    let caller = caller(&dir, &all);
    wait_mesh(&instances, &caller, 2).await;
    let l = load(caller.outbound);
    let (stop_watch, least) = watch_endpoints(caller.admin);
    tokio::time::sleep(Duration::from_millis(500)).await;

    replicas.kill_all();
    tokio::time::sleep(Duration::from_secs(6)).await;
    replicas.restart(&dir, &store).await;
    // A proxy joining right after the restart: when it says ready, it holds both endpoints.
    let joiner = caller_named(&dir, &all, "joiner");
    wait_ready(joiner.admin).await;
    let joined_with = endpoint_count(joiner.admin).await;
    // Past the reaper's grace (the 2 s TTL + 5 s) with the load still flowing.
    tokio::time::sleep(Duration::from_secs(9)).await;
    stop_watch.store(true, Ordering::Relaxed);
    let least = least.await.expect("endpoint watcher");
    let (failed, seen) = l.finish().await;
    println!("across the outage: {seen:?}, failed {failed}, fewest endpoints {least}");
    assert_eq!(
        failed, 0,
        "a request failed across the control plane's outage"
    );
    assert_eq!(
        least, 2,
        "the caller's endpoint set shrank during or after the outage"
    );
    assert_eq!(
        joined_with,
        Some(2),
        "a proxy that joined after the restart was ready without both endpoints"
    );
    assert_eq!(endpoint_count(joiner.admin).await, Some(2));

    // Expiry still works after the outage: a killed instance leaves within its lease and grace.
    let [v1, (v2_app, v2_proxy, _)] = instances;
    kill9(v2_proxy);
    kill9(v2_app);
    wait_endpoints(caller.admin, 1).await;
    drop((v1, replicas, joiner));
}

/// `count` Services `batch-N`, all with port `generation`: one apply's worth.
fn generation(count: usize, generation: u32) -> String {
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: batch-{i:03}}}\nspec: {{ports: [{{port: {generation}}}]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The port of every stored `batch-*` Service, by name.
fn stored_batch(url: &str) -> BTreeMap<String, u64> {
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .env("TRELLIS_CONTROL", url)
        .args(["get", "services", "-o", "json"])
        .output()
        .expect("run trellis get");
    assert!(
        out.status.success(),
        "get services: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let items = v.as_array().cloned().unwrap_or_default();
    items
        .iter()
        .filter_map(|s| {
            let name = s["metadata"]["name"].as_str()?;
            let port = s["spec"]["ports"][0]["port"].as_u64()?;
            name.starts_with("batch-").then(|| (name.to_string(), port))
        })
        .collect()
}

/// Applies generation after generation from a thread until stopped (bounded in count and time).
fn applier(
    dir: &Path,
    url: String,
    count: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut committed = 0;
        for g in 1..=2000u32 {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                break;
            }
            let file = dir.join(format!("gen-{g}.yaml"));
            std::fs::write(&file, generation(count, 1000 + g)).expect("write manifest");
            let out = Command::new(BIN)
                .env("TRELLIS_TOKEN", TOKEN)
                .env("TRELLIS_CONTROL", &url)
                .args(["apply", "-f", file.to_str().unwrap_or_default()])
                .output();
            let _ = std::fs::remove_file(&file);
            if out.is_ok_and(|o| o.status.success()) {
                committed += 1;
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        committed
    })
}

/// kill -9 of the control plane at random moments while applies of `count` documents run; after
/// each restart, the store holds every document of one generation, or none.
async fn kill9_during_applies(store: &str, dir: &Path, count: usize) {
    let addr = free_addr();
    let url = format!("http://{addr}");
    let mut seen_generations = Vec::new();
    for round in 0..4 {
        // One name, so the embedded store opens the same data directory every round.
        let cp = control(dir, "control", addr, store);
        wait_api(addr).await;
        let stored = stored_batch(&url);
        check_whole(&stored, count, round);
        if let Some(port) = stored.values().next() {
            seen_generations.push(*port);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let worker = applier(dir, url.clone(), count, stop.clone());
        // Long enough for several applies (a 500-document one takes a few hundred ms).
        let pause = 300 + rand::random::<u64>() % (1200 + 6 * count as u64);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        kill9(cp);
        stop.store(true, Ordering::Relaxed);
        let committed = worker.join().expect("applier thread");
        println!("round {round}: killed after {pause} ms, {committed} applies answered");
    }
    let cp = control(dir, "control", addr, store);
    wait_api(addr).await;
    check_whole(&stored_batch(&url), count, 4);
    drop(cp);
    assert!(
        !seen_generations.is_empty(),
        "no apply ever committed, so nothing was tested"
    );
}

fn check_whole(stored: &BTreeMap<String, u64>, count: usize, round: usize) {
    if stored.is_empty() {
        return;
    }
    let ports: std::collections::BTreeSet<u64> = stored.values().copied().collect();
    assert_eq!(
        (stored.len(), ports.len()),
        (count, 1),
        "after kill -9 (round {round}) the store holds part of an apply: {} of {count} documents, generations {ports:?}",
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_applies_leaves_each_apply_whole_on_the_embedded_store() {
    let dir = tempdir("cp-kill-embedded");
    kill9_during_applies("embedded", &dir, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_applies_leaves_each_apply_whole_on_etcd() {
    let dir = tempdir("cp-kill-etcd");
    let cluster = EtcdCluster::start(&dir).await;
    kill9_during_applies(&cluster.store(), &dir, 500).await;
    drop(cluster);
}

/// A Route sending half the traffic to a subset and the DestinationPolicy declaring it, in one
/// manifest (Route first), applied back and forth under load: proxies only ever see both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_multi_document_apply_under_load_fails_no_request() {
    let dir = tempdir("cp-dependent");
    let cluster = EtcdCluster::start(&dir).await;
    let store = cluster.store();
    let replicas = Replicas::start(&dir, 2, &store).await;
    let (urls, all) = (replicas.urls.clone(), replicas.all());
    apply(
        &urls[0],
        &dir,
        &format!(
            "{SERVICE}---\n{}---\n{}",
            policy(&["v1"]),
            split(&[("v1", 1)])
        ),
    );
    let instances = [
        instance(&dir, &all, "web-v1", "v1"),
        instance(&dir, &all, "web-v3", "v3"),
    ];
    let caller = caller(&dir, &all);
    wait_mesh(&instances, &caller, 2).await;
    let l = load(caller.outbound);
    for round in 0..6 {
        // Through alternating replicas, so the change crosses replicas too.
        let through = &urls[round % 2];
        let manifest = if round % 2 == 0 {
            format!(
                "{}---\n{}",
                split(&[("v1", 1), ("v3", 1)]),
                policy(&["v1", "v3"])
            )
        } else {
            format!("{}---\n{}", split(&[("v1", 1)]), policy(&["v1"]))
        };
        apply(through, &dir, &manifest);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let (failed, seen) = l.finish().await;
    println!("dependent applies under load: {seen:?}, failed {failed}");
    assert!(
        seen.get("v3").copied().unwrap_or(0) > 0,
        "the new subset never got traffic: {seen:?}"
    );
    assert_eq!(
        failed, 0,
        "a request failed while dependent documents were applied"
    );
    drop((instances, caller, replicas, cluster));
}

/// `trellis check` with the control argument given, and its exit status and output.
fn check(control: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .env("TRELLIS_TOKEN", TOKEN)
        .env("TRELLIS_CONTROL", control)
        .arg("check")
        .output()
        .expect("run trellis check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `check` sees every proxy whichever replica it asks; a replica down or the store without
/// quorum is named, and only then does it exit non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_the_truth_from_every_replica() {
    let dir = tempdir("cp-check-all");
    let mut cluster = EtcdCluster::start(&dir).await;
    let store = cluster.store();
    let mut replicas = Replicas::start(&dir, 3, &store).await;
    let urls = replicas.urls.clone();
    apply(
        &urls[0],
        &dir,
        &format!(
            "{SERVICE}---\n{}---\n{}",
            policy(&["v1"]),
            split(&[("v1", 1)])
        ),
    );
    // Each sidecar talks to one replica only, so the proxies are spread over the replicas.
    let instances = [
        instance(&dir, &urls[0], "web-v1", "v1"),
        instance(&dir, &urls[1], "web-v1b", "v1"),
    ];
    let caller = caller(&dir, &urls[2]);
    wait_mesh(&instances, &caller, 2).await;
    // Published status reaches the store within a second or two; ask until every replica
    // reports every proxy (bounded), then require exit 0 from each.
    for u in &urls {
        let mut last = String::new();
        let ok = {
            let mut ok = false;
            for _ in 0..20 {
                let (pass, text) = check(u);
                last = text;
                if pass
                    && [
                        "web-v1 is in sync",
                        "web-v1b is in sync",
                        "caller is in sync",
                    ]
                    .iter()
                    .all(|p| last.contains(p))
                {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            ok
        };
        assert!(ok, "check against {u} did not see a healthy mesh:\n{last}");
    }
    // A route change: every replica's check sees every proxy take it.
    apply(&urls[1], &dir, &split(&[("v1", 2)]));
    for u in &urls {
        let (pass, text) = check(u);
        assert!(pass, "after a change, check against {u}:\n{text}");
    }
    // Replica 2 dies (the caller's): asked through replica 0, check names it.
    kill9(replicas.procs[2].take().expect("replica 2"));
    let (pass, text) = check(&urls.join(","));
    assert!(!pass, "check passed with a replica down:\n{text}");
    assert!(
        text.contains(&format!("FAIL replica {}", urls[2])),
        "{text}"
    );
    // etcd loses quorum: every replica's check says the store is unreachable.
    cluster.kill(1);
    cluster.kill(2);
    let (pass, text) = check(&urls[..2].join(","));
    assert!(!pass, "check passed without etcd quorum:\n{text}");
    assert!(
        text.contains("store unreachable") || text.contains("cannot be read"),
        "check did not name the store:\n{text}"
    );
    drop((instances, caller, replicas, cluster));
}
