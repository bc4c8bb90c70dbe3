//! Chaos tests (issue 6): a service of three instances on three simulated hosts, a caller on a
//! fourth, real faults, and what the caller sees.
//!
//! Each host is its own network namespace joined to the others by a bridge (see
//! `netns/mod.rs` for the topology and how concurrent tests stay apart). An instance host runs
//! `demo-app` on its loopback and a sidecar whose inbound listener is on the host's address; the
//! caller host runs a sidecar whose outbound listener the test drives with HTTP requests
//! (`Host: web`) at a steady rate. All sidecars read one config file: round-robin balancing (so
//! every instance keeps getting traffic and outlier detection, not the balancer, is what
//! protects the caller), outlier detection, and a route with retries.
//!
//! Scenarios, one test each: `kill -9` of one instance (app and sidecar); a network partition of
//! one host (iptables DROP); one instance slow; one instance failing half its requests; and
//! faults injected by the route itself. For the first four the test asserts, over a bounded run
//! that covers the fault and its healing:
//!
//! - the caller sees at least 99.9% successful answers;
//! - the bad instance is ejected, after no more failed tries than the configured consecutive
//!   failures plus the tries that were already in flight (a bound that holds for each ejection,
//!   since an endpoint that comes back while still broken is ejected again);
//! - after the fault heals, the instance answers again (bounded wait).
//!
//! Injected faults behave as in Istio, where the fault filter runs before the router: the
//! caller sees exactly the injected aborts (they are not retried, and never reach or eject an
//! endpoint), and all other traffic is unaffected.
//!
//! Every test prints the figures it saw. No assertion is about latency; times are printed only.
//! The tests take a lock so they run one at a time (see `netns::lock_suite`).
mod common;
mod netns;

use bytes::Bytes;
use common::{get_status, http1, write_config, H1Client};
use http_body_util::{BodyExt, Full};
use netns::{lock_suite, Host, NsProc, SuiteLock, Topology};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The service instances' hosts (role, last octet) and the caller's.
const INSTANCES: [(&str, u8); 3] = [("h1", 11), ("h2", 12), ("h3", 13)];
const CALLER: (&str, u8) = ("hc", 10);

const INBOUND_PORT: u16 = 15006;
const OUTBOUND_PORT: u16 = 15001;
const ADMIN_PORT: u16 = 15000;
/// A port nothing listens on, for the connect-timeout probe.
const CLOSED_PORT: u16 = 15007;
const APP_LISTEN: &str = "127.0.0.1:8080";

// Outlier detection, as written in `config_text`; the assertions use the same numbers.
const CONSECUTIVE_5XX: u32 = 3;
const CONSECUTIVE_GATEWAY: u32 = 3;
const CONSECUTIVE_CONNECT: u32 = 2;
const MAX_EJECTION: Duration = Duration::from_secs(6);

/// Load: requests in flight at once, requests per second, and requests in the fault phase.
const CONCURRENCY: usize = 4;
const RATE: f64 = 200.0;
const FAULT_REQUESTS: usize = 1500;
/// A kill or partition starts this long into the fault phase, so the phase opens on a healthy
/// mesh.
const FAULT_AT: Duration = Duration::from_secs(1);
/// After healing, load runs until the bad instance has answered this many times...
const RETURN_ANSWERS: usize = 5;
/// ...or this long has passed (the longest ejection plus slack).
const RETURN_LIMIT: Duration = Duration::from_secs(16);
/// A client-side bound on one request, so a hang counts as a failure instead of stalling.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REQUIRED_SUCCESS: f64 = 0.999;
/// The abort share of the `chaos-mixed` rule, in percent.
const MIXED_ABORT_PERCENT: u32 = 25;
/// How long a test waits for the other chaos tests to finish.
const LOCK_LIMIT: Duration = Duration::from_secs(400);

/// What the config holds besides the service, its policy and its retrying route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extras {
    None,
    /// Route rules that inject faults into requests carrying `x-chaos`.
    Faults,
    /// A `probe` service whose one endpoint is a closed port on h2.
    Probe,
}

/// The retry policy of every rule of `web`: three tries, each bounded, on every failure kind;
/// a budget generous enough that it never refuses a retry in these scenarios.
const RETRIES: &str = "retries: {attempts: 3, perTryTimeout: 300ms, \
    retryOn: [5xx, gateway-error, reset, connect-failure], \
    backoff: {baseInterval: 5ms, maxInterval: 20ms}, \
    budget: {ratio: 0.5, minRetriesPerSecond: 50}}";

