//! The forwarding core in-process: a fake [`Upstream`] answers (or fails, or hangs) per endpoint
//! address as each test scripts it, and records every try, on tokio's paused clock, so the try
//! loop's timing is exact and a test of a 10 s timeout takes no time.
use super::*;
use crate::metrics::{Metrics, RetryLabels};
use crate::settings::LocalIdentity;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::time::Instant;

const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";
const PEER: &str = "10.9.9.9:5555";

/// What a fake endpoint does with a try.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Answers at once with this status.
    Answer(u16),
    /// Answers with this status after a while.
    Slow(Duration, u16),
    /// Refuses the connection.
    Refuse,
    /// Never answers.
    Hang,
}

/// An upstream whose endpoints follow a script: the nth try at an address does the nth act
/// listed for it, or, for a fake made [`Fake::in_turn`], the nth try wherever it goes does the
/// nth act (the last act repeats).
struct Fake {
    script: HashMap<SocketAddr, Vec<Act>>,
    in_turn: Vec<Act>,
    /// Every try, in order: where it went and when it started.
    tries: Mutex<Vec<(SocketAddr, Instant)>>,
}

impl Fake {
    fn new(script: &[(&str, &[Act])]) -> Arc<Self> {
        let script = script
            .iter()
            .map(|(addr, acts)| (addr.parse().expect("address"), acts.to_vec()))
            .collect();
        Arc::new(Self {
            script,
            in_turn: Vec::new(),
            tries: Mutex::new(Vec::new()),
        })
    }

    fn in_turn(acts: &[Act]) -> Arc<Self> {
        Arc::new(Self {
            script: HashMap::new(),
            in_turn: acts.to_vec(),
            tries: Mutex::new(Vec::new()),
        })
    }

    fn tries(&self) -> Vec<(SocketAddr, Instant)> {
        self.tries.lock().expect("lock").clone()
    }

    fn tries_at(&self, addr: &str) -> usize {
        let addr: SocketAddr = addr.parse().expect("address");
        self.tries().iter().filter(|(a, _)| *a == addr).count()
    }
}

impl Upstream for Fake {
    async fn send(
        &self,
        dial: &crate::upstream::Dial,
        _wire: Wire,
        _req: Request<Body>,
    ) -> Result<Response<Body>, AttemptError> {
        let (at_addr, overall) = {
            let mut tries = self.tries.lock().expect("lock");
            tries.push((dial.addr, Instant::now()));
            let at_addr = tries.iter().filter(|(a, _)| *a == dial.addr).count();
            (at_addr - 1, tries.len() - 1)
        };
        let (acts, n) = match self.in_turn.is_empty() {
            true => (
                self.script.get(&dial.addr).map_or(&[][..], Vec::as_slice),
                at_addr,
            ),
            false => (self.in_turn.as_slice(), overall),
        };
        let answer = |status: u16| {
            let mut rsp = Response::new(body::empty());
            *rsp.status_mut() = http::StatusCode::from_u16(status).expect("status");
            Ok(rsp)
        };
        match acts.get(n).or(acts.last()).copied().unwrap_or(Act::Refuse) {
            Act::Answer(status) => answer(status),
            Act::Slow(after, status) => {
                tokio::time::sleep(after).await;
                answer(status)
            }
            Act::Refuse => Err(AttemptError {
                failure: Failure::ConnectFailed,
                detail: format!("{}: connection refused", dial.addr),
            }),
            Act::Hang => std::future::pending().await,
        }
    }
}

/// A snapshot with service `web` (endpoints A and B) and whatever `extra` documents add.
fn snapshot(extra: &str) -> Snapshot {
    let mut text = String::from(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80, protocol: http}]\n",
    );
    for (name, addr) in [("a", A), ("b", B)] {
        let (ip, port) = addr.split_once(':').expect("address");
        text.push_str(&format!(
            "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: {name}}}\nspec: {{service: web, address: {ip}, port: {port}}}\n"
        ));
    }
    text.push_str(extra);
    let resources = trellis_api::parse_documents("test", &text).expect("parses");
    let local = LocalIdentity {
        service: "client".into(),
        namespace: "default".into(),
        zone: None,
    };
    Snapshot::build(1, "test".into(), resources, None, &local).expect("builds")
}

