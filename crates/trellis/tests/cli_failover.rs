//! The CLI over several control plane replicas, run as the real `trellis` binary: it fails over
//! from dead replicas and from one whose store is away (503), never past a refusal (4xx), and
//! names every replica when none answers; `trellis apply` resends a request cut off after it
//! was sent under the same apply id, so the user learns what was committed instead of guessing.
//!
//! The replicas are a real `trellis control`, ports nobody listens on, and tiny fake replicas
//! on loopback that follow a script and record what they received: the assertions are made on
//! what reached the control plane, the side a duplicate or lost write would hurt.
mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MESH: &str = "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: web}
spec:
  service: web
  rules: [{timeout: 2s}]
";

/// Runs the CLI with `TRELLIS_CONTROL=control` and the shared token (bounded: 120 s).
async fn trellis(control: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("TRELLIS_CONTROL", control)
        .env("TRELLIS_TOKEN", TOKEN)
        .env_remove("TRELLIS_TOKEN_FILE")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the CLI must finish within 120 s")
        .expect("run trellis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes the sample mesh to a file in a fresh directory; returns the file's path.
fn mesh_file(tag: &str) -> String {
    let file = tempdir(tag).join("mesh.yaml");
    std::fs::write(&file, MESH).expect("write mesh");
    file.to_str().expect("utf-8 path").to_string()
}

/// A loopback address nothing listens on.
fn dead() -> String {
    format!("http://{}", free_addr())
}

/// What a fake replica does with the next request it receives.
#[derive(Clone)]
enum Act {
    /// Reads the whole request, then closes the connection without answering.
    Cut,
    /// Answers with this status and JSON body, then closes the connection.
    Answer(u16, String),
}

/// A request as a fake replica received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    apply_id: Option<String>,
    body: String,
}

/// A fake replica: takes one connection per scripted act, then stops listening (later
/// connections are refused).
struct Fake {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    async fn start(script: Vec<Act>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr: SocketAddr = listener.local_addr().expect("fake addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            for act in script {
                let Ok(Ok((mut stream, _))) =
                    tokio::time::timeout(Duration::from_secs(120), listener.accept()).await
                else {
                    return;
                };
                let read = tokio::time::timeout(Duration::from_secs(30), read_request(&mut stream));
                let Ok(Some(request)) = read.await else {
                    continue;
                };
                log.lock().unwrap_or_else(|e| e.into_inner()).push(request);
                if let Act::Answer(status, body) = act {
                    let head = format!(
                        "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                }
                let _ = stream.shutdown().await;
            }
        });
        Fake {
            url: format!("http://{addr}"),
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request with a `content-length` body (bounded: 1 MiB).
async fn read_request(stream: &mut TcpStream) -> Option<Received> {
    const LIMIT: usize = 1 << 20;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > LIMIT {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length").map_or(Some(0), |v| v.parse().ok())?;
    if length > LIMIT {
        return None;
    }
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        method,
        path,
        apply_id: header("trellis-apply-id"),
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
    })
}

/// An apply answer of the shape the control plane sends.
fn apply_answer(action: &str, revision: u64, replayed: bool) -> String {
    serde_json::json!({
        "results": [
            {"key": "Service/default/web", "action": action, "version": revision},
            {"key": "Route/default/web", "action": action, "version": revision},
        ],
        "notices": [],
        "revision": revision,
        "replayed": replayed,
    })
    .to_string()
}

fn is_apply_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every request was the same apply: one id (32 hex digits), the file's body, on the apply path.
fn assert_one_apply(requests: &[Received]) {
    let first = requests.first().expect("at least one request");
    let id = first.apply_id.clone().expect("Trellis-Apply-Id header");
    assert!(is_apply_id(&id), "apply id {id:?} is not 32 hex digits");
    for r in requests {
        assert_eq!(r.method, "POST", "{r:?}");
        assert!(r.path.starts_with("/api/v1/apply?file="), "{r:?}");
        assert_eq!(
            r.apply_id.as_deref(),
            Some(id.as_str()),
            "same id on every try"
        );
        assert_eq!(r.body, MESH, "same body on every try");
    }
}

#[tokio::test]
async fn verbs_fail_over_from_a_dead_replica_to_a_live_control_plane() {
    let dir = tempdir("clifo-live");
    let addr = free_addr();
    let _cp = Proc::spawn(
        &dir,
        "control",
        &[
            "control".into(),
            format!("--listen={addr}"),
            format!("--data-dir={}", dir.join("data").display()),
        ],
    );
    wait_api(addr).await;
    let (live, down) = (format!("http://{addr}"), dead());
    let list = format!("{down},{live}");
    let file = mesh_file("clifo-live-f");

    let (ok, out, err) = trellis(&list, &["apply", "-f", &file]).await;
    assert!(ok, "apply through the live replica: {err}");
    assert!(out.contains("Service/default/web created"), "{out}");
    assert!(out.contains("Route/default/web created"), "{out}");

    // The live control plane holds what was applied (asked directly, not through the list).
    let (ok, out, err) = trellis(&live, &["get", "routes", "-o", "json"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("\"timeout\": \"2s\""), "{out}");

    let (ok, out, err) = trellis(&list, &["get", "services"]).await;
    assert!(ok, "get through the list: {err}");
    assert!(out.contains("web"), "{out}");

    // A listed replica that is down is a problem `check` names, while the rest is checked
    // through the one that answers.
    let (ok, out, err) = trellis(&list, &["check"]).await;
    assert!(!ok, "check passed with a listed replica down: {out}{err}");
    assert!(
        out.contains(&format!("FAIL replica {down}")) && err.contains("1 problem(s) found"),
        "{out}{err}"
    );
    let (ok, out, err) = trellis(&live, &["check"]).await;
    assert!(ok, "check against the live replica alone: {out}{err}");
    let (_, out, _) = trellis(&list, &["check"]).await;
    assert!(
        out.contains(&format!("ok   control plane at {live} answers")),
        "check names the replica that answered: {out}"
    );
    assert!(
        out.contains(&format!("warn replica {down} did not answer")),
        "check names the replica that did not: {out}"
    );
}

#[tokio::test]
async fn no_replica_answering_names_each_and_applies_nothing() {
    let (a, b) = (dead(), dead());
    let list = format!("{a},{b}");
    let file = mesh_file("clifo-dead");
    let (ok, _, err) = trellis(&list, &["apply", "-f", &file]).await;
    assert!(!ok);
    assert!(err.contains("nothing was applied"), "{err}");
    for replica in [&a, &b] {
        let line = err
            .lines()
            .find(|l| l.contains(replica.as_str()))
            .unwrap_or_else(|| panic!("no line names {replica}: {err}"));
        assert!(line.contains("cannot connect"), "{line}");
    }
    let (ok, _, err) = trellis(&list, &["get", "services"]).await;
    assert!(!ok);
    assert!(err.contains(&a) && err.contains(&b), "{err}");
}

#[tokio::test]
async fn bad_control_items_are_refused_by_name_before_anything_is_sent() {
    let fake = Fake::start(vec![Act::Answer(200, apply_answer("created", 1, false))]).await;
    let file = mesh_file("clifo-bad");
    let cases = [
        (format!("{},,", fake.url), "item 2"),
        (format!("{},127.0.0.1:15010", fake.url), "127.0.0.1:15010"),
        (
            format!("{},ftp://example.com", fake.url),
            "ftp://example.com",
        ),
        (" ".to_string(), "--control is empty"),
    ];
    for (list, named) in cases {
        let (ok, _, err) = trellis(&list, &["apply", "-f", &file]).await;
        assert!(!ok, "{list:?} must be refused");
        assert!(
            err.contains(named),
            "{list:?}: the error names {named:?}: {err}"
        );
    }
    assert!(
        fake.received().is_empty(),
        "a bad list sends nothing: {:?}",
        fake.received()
    );
}

#[tokio::test]
async fn apply_cut_off_after_sending_is_resent_with_the_same_id_and_confirmed() {
    let fake = Fake::start(vec![
        Act::Cut,
        Act::Answer(200, apply_answer("configured", 7, true)),
    ])
    .await;
    // The fake first, then a dead replica: cut, refused, then the fake again on the 2nd pass.
    let list = format!("{},{}", fake.url, dead());
    let file = mesh_file("clifo-cut");
    let (ok, out, err) = trellis(&list, &["apply", "-f", &file]).await;
    assert!(ok, "{err}");
    let received = fake.received();
    assert_eq!(received.len(), 2, "sent, cut off, sent again: {received:?}");
    assert_one_apply(&received);
    assert!(out.contains("Route/default/web configured"), "{out}");
    assert!(
        out.contains("committed at revision 7 (confirmed after the connection dropped)"),
        "{out}"
    );
}

#[tokio::test]
async fn apply_cut_off_every_time_says_the_outcome_is_unknown() {
    let fake = Fake::start(vec![Act::Cut, Act::Cut]).await;
    let file = mesh_file("clifo-cut2");
    let (ok, _, err) = trellis(&fake.url, &["apply", "-f", &file]).await;
    assert!(!ok);
    let received = fake.received();
    assert_eq!(received.len(), 2, "one try per pass: {received:?}");
    assert_one_apply(&received);
    assert!(err.contains("was applied is unknown"), "{err}");
    assert!(!err.contains("nothing was applied"), "{err}");
}

#[tokio::test]
async fn apply_answered_503_fails_over_to_the_next_replica() {
    let away = Fake::start(vec![Act::Answer(
        503,
        r#"{"error": "store unreachable", "details": []}"#.into(),
    )])
    .await;
    let next = Fake::start(vec![Act::Answer(200, apply_answer("created", 3, false))]).await;
    let list = format!("{},{}", away.url, next.url);
    let file = mesh_file("clifo-503");
    let (ok, out, err) = trellis(&list, &["apply", "-f", &file]).await;
    assert!(ok, "{err}");
    let (first, second) = (away.received(), next.received());
    assert_eq!((first.len(), second.len()), (1, 1), "{first:?} {second:?}");
    assert_one_apply(&[first, second].concat());
    assert!(out.contains("Service/default/web created"), "{out}");
    assert!(out.contains("committed at revision 3"), "{out}");
    assert!(!out.contains("confirmed"), "{out}");
}

#[tokio::test]
async fn apply_refused_is_final_and_nothing_was_applied() {
    let refusing = Fake::start(vec![Act::Answer(
        409,
        r#"{"error": "Route/default/web: resourceVersion 3 is stale", "details": []}"#.into(),
    )])
    .await;
    let next = Fake::start(vec![Act::Answer(200, apply_answer("created", 3, false))]).await;
    let list = format!("{},{}", refusing.url, next.url);
    let file = mesh_file("clifo-409");
    let (ok, _, err) = trellis(&list, &["apply", "-f", &file]).await;
    assert!(!ok);
    assert_eq!(refusing.received().len(), 1);
    assert!(
        next.received().is_empty(),
        "a refusal is never failed over: {:?}",
        next.received()
    );
    assert!(
        err.contains("nothing was applied: Route/default/web: resourceVersion 3 is stale"),
        "{err}"
    );
}

#[tokio::test]
async fn apply_answers_without_a_revision_or_without_changes() {
    let old_shape = serde_json::json!({
        "results": [{"key": "Service/default/web", "action": "created", "version": 1}],
        "notices": [],
    })
    .to_string();
    let fake = Fake::start(vec![
        Act::Answer(200, old_shape),
        Act::Answer(200, apply_answer("unchanged", 9, false)),
    ])
    .await;
    let file = mesh_file("clifo-shape");
    let (ok, out, err) = trellis(&fake.url, &["apply", "-f", &file]).await;
    assert!(ok, "{err}");
    assert!(out.contains("Service/default/web created"), "{out}");
    assert!(
        !out.contains("revision"),
        "an older control plane: no revision line: {out}"
    );
    let (ok, out, err) = trellis(&fake.url, &["apply", "-f", &file]).await;
    assert!(ok, "{err}");
    assert!(out.contains("nothing changed (revision 9)"), "{out}");
    let received = fake.received();
    assert_eq!(received.len(), 2);
    assert_ne!(
        received[0].apply_id, received[1].apply_id,
        "each invocation has its own apply id"
    );
}