/// The mesh config shared by every sidecar (namespaces share the filesystem). Ejections last
/// 2 s, then 4 s, then 6 s (the cap), so an ejection and a return both fit in a short run; at
/// most one of the three endpoints may be ejected at once.
fn config_text(topo: &Topology, extras: Extras) -> String {
    let mut docs = vec!["kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, protocol: http}]
"
    .to_string()];
    for (role, _) in INSTANCES {
        let addr = topo.host(role).addr;
        docs.push(format!(
            "kind: Workload
metadata: {{name: web-{role}, labels: {{app: web, version: v1}}}}
spec: {{service: web, address: {addr}, port: {INBOUND_PORT}, appPort: 8080}}
"
        ));
    }
    docs.push(format!(
        "kind: DestinationPolicy
metadata: {{name: web}}
spec:
  service: web
  loadBalancer: {{algorithm: RoundRobin}}
  connectionPool: {{connectTimeout: 200ms}}
  outlierDetection:
    consecutive5xxErrors: {CONSECUTIVE_5XX}
    consecutiveGatewayErrors: {CONSECUTIVE_GATEWAY}
    consecutiveConnectErrors: {CONSECUTIVE_CONNECT}
    baseEjectionTime: 2s
    maxEjectionTime: {}s
    maxEjectionPercent: 34
",
        MAX_EJECTION.as_secs()
    ));
    let mut rules = String::new();
    if extras == Extras::Faults {
        rules.push_str(&format!(
            "    - name: chaos-abort
      matches: [{{headers: [{{name: x-chaos, value: abort}}]}}]
      fault: {{abort: {{httpStatus: 503, percent: 100}}}}
      {RETRIES}
    - name: chaos-mixed
      matches: [{{headers: [{{name: x-chaos, value: mixed}}]}}]
      fault:
        delay: {{fixedDelay: 5ms, percent: 50}}
        abort: {{httpStatus: 503, percent: {MIXED_ABORT_PERCENT}}}
      {RETRIES}
"
        ));
    }
    rules.push_str(&format!("    - name: default\n      {RETRIES}\n"));
    docs.push(format!(
        "kind: Route
metadata: {{name: web}}
spec:
  service: web
  rules:
{rules}"
    ));
    if extras == Extras::Probe {
        let h2 = topo.host("h2").addr;
        docs.push(
            "kind: Service
metadata: {name: probe}
spec:
  ports: [{name: http, port: 80, protocol: http}]
"
            .to_string(),
        );
        docs.push(format!(
            "kind: Workload
metadata: {{name: probe-h2}}
spec: {{service: probe, address: {h2}, port: {CLOSED_PORT}}}
"
        ));
        docs.push(
            "kind: DestinationPolicy
metadata: {name: probe}
spec:
  service: probe
  connectionPool: {connectTimeout: 200ms}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: probe}
spec:
  service: probe
  rules:
    - name: probe
      timeout: 1s
"
            .to_string(),
        );
    }
    docs.iter()
        .map(|d| format!("apiVersion: trellis.dev/v1\n{d}"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One service instance: the demo app and its sidecar.
struct Instance {
    app: NsProc,
    sidecar: NsProc,
}

/// The running mesh of one test. Fields drop in order: processes first, then the topology
/// (namespaces and veths), then the suite lock.
struct Mesh {
    instances: Vec<Option<Instance>>,
    caller: NsProc,
    topo: Topology,
    _lock: SuiteLock,
    dir: PathBuf,
    config: PathBuf,
    client: H1Client,
    /// The caller sidecar's outbound listener and admin port, on the caller host's address.
    outbound: SocketAddr,
    admin: SocketAddr,
    /// Counts process starts, so a restarted process gets a fresh log file.
    starts: usize,
}

impl Mesh {
    async fn start(tag: &str, extras: Extras) -> Mesh {
        let lock = lock_suite(LOCK_LIMIT).await;
        let mut hosts = vec![CALLER];
        hosts.extend(INSTANCES);
        let topo = Topology::create(&hosts);
        let dir = common::tempdir(&format!("chaos-{tag}"));
        let config = dir.join("mesh.yaml");
        write_config(&config, &config_text(&topo, extras));
        let hc = topo.host(CALLER.0).clone();
        let outbound = SocketAddr::new(hc.addr.into(), OUTBOUND_PORT);
        let admin = SocketAddr::new(hc.addr.into(), ADMIN_PORT);
        let caller = hc.spawn(
            &dir,
            "hc-proxy",
            &[
                "proxy".into(),
                format!("--config={}", config.display()),
                "--service=caller".into(),
                format!("--outbound={outbound}"),
                format!("--admin={admin}"),
                "--watch-interval=100ms".into(),
                "--detect-timeout=300ms".into(),
            ],
        );
        let mut mesh = Mesh {
            instances: INSTANCES.iter().map(|_| None).collect(),
            caller,
            topo,
            _lock: lock,
            dir,
            config,
            client: http1(),
            outbound,
            admin,
            starts: 0,
        };
        println!(
            "chaos {tag}: subnet 10.77.{}.0/24, logs in {}",
            mesh.topo.subnet,
            mesh.dir.display()
        );
        for i in 0..INSTANCES.len() {
            mesh.start_instance(i, &[]).await;
        }
        common::wait_ready(mesh.admin).await;
        mesh.warm_up().await;
        mesh
    }

    fn host(&self, i: usize) -> &Host {
        self.topo.host(INSTANCES[i].0)
    }

    /// Where callers reach instance `i`: its sidecar's inbound listener.
    fn inbound(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.host(i).addr.into(), INBOUND_PORT)
    }

    fn instance_admin(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.host(i).addr.into(), ADMIN_PORT)
    }

    async fn spawn_app(&mut self, i: usize, app_args: &[&str]) -> NsProc {
        self.starts += 1;
        let role = INSTANCES[i].0;
        let mut args = vec![
            "demo-app".to_string(),
            format!("--listen={APP_LISTEN}"),
            "--name=web".into(),
            format!("--instance={role}"),
        ];
        args.extend(app_args.iter().map(|a| a.to_string()));
        let label = format!("{role}-app-{}", self.starts);
        let mut app = self.host(i).spawn(&self.dir, &label, &args);
        app.wait_log("listening on", Duration::from_secs(20)).await;
        app
    }

    /// Starts instance `i` (app, then sidecar) and waits until both are up.
    async fn start_instance(&mut self, i: usize, app_args: &[&str]) {
        let app = self.spawn_app(i, app_args).await;
        self.starts += 1;
        let (inbound, admin) = (self.inbound(i), self.instance_admin(i));
        let label = format!("{}-proxy-{}", INSTANCES[i].0, self.starts);
        let sidecar = self.host(i).spawn(
            &self.dir,
            &label,
            &[
                "proxy".into(),
                format!("--config={}", self.config.display()),
                "--service=web".into(),
                "--outbound=off".into(),
                format!("--inbound={inbound}"),
                format!("--app={APP_LISTEN}"),
                format!("--admin={admin}"),
                "--detect-timeout=300ms".into(),
            ],
        );
        common::wait_ready(admin).await;
        self.instances[i] = Some(Instance { app, sidecar });
    }

    /// `kill -9` of instance `i`'s app and sidecar.
    fn kill_instance(&mut self, i: usize) {
        let mut inst = self.instances[i].take().expect("instance is running");
        inst.sidecar.kill9();
        inst.app.kill9();
    }

    /// Replaces instance `i`'s app with one started with `app_args`; the sidecar stays. For the
    /// few milliseconds between the two apps the sidecar answers 503 (app connect refused),
    /// which the caller retries like any other failure.
    async fn replace_app(&mut self, i: usize, app_args: &[&str]) {
        let mut inst = self.instances[i].take().expect("instance is running");
        inst.app.kill9();
        inst.app = self.spawn_app(i, app_args).await;
        self.instances[i] = Some(inst);
    }

    /// Sends requests until every instance has answered: the caller has config, connections to
    /// each instance, and the mesh works before any fault.
    async fn warm_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = BTreeMap::<String, usize>::new();
        while Instant::now() < deadline {
            let shot = request(&self.client, self.outbound, "web", &[], Instant::now()).await;
            if let (200, Some(i)) = (shot.status, shot.instance) {
                *seen.entry(i).or_default() += 1;
            }
            if seen.len() == INSTANCES.len() && seen.values().all(|n| *n >= 3) {
                return;
            }
        }
        panic!("warm-up: not every instance answered through the caller: {seen:?}");
    }

    fn dump_logs(&self) {
        println!(
            "logs of this run are in {} (caller: {}, PID {})",
            self.dir.display(),
            self.caller.log.display(),
            self.caller.pid()
        );
    }
}