/// A Route for `web` whose one rule is `rule` (YAML, indented for a list item).
fn route(rule: &str) -> String {
    format!(
        "---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: web}}\nspec:\n  service: web\n  rules:\n    - {rule}\n"
    )
}

/// Forwards one bodiless GET to `web` through `upstream`.
async fn get(
    upstream: &Arc<Fake>,
    snap: &Snapshot,
    metrics: &Metrics,
) -> Result<Response<Body>, ProxyError> {
    let svc = snap.service("default", "web").expect("web");
    let chosen = super::Chosen::default();
    let t = Target {
        upstream,
        ctx: Context {
            metrics,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            workload: None,
        },
        snapshot: snap,
        rule: &svc.rules[0],
        service: "web",
        wire: Wire::Http1,
        trace: None,
        peer: PEER.parse().expect("peer"),
        chosen: &chosen,
    };
    let req = Request::get("/").body(body::empty()).expect("request");
    forward(&t, req).await
}

/// Sends `n` GETs, each of which must be answered 200 (retried past a dead endpoint).
async fn all_answered(n: usize, upstream: &Arc<Fake>, snap: &Snapshot, metrics: &Metrics) {
    for i in 0..n {
        let rsp = get(upstream, snap, metrics).await;
        let rsp = rsp.unwrap_or_else(|e| panic!("request {i} not retried elsewhere: {e}"));
        assert_eq!(rsp.status(), 200);
    }
}

