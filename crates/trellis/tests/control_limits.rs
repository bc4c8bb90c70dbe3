//! Hostile manifests against a real `trellis control`: each is refused with the limit it passed
//! named, nothing of it is stored, and the control plane keeps answering health checks and
//! lease keep-alives the whole time (it parses on the blocking pool, a bounded number at once,
//! never on the runtime's worker threads).
mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start_control(dir: &std::path::Path, addr: SocketAddr) -> Proc {
    Proc::spawn(
        dir,
        "control",
        &[
            "control".into(),
            format!("--listen={addr}"),
            format!("--data-dir={}", dir.join("data").display()),
        ],
    )
}

/// One API call with the join token.
async fn api(addr: SocketAddr, method: &str, path: &str, body: String) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let rsp = http1().request(req).await.expect("API call");
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, json)
}

/// The keys of what the store holds, the control plane's own kinds left out.
async fn stored(addr: SocketAddr) -> Vec<String> {
    let (status, v) = api(addr, "GET", "/api/v1/resources", String::new()).await;
    assert_eq!(status, 200, "{v}");
    let mut keys: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            !matches!(
                i["kind"].as_str(),
                Some("TrustBundle" | "CertificateAuthority" | "ServiceAddress")
            )
        })
        .map(|i| {
            format!(
                "{}/{}/{}",
                i["kind"].as_str().unwrap(),
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    keys.sort();
    keys
}

/// Calls `path` (GET health, or POST a lease keep-alive) every 10 ms until stopped; each call
/// must answer 200 within `patience`. Returns how many answered and the slowest.
struct Poller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(usize, Duration), String>>,
}

impl Poller {
    fn start(addr: SocketAddr, method: &'static str, path: String, patience: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut answered, mut slowest) = (0, Duration::ZERO);
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let call = api(addr, method, &path, String::new());
                match tokio::time::timeout(patience, call).await {
                    Ok((200, _)) => {}
                    Ok((status, v)) => return Err(format!("{method} {path}: {status} {v}")),
                    Err(_) => {
                        return Err(format!(
                            "{method} {path}: no answer within {patience:?} (after {answered})"
                        ))
                    }
                }
                answered += 1;
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok((answered, slowest))
        });
        Self { stop, task }
    }

    async fn finish(self) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await.expect("poller") {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }
}

const SERVICE: &str = "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";

fn laughs() -> String {
    let mut s = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        s.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    s
}

#[tokio::test]
async fn hostile_manifests_are_refused_by_name_while_health_answers() {
    let dir = tempdir("limits");
    let addr = free_addr();
    let _cp = start_control(&dir, addr);
    wait_api(addr).await;
    let (status, v) = api(addr, "POST", "/api/v1/apply?file=good.yaml", SERVICE.into()).await;
    assert_eq!(status, 200, "{v}");
    let before = stored(addr).await;
    assert_eq!(before, ["Service/default/web"]);

    let n = 100_000;
    // Indentation grows with depth, so 100 000 levels would be 5 GB: 5000 levels are 12.5 MB,
    // under the 16 MiB body limit.
    let indented: String = (0..5000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    let cases = [
        ("flow sequences", "[".repeat(n), "max-depth"),
        ("flow mappings", "{a: ".repeat(n), "max-depth"),
        ("block mappings", indented, "max-depth"),
        (
            "block sequences",
            format!("{}x\n", "- ".repeat(n)),
            "max-depth",
        ),
        ("billion laughs", laughs(), "max-document-nodes"),
        ("empty documents", "---\n".repeat(n), "max-documents"),
    ];
    for (what, hostile, limit) in cases {
        // After a good document, so a refusal must leave that one unstored too.
        let body = format!("{}---\n{hostile}", SERVICE.replace("web", "also-web"));
        let health = Poller::start(addr, "GET", "/api/v1/health".into(), Duration::from_secs(2));
        let started = Instant::now();
        let (status, v) = api(addr, "POST", "/api/v1/apply?file=hostile.yaml", body).await;
        let took = started.elapsed();
        let (polls, slowest) = health.finish().await;
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["limit"], limit, "{what}: {v}");
        assert!(v["error"].as_str().unwrap().contains(limit), "{what}: {v}");
        let detail = v["details"][0].as_str().unwrap();
        assert!(detail.starts_with("hostile.yaml"), "{what}: {detail}");
        assert!(
            detail.contains(&format!("exceeds limit {limit}")),
            "{what}: {detail}"
        );
        assert!(detail.contains(": document "), "{what}: {detail}");
        assert!(polls >= 1, "{what}: health was never polled");
        assert!(took < Duration::from_secs(10), "{what}: took {took:?}");
        eprintln!(
            "{what}: refused in {took:?}; health answered {polls} polls, slowest {slowest:?}"
        );
    }
    assert_eq!(stored(addr).await, before, "nothing stored");
}

/// Applies within every limit that take the parser a while (8 documents of 60 000 values
/// each, about half a million values), four at once: more than the runtime has worker threads. Health
/// checks and lease keep-alives answer throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_applies_never_stall_health_or_keep_alives() {
    let dir = tempdir("limits-busy");
    let addr = free_addr();
    let _cp = start_control(&dir, addr);
    wait_api(addr).await;
    let registration = serde_json::json!({
        "workload": {
            "apiVersion": "trellis.dev/v1",
            "kind": "Workload",
            "metadata": {"name": "web-0"},
            "spec": {"service": "web", "address": "127.0.0.1", "port": 8080}
        },
        "ttlSeconds": 5
    });
    let (status, v) = api(addr, "POST", "/api/v1/workloads", registration.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let lease = v["leaseId"].as_i64().unwrap();

    let doc = format!("[{}]\n", vec!["1"; 60_000].join(","));
    let body = vec![doc; 8].join("---\n");
    let patience = Duration::from_secs(2);
    let health = Poller::start(addr, "GET", "/api/v1/health".into(), patience);
    let keep_alive = Poller::start(addr, "POST", format!("/api/v1/leases/{lease}"), patience);
    let started = Instant::now();
    let applies: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(
                async move { api(addr, "POST", "/api/v1/apply?file=big.yaml", body).await },
            )
        })
        .collect();
    for a in applies {
        let (status, v) = a.await.unwrap();
        // Every document is valid YAML but no resource.
        assert_eq!(status, 400, "{v}");
        assert!(v["limit"].is_null(), "{v}");
        assert!(
            v["details"][0]
                .as_str()
                .unwrap()
                .contains("must be a mapping"),
            "{v}"
        );
    }
    let took = started.elapsed();
    let (health_polls, health_slowest) = health.finish().await;
    let (lease_polls, lease_slowest) = keep_alive.finish().await;
    eprintln!(
        "4 applies in {took:?}; health: {health_polls} polls, slowest {health_slowest:?}; keep-alive: {lease_polls}, slowest {lease_slowest:?}"
    );
    assert!(
        health_polls >= 5 && lease_polls >= 5,
        "the applies were too quick to tell"
    );
    // The workload is still registered: its lease never lapsed.
    assert!(stored(addr)
        .await
        .contains(&"Workload/default/web-0".to_string()));
}