/// One request's outcome.
#[derive(Debug, Clone)]
struct Shot {
    /// Since the load started.
    at: Duration,
    /// 0 when no HTTP answer came (transport error or the client-side timeout).
    status: u16,
    /// The demo app's `x-demo-instance`, when an instance answered.
    instance: Option<String>,
    /// `trellis-error`, or the client error.
    reason: Option<String>,
    /// Which header variant the request carried (index into `Plan::variants`).
    variant: usize,
}

impl Shot {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

async fn request(
    client: &H1Client,
    outbound: SocketAddr,
    host: &str,
    headers: &[(String, String)],
    start: Instant,
) -> Shot {
    let mut req =
        http::Request::get(format!("http://{outbound}/")).header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::new())).expect("a valid request");
    let exchange = async {
        let rsp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status().as_u16();
        let header = |n: &str| {
            rsp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (instance, reason) = (header("x-demo-instance"), header("trellis-error"));
        // Read the body so the connection can be reused.
        rsp.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, instance, reason))
    };
    let (status, instance, reason) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => (0, None, Some(format!("client error: {e}"))),
        Err(_) => (0, None, Some("client timeout".into())),
    };
    Shot {
        at: start.elapsed(),
        status,
        instance,
        reason,
        variant: 0,
    }
}

/// A bounded run of requests at `RATE` per second, `CONCURRENCY` at a time.
#[derive(Clone)]
struct Plan {
    /// At most this many requests.
    total: usize,
    /// At most this long.
    limit: Duration,
    /// Header sets; request `n` carries `variants[n % len]`.
    variants: Vec<Vec<(String, String)>>,
    /// Stop early once this instance has answered (200) this many times.
    until: Option<(String, usize)>,
}