fn retries(metrics: &Metrics, outcome: &'static str) -> u64 {
    metrics
        .retries
        .get_or_create(&RetryLabels {
            service: "web".into(),
            route: "web".into(),
            outcome,
        })
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_try_that_hangs_is_cut_at_the_per_try_timeout_and_retried() {
    let snap = snapshot(&route(
        "timeout: 10s\n      retries: {attempts: 3, perTryTimeout: 1s, retryOn: [reset], backoff: {baseInterval: 1ms}}",
    ));
    // The first try hangs, the second is answered.
    let upstream = Fake::in_turn(&[Act::Hang, Act::Answer(200)]);
    let metrics = Metrics::new();
    let start = Instant::now();
    let rsp = get(&upstream, &snap, &metrics).await.expect("answered");
    assert_eq!(rsp.status(), 200);
    let tries = upstream.tries();
    assert_eq!(tries.len(), 2, "{tries:?}");
    // The second try starts when the per-try timeout cut the first (plus at most 1 ms backoff).
    let cut = tries[1].1 - start;
    assert!(
        cut >= Duration::from_secs(1) && cut <= Duration::from_millis(1001),
        "{cut:?}"
    );
    assert_eq!(retries(&metrics, "attempted"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_last_try_gets_what_remains_of_the_route_timeout() {
    let snap = snapshot(&route(
        "timeout: 10s\n      retries: {attempts: 2, perTryTimeout: 1s, retryOn: [reset], backoff: {baseInterval: 1ms}}",
    ));
    // The first try hangs; the second (the last) answers after 3 s: longer than the per-try
    // timeout, well within what remains of the route's 10 s.
    let upstream = Fake::in_turn(&[Act::Hang, Act::Slow(Duration::from_secs(3), 200)]);
    let start = Instant::now();
    let rsp = get(&upstream, &snap, &Metrics::new()).await;
    assert_eq!(rsp.expect("the last try was not cut").status(), 200);
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(4), "{took:?}");
    assert!(took <= Duration::from_millis(4001), "{took:?}");

    // ...and no more than what remains: a last try that would take 20 s ends at the route's 10 s.
    let upstream = Fake::in_turn(&[Act::Hang, Act::Slow(Duration::from_secs(20), 200)]);
    let start = Instant::now();
    let e = get(&upstream, &snap, &Metrics::new()).await.unwrap_err();
    // The last try's own limit and the route's end at the same instant; either may say so.
    assert!(
        matches!(e.reason, Reason::Timeout | Reason::RetriesExhausted),
        "{e}"
    );
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(9999), "{took:?}");
    assert!(took <= Duration::from_secs(10), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_the_budget_is_spent() {
    // No ratio, a floor of one retry per second over a 1 s window: one retry in all.
    let snap = snapshot(&route(
        "retries: {attempts: 3, retryOn: [5xx], backoff: {baseInterval: 1ms}, budget: {ratio: 0.0, minRetriesPerSecond: 1, ttl: 1s}}",
    ));
    let upstream = Fake::new(&[(A, &[Act::Answer(503)]), (B, &[Act::Answer(503)])]);
    let metrics = Metrics::new();
    let rsp = get(&upstream, &snap, &metrics).await.expect("an answer");
    assert_eq!(rsp.status(), 503, "the last answer is passed on");
    assert_eq!(
        upstream.tries().len(),
        2,
        "three attempts allowed, one retry paid for"
    );
    assert_eq!(retries(&metrics, "attempted"), 1);
    assert_eq!(retries(&metrics, "budget-exhausted"), 1);

    // The next request finds the budget empty: no retry at all.
    let rsp = get(&upstream, &snap, &metrics).await.expect("an answer");
    assert_eq!(rsp.status(), 503);
    assert_eq!(upstream.tries().len(), 3);
    assert_eq!(retries(&metrics, "budget-exhausted"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_another_endpoint() {
    // Outlier detection that never ejects replaces failure accrual, so both endpoints stay
    // available and only the retry's choice is tested.
    let mut extra = route("retries: {attempts: 2, retryOn: [5xx], backoff: {baseInterval: 1ms}}");
    extra.push_str(
        "---\napiVersion: trellis.dev/v1\nkind: DestinationPolicy\nmetadata: {name: web}\nspec:\n  service: web\n  outlierDetection: {consecutive5xxErrors: 1000}\n",
    );
    let snap = snapshot(&extra);
    let upstream = Fake::new(&[(A, &[Act::Answer(503)]), (B, &[Act::Answer(503)])]);
    let metrics = Metrics::new();
    for _ in 0..40 {
        let rsp = get(&upstream, &snap, &metrics).await.expect("an answer");
        assert_eq!(rsp.status(), 503);
    }
    let tries = upstream.tries();
    assert_eq!(tries.len(), 80);
    for pair in tries.chunks(2) {
        assert_ne!(pair[0].0, pair[1].0, "a retry went back to {}", pair[0].0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_endpoint_costs_one_try_with_the_default_balancer() {
    // No route, no DestinationPolicy: peak-EWMA, an implicit retry on connect failure, failure
    // accrual. A refuses every connection.
    let snap = snapshot("");
    let upstream = Fake::new(&[(A, &[Act::Refuse]), (B, &[Act::Answer(200)])]);
    let metrics = Metrics::new();
    all_answered(50, &upstream, &snap, &metrics).await;
    // The failure penalty makes A the costlier of the two from its first refusal on.
    assert!(
        upstream.tries_at(A) <= 1,
        "{} tries at A",
        upstream.tries_at(A)
    );
}

#[tokio::test(start_paused = true)]
async fn failure_accrual_backs_off_a_dead_endpoint_whatever_the_balancer() {
    // Round robin knows nothing of latency: only failure accrual keeps traffic off A.
    let snap = snapshot(
        "---\napiVersion: trellis.dev/v1\nkind: DestinationPolicy\nmetadata: {name: web}\nspec:\n  service: web\n  loadBalancer: {algorithm: RoundRobin}\n",
    );
    let upstream = Fake::new(&[(A, &[Act::Refuse]), (B, &[Act::Answer(200)])]);
    let metrics = Metrics::new();
    all_answered(50, &upstream, &snap, &metrics).await;
    // Five refusals in a row back A off (for longer than the test's clock moves).
    assert_eq!(upstream.tries_at(A), 5);
    assert_eq!(
        metrics
            .accrual_backoffs
            .get_or_create(&crate::metrics::ServiceLabels {
                service: "web".into()
            })
            .get(),
        1
    );
}