impl Plan {
    fn count(total: usize) -> Plan {
        Plan {
            total,
            // Twice the time the count needs at the nominal rate: a bound, not a target.
            limit: Duration::from_secs_f64(2.0 * total as f64 / RATE) + Duration::from_secs(5),
            variants: vec![Vec::new()],
            until: None,
        }
    }

    fn until_instance(role: &str, answers: usize, limit: Duration) -> Plan {
        Plan {
            total: usize::MAX,
            limit,
            variants: vec![Vec::new()],
            until: Some((role.to_string(), answers)),
        }
    }

    fn with_variants(mut self, variants: &[&[(&str, &str)]]) -> Plan {
        self.variants = variants
            .iter()
            .map(|v| {
                v.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect();
        self
    }
}

/// Runs `plan` against the caller's outbound listener (`Host: web`); returns every outcome.
async fn drive(client: H1Client, outbound: SocketAddr, plan: Plan) -> Vec<Shot> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let shots = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let t0 = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / RATE);
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (plan, next, answered, shots, client) = (
            plan.clone(),
            next.clone(),
            answered.clone(),
            shots.clone(),
            client.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let done = plan
                    .until
                    .as_ref()
                    .is_some_and(|(_, k)| answered.load(Ordering::Relaxed) >= *k);
                if n >= plan.total || start.elapsed() >= plan.limit || done {
                    break;
                }
                // A fixed schedule: request n leaves at n / RATE (or as soon as a worker is
                // free), so a slow phase does not lower the offered load.
                let at = period.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
                tokio::time::sleep_until(t0 + at).await;
                let variant = n % plan.variants.len();
                let mut shot =
                    request(&client, outbound, "web", &plan.variants[variant], start).await;
                shot.variant = variant;
                if let Some((role, _)) = &plan.until {
                    if shot.ok() && shot.instance.as_deref() == Some(role) {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                shots.lock().expect("shots lock").push(shot);
            }
        }));
    }
    for w in workers {
        w.await.expect("load worker panicked");
    }
    let mut shots = std::mem::take(&mut *shots.lock().expect("shots lock"));
    shots.sort_by_key(|s| s.at);
    shots
}

/// Counts of a set of outcomes.
#[derive(Debug, Default)]
struct Tally {
    total: usize,
    ok: usize,
    by_instance: BTreeMap<String, usize>,
    /// `"<status> <reason>"` of each failure.
    failures: BTreeMap<String, usize>,
}

impl Tally {
    fn of<'a>(shots: impl IntoIterator<Item = &'a Shot>) -> Tally {
        let mut t = Tally::default();
        for s in shots {
            t.total += 1;
            if s.ok() {
                t.ok += 1;
                if let Some(i) = &s.instance {
                    *t.by_instance.entry(i.clone()).or_default() += 1;
                }
            } else {
                let key = format!("{} {}", s.status, s.reason.as_deref().unwrap_or("-"));
                *t.failures.entry(key).or_default() += 1;
            }
        }
        t
    }

    fn failed(&self) -> usize {
        self.total - self.ok
    }

    fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.ok as f64 / self.total as f64
        }
    }
}

/// The caller sidecar's counters that matter here.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// Retries made (`trellis_retries_total{outcome="attempted"}`).
    retries: f64,
    /// Requests answered with a 5xx other than an injected fault.
    failed: f64,
    /// Requests answered with an injected fault.
    injected: f64,
    /// `trellis_outlier_ejections_total{service="web"}`.
    ejections: f64,
}

impl Counters {
    /// Failed tries between `self` (earlier) and `later`: every failed try is either retried or
    /// the last try of a request that failed.
    fn failed_tries_until(&self, later: &Counters) -> f64 {
        (later.retries - self.retries) + (later.failed - self.failed)
    }
}

async fn counters(admin: SocketAddr) -> Counters {
    let (status, text) = get_status(admin, "/metrics")
        .await
        .expect("caller /metrics answers");
    assert_eq!(status, 200, "caller /metrics: {text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics exposition parses");
    let mut c = Counters::default();
    for s in &scrape.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let label = |k: &str| s.labels.get(k).unwrap_or("");
        match s.metric.as_str() {
            "trellis_retries_total" if label("outcome") == "attempted" => c.retries += v,
            "trellis_requests_total" if label("service") == "web" => {
                let code: u16 = label("code").parse().unwrap_or(0);
                if label("reason") == "fault-injected" {
                    c.injected += v;
                } else if code >= 500 {
                    c.failed += v;
                }
            }
            "trellis_outlier_ejections_total" if label("service") == "web" => c.ejections += v,
            _ => {}
        }
    }
    c
}

/// One endpoint of `web` as the caller's `/config` shows it.
#[derive(Debug, Default, Clone, Copy)]
struct EndpointState {
    ejected: bool,
    ejections: u64,
}

async fn endpoints(admin: SocketAddr) -> BTreeMap<String, EndpointState> {
    let (_, body) = get_status(admin, "/config")
        .await
        .expect("caller /config answers");
    let j: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/config is not JSON ({e}): {body}"));
    let web = j["services"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "web"))
        .unwrap_or_else(|| panic!("no service web in the caller's /config: {body}"));
    web["endpoints"]
        .as_array()
        .expect("endpoints list")
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or("?").to_string(),
                EndpointState {
                    ejected: e["ejected"] == true,
                    ejections: e["ejections"].as_u64().unwrap_or(0),
                },
            )
        })
        .collect()
}

/// What a `Watch` saw of one endpoint.
#[derive(Debug, Default)]
struct WatchReport {
    /// When it was first seen ejected, from the watch's start.
    first_ejection: Option<Duration>,
    /// Failed tries the caller had counted (since the baseline) when the first ejection was
    /// seen; tries to an ejected endpoint stop, so this bounds the failures before ejection.
    failed_tries_at_first_ejection: Option<f64>,
    /// Ejected periods seen: (from, until), `None` while still ejected.
    periods: Vec<(Duration, Option<Duration>)>,
    polls: usize,
}

/// Polls the caller's `/config` every 25 ms while a scenario runs, recording when `endpoint`
/// is ejected and comes back.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<WatchReport>,
}

impl Watch {
    fn start(admin: SocketAddr, endpoint: String, baseline: Counters, start: Instant) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut r = WatchReport::default();
            while !flag.load(Ordering::Relaxed) {
                let eps = endpoints(admin).await;
                r.polls += 1;
                let ejected = eps.get(&endpoint).is_some_and(|e| e.ejected);
                let now = start.elapsed();
                let open = r.periods.last().is_some_and(|p| p.1.is_none());
                if ejected && !open {
                    r.periods.push((now, None));
                    if r.first_ejection.is_none() {
                        r.first_ejection = Some(now);
                        let c = counters(admin).await;
                        r.failed_tries_at_first_ejection = Some(baseline.failed_tries_until(&c));
                    }
                } else if !ejected && open {
                    if let Some(p) = r.periods.last_mut() {
                        p.1 = Some(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            r
        });
        Watch { stop, task }
    }

    async fn finish(self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("watch task panicked")
    }
}

/// The faults of the first four scenarios.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` of the instance's app and sidecar; healed by starting both again.
    Kill9,
    /// `iptables -A INPUT -i eth0 -j DROP` on the instance's host; healed by deleting the rule.
    Partition,
    /// The app answers after 2 s (the per-try timeout is 300 ms); healed by a normal app.
    /// (`tc netem` would be the network-level way, but this kernel has no `sch_netem`.)
    Slow,
    /// The app answers 500 to half the requests; healed by a normal app.
    HalfErrors,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9",
            Fault::Partition => "partition",
            Fault::Slow => "slow instance",
            Fault::HalfErrors => "50% errors",
        }
    }

    /// Consecutive failed tries after which outlier detection ejects the endpoint, when every
    /// try to it fails: refused connections trip `consecutiveConnectErrors` (the resets of tries
    /// in flight at the kill are gateway errors, covered by the in-flight slack); timeouts are
    /// gateway errors. `None` for 50% errors: successes in between reset the count, so no
    /// bound on failures before ejection exists.
    fn threshold(self) -> Option<u32> {
        match self {
            Fault::Kill9 => Some(CONSECUTIVE_CONNECT),
            Fault::Partition | Fault::Slow => Some(CONSECUTIVE_GATEWAY),
            Fault::HalfErrors => None,
        }
    }

    /// Whether the fault is injected while the load runs. A kill or a partition is; a slow or
    /// failing app is swapped in before the load starts, because the swap itself (the sidecar
    /// answering 503 for the moment no app listens) would be a second fault that trips outlier
    /// detection on its own and blurs what the figures measure.
    fn under_load(self) -> bool {
        matches!(self, Fault::Kill9 | Fault::Partition)
    }

    async fn inject(self, mesh: &mut Mesh, bad: usize) {
        match self {
            Fault::Kill9 => mesh.kill_instance(bad),
            Fault::Partition => mesh.host(bad).partition(),
            Fault::Slow => mesh.replace_app(bad, &["--latency=2s"]).await,
            Fault::HalfErrors => mesh.replace_app(bad, &["--error-rate=0.5"]).await,
        }
    }

    async fn heal(self, mesh: &mut Mesh, bad: usize) {
        match self {
            Fault::Kill9 => mesh.start_instance(bad, &[]).await,
            Fault::Partition => mesh.host(bad).heal_partition(),
            Fault::Slow | Fault::HalfErrors => mesh.replace_app(bad, &[]).await,
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Runs one fault scenario against instance `bad`, prints its figures, and asserts the
/// issue's criteria (all checked, then reported together).
async fn chaos(fault: Fault, bad: usize) {
    let tag = match fault {
        Fault::Kill9 => "kill9",
        Fault::Partition => "partition",
        Fault::Slow => "slow",
        Fault::HalfErrors => "errors",
    };
    let mut mesh = Mesh::start(tag, Extras::None).await;
    let role = INSTANCES[bad].0;
    let bad_addr = mesh.inbound(bad).to_string();
    let base = counters(mesh.admin).await;
    let base_eps = endpoints(mesh.admin).await;
    let start = Instant::now();
    let watch = Watch::start(mesh.admin, bad_addr.clone(), base, start);

    // Fault phase: the fault hits FAULT_AT into the load, or before it (see `under_load`).
    let mut fault_at = Duration::ZERO;
    if !fault.under_load() {
        fault.inject(&mut mesh, bad).await;
        fault_at = start.elapsed();
    }
    let load = tokio::spawn(drive(
        mesh.client.clone(),
        mesh.outbound,
        Plan::count(FAULT_REQUESTS),
    ));
    if fault.under_load() {
        tokio::time::sleep(FAULT_AT).await;
        fault_at = start.elapsed();
        fault.inject(&mut mesh, bad).await;
    }
    let fault_shots = load.await.expect("load task panicked");
    let at_fault_end = counters(mesh.admin).await;
    let eps_fault_end = endpoints(mesh.admin).await;

    // Heal, then load until the instance has answered again.
    let heal_start = start.elapsed();
    fault.heal(&mut mesh, bad).await;
    let healed_at = start.elapsed();
    let recovery = drive(
        mesh.client.clone(),
        mesh.outbound,
        Plan::until_instance(role, RETURN_ANSWERS, RETURN_LIMIT),
    )
    .await;
    let report = watch.finish().await;
    let end = counters(mesh.admin).await;

    let all = Tally::of(fault_shots.iter().chain(&recovery));
    let in_fault = Tally::of(&fault_shots);
    let after = Tally::of(&recovery);
    let ejections = |eps: &BTreeMap<String, EndpointState>, addr: &str| {
        eps.get(addr).map_or(0, |e| e.ejections) - base_eps.get(addr).map_or(0, |e| e.ejections)
    };
    let bad_ejections = ejections(&eps_fault_end, &bad_addr);
    let other_ejections: u64 = (0..INSTANCES.len())
        .filter(|i| *i != bad)
        .map(|i| ejections(&eps_fault_end, &mesh.inbound(i).to_string()))
        .sum();
    let failed_tries = base.failed_tries_until(&at_fault_end);
    let returned = recovery
        .iter()
        .find(|s| s.ok() && s.instance.as_deref() == Some(role))
        .map(|s| s.at);
    let answers_after = after.by_instance.get(role).copied().unwrap_or(0);

    println!("== chaos: {} of {role} ({bad_addr})", fault.name());
    println!(
        "   requests {}, ok {}, failed {}, success {:.3}% (required {:.1}%); failures: {:?}",
        all.total,
        all.ok,
        all.failed(),
        100.0 * all.ratio(),
        100.0 * REQUIRED_SUCCESS,
        all.failures
    );
    println!(
        "   fault phase: {} requests ({} ok), answers by instance {:?}; fault at {} (from the watch's start)",
        in_fault.total,
        in_fault.ok,
        in_fault.by_instance,
        secs(fault_at)
    );
    println!(
        "   caller: {} failed tries in the fault phase ({} retries, {} failed answers); {} retries in all",
        failed_tries,
        at_fault_end.retries - base.retries,
        at_fault_end.failed - base.failed,
        end.retries - base.retries,
    );
    println!(
        "   ejections of {role}: {bad_ejections} (metric: {}), of the healthy instances: {other_ejections}",
        at_fault_end.ejections - base.ejections
    );
    match (report.first_ejection, report.failed_tries_at_first_ejection) {
        (Some(t), Some(n)) => println!(
            "   first ejection seen {} after the fault, {n} failed tries by then ({})",
            secs(t.saturating_sub(fault_at)),
            fault.threshold().map_or(
                "no bound: successes in between reset the count".into(),
                |k| format!("allowed: {k} consecutive + up to {CONCURRENCY} in flight")
            )
        ),
        _ => println!("   never seen ejected ({} polls of /config)", report.polls),
    }
    let periods: Vec<String> = report
        .periods
        .iter()
        .map(|(a, b)| {
            format!(
                "{}..{}",
                secs(a.saturating_sub(fault_at)),
                b.map_or("end".into(), |b| secs(b.saturating_sub(fault_at)))
            )
        })
        .collect();
    // Back-to-back ejections (an endpoint back from ejection and failing at once) merge here.
    println!("   ejected periods seen by polling /config, from the fault: {periods:?}");
    println!(
        "   healed in {} (at {}); {role} answered again {} after ({answers_after} answers in {} requests)",
        secs(healed_at - heal_start),
        secs(healed_at),
        returned.map_or("never".into(), secs),
        after.total
    );

    let mut problems = Vec::new();
    if all.ratio() < REQUIRED_SUCCESS {
        problems.push(format!(
            "success {:.3}% is below {:.1}%: {:?}",
            100.0 * all.ratio(),
            100.0 * REQUIRED_SUCCESS,
            all.failures
        ));
    }
    if bad_ejections == 0 {
        problems.push(format!("{role} was never ejected"));
    }
    if let Some(threshold) = fault.threshold() {
        let per_ejection = f64::from(threshold) + CONCURRENCY as f64;
        if let Some(n) = report.failed_tries_at_first_ejection {
            if n > per_ejection {
                problems.push(format!(
                    "{n} failed tries before the first ejection; at most {threshold} + {CONCURRENCY} in flight expected"
                ));
            }
        }
        let bound = (bad_ejections as f64 + 1.0) * per_ejection;
        if failed_tries > bound {
            problems.push(format!(
                "{failed_tries} failed tries for {bad_ejections} ejections; at most {bound} expected"
            ));
        }
    }
    if answers_after < RETURN_ANSWERS {
        problems.push(format!(
            "{role} answered {answers_after} times within {RETURN_LIMIT:?} after healing, {RETURN_ANSWERS} expected"
        ));
    }
    if !problems.is_empty() {
        mesh.dump_logs();
    }
    assert!(
        problems.is_empty(),
        "chaos {}: {}",
        fault.name(),
        problems.join("; ")
    );
}

#[tokio::test]
async fn kill9_of_one_instance_is_retried_ejected_and_healed() {
    chaos(Fault::Kill9, 0).await;
}

#[tokio::test]
async fn partition_of_one_host_is_retried_ejected_and_healed() {
    chaos(Fault::Partition, 1).await;
}

#[tokio::test]
async fn slow_instance_is_timed_out_ejected_and_healed() {
    chaos(Fault::Slow, 2).await;
}

#[tokio::test]
async fn half_failing_instance_is_retried_ejected_and_healed() {
    chaos(Fault::HalfErrors, 0).await;
}

/// Bounds within which `k` successes of `n` tries at probability `p` fall with near certainty
/// (six standard deviations: a false alarm about once in a billion runs).
fn binomial_bounds(n: usize, p: f64) -> (f64, f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (mean - 6.0 * sd, mean + 6.0 * sd)
}

/// Faults the route injects itself: as in Istio, the caller sees exactly the injected aborts
/// (never retried, never sent to an endpoint, so never ejecting one); traffic without the
/// header is untouched; and once the fault is removed from the config, everything succeeds.
#[tokio::test]
async fn injected_faults_are_seen_as_injected_and_heal_with_the_config() {
    let mesh = Mesh::start("faults", Extras::Faults).await;
    let base = counters(mesh.admin).await;
    let base_eps = endpoints(mesh.admin).await;
    let variants: &[&[(&str, &str)]] = &[&[], &[("x-chaos", "abort")], &[("x-chaos", "mixed")]];
    let shots = drive(
        mesh.client.clone(),
        mesh.outbound,
        Plan::count(FAULT_REQUESTS).with_variants(variants),
    )
    .await;
    let during = counters(mesh.admin).await;
    let eps = endpoints(mesh.admin).await;
    let by_variant: Vec<Tally> = (0..variants.len())
        .map(|v| Tally::of(shots.iter().filter(|s| s.variant == v)))
        .collect();
    let injected = |v: usize| {
        shots
            .iter()
            .filter(|s| {
                s.variant == v && s.status == 503 && s.reason.as_deref() == Some("fault-injected")
            })
            .count()
    };
    let (plain, abort, mixed) = (&by_variant[0], &by_variant[1], &by_variant[2]);
    let (abort_injected, mixed_injected) = (injected(1), injected(2));
    let p = f64::from(MIXED_ABORT_PERCENT) / 100.0;
    let (lo, hi) = binomial_bounds(mixed.total, p);
    let ejections: u64 = eps
        .iter()
        .map(|(a, e)| e.ejections - base_eps.get(a).map_or(0, |b| b.ejections))
        .sum();
    let retries = during.retries - base.retries;

    // Heal: the same config without the fault rules.
    write_config(&mesh.config, &config_text(&mesh.topo, Extras::None));
    wait_for_rules_without(mesh.admin, "chaos").await;
    let healed = drive(
        mesh.client.clone(),
        mesh.outbound,
        Plan::count(300).with_variants(&variants[1..]),
    )
    .await;
    let healed = Tally::of(&healed);

    println!("== chaos: faults injected by the route");
    println!(
        "   no header: {} requests, {} ok ({:.3}%), by instance {:?}, failures {:?}",
        plain.total,
        plain.ok,
        100.0 * plain.ratio(),
        plain.by_instance,
        plain.failures
    );
    println!(
        "   x-chaos: abort (100% abort): {} requests, {abort_injected} aborted as injected, {} ok",
        abort.total, abort.ok
    );
    println!(
        "   x-chaos: mixed ({MIXED_ABORT_PERCENT}% abort, 50% 5 ms delay): {} requests, {mixed_injected} aborted ({:.1}%, expected {lo:.0}..{hi:.0}), {} ok, other failures {}",
        mixed.total,
        100.0 * mixed_injected as f64 / mixed.total.max(1) as f64,
        mixed.ok,
        mixed.failed() - mixed_injected
    );
    println!(
        "   caller: {} injected answers counted, {retries} retries, {ejections} ejections",
        during.injected - base.injected
    );
    println!(
        "   after removing the faults: {} requests with x-chaos, {} ok",
        healed.total, healed.ok
    );

    let mut problems = Vec::new();
    if plain.ratio() < REQUIRED_SUCCESS {
        problems.push(format!("plain traffic failed: {:?}", plain.failures));
    }
    if abort_injected != abort.total {
        problems.push(format!(
            "{abort_injected} of {} x-chaos: abort requests were aborted as injected: {:?}",
            abort.total, abort.failures
        ));
    }
    if mixed.failed() != mixed_injected {
        problems.push(format!(
            "x-chaos: mixed failures other than injected ones: {:?}",
            mixed.failures
        ));
    }
    if (mixed_injected as f64) < lo || (mixed_injected as f64) > hi {
        problems.push(format!(
            "{mixed_injected} of {} mixed requests aborted, expected {lo:.0}..{hi:.0}",
            mixed.total
        ));
    }
    if during.injected - base.injected != (abort_injected + mixed_injected) as f64 {
        problems.push(format!(
            "caller counted {} injected answers, the client saw {}",
            during.injected - base.injected,
            abort_injected + mixed_injected
        ));
    }
    // Retrying the injected aborts would take at least one retry per abort; a stray retry of
    // an ordinary failure (an upstream connection closed under a loaded machine) is allowed.
    let aborted = (abort_injected + mixed_injected) as f64;
    if retries > 2.0 || retries >= aborted {
        problems.push(format!(
            "{retries} retries for {aborted} injected aborts: injected aborts must not be retried"
        ));
    }
    if ejections != 0 {
        problems.push(format!(
            "{ejections} ejections: injected aborts must not eject endpoints"
        ));
    }
    if healed.ok != healed.total {
        problems.push(format!(
            "after the faults were removed: {:?}",
            healed.failures
        ));
    }
    if !problems.is_empty() {
        mesh.dump_logs();
    }
    assert!(
        problems.is_empty(),
        "injected faults: {}",
        problems.join("; ")
    );
}

/// Waits (bounded) until the caller's `web` service has no rule whose name contains `needle`.
async fn wait_for_rules_without(admin: SocketAddr, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rules = String::new();
    while Instant::now() < deadline {
        let (_, body) = get_status(admin, "/config")
            .await
            .expect("caller /config answers");
        let j: serde_json::Value = serde_json::from_str(&body).expect("/config is JSON");
        let web = j["services"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == "web"))
            .cloned()
            .unwrap_or_default();
        rules = web["rules"].to_string();
        if !rules.contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the caller never dropped the {needle} rules: {rules}");
}

/// A partitioned host drops SYNs, so connecting to it can only time out; the caller must give
/// up after the service's `connectionPool.connectTimeout` (200 ms here) and answer
/// `connect-failed`, well inside the route's 1 s timeout. (A host that is up but has nothing on
/// the port refuses at once, which is checked first.) This is what lets
/// `consecutiveConnectErrors` see a partition at all.
#[tokio::test]
async fn partitioned_host_fails_connects_within_the_policy_connect_timeout() {
    let mesh = Mesh::start("connect-timeout", Extras::Probe).await;
    let refused = request(&mesh.client, mesh.outbound, "probe", &[], Instant::now()).await;
    let h2 = mesh.topo.host("h2").clone();
    h2.partition();
    let mut partitioned = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let shot = request(&mesh.client, mesh.outbound, "probe", &[], start).await;
        partitioned.push((shot.status, shot.reason, shot.at));
    }
    h2.heal_partition();
    println!("== chaos: connect timeout to a partitioned host (policy connectTimeout 200ms, route timeout 1s)");
    println!(
        "   host up, port closed: {} {:?} after {}",
        refused.status,
        refused.reason,
        secs(refused.at)
    );
    for (status, reason, at) in &partitioned {
        println!("   partitioned: {status} {reason:?} after {}", secs(*at));
    }
    assert_eq!(
        (refused.status, refused.reason.as_deref()),
        (503, Some("connect-failed")),
        "a closed port on a reachable host is a connect failure"
    );
    let wrong: Vec<_> = partitioned
        .iter()
        .filter(|(s, r, _)| (*s, r.as_deref()) != (503, Some("connect-failed")))
        .collect();
    if !wrong.is_empty() {
        mesh.dump_logs();
    }
    assert!(
        wrong.is_empty(),
        "connecting to a partitioned host must fail as connect-failed after the policy's \
         connectTimeout (200ms), before the route timeout (1s); got {wrong:?}"
    );
}
