//! `/metrics` in both text formats, checked by software nobody here wrote: Debian's `promtool
//! check metrics` (installed by the test command) on what a plain scraper gets, and the
//! OpenMetrics text Prometheus asks for first.
mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test]
async fn scrapers_get_the_format_they_ask_for_and_promtool_finds_nothing_wrong() {
    let p = echo_pair("metrics-formats", "http", "", &[]).await;
    let (caller, instance) = (&p.caller, &p.instance);
    let client = http1();
    // Traffic, so counters and histograms have samples (and one proxy answer: no route).
    for _ in 0..5 {
        assert_eq!(
            get(&client, caller.outbound, Some("echo"), "/", &[])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        get(&client, caller.outbound, Some("nope"), "/", &[])
            .await
            .status,
        404
    );

    for admin in [caller.admin, instance.admin] {
        // A scraper that asks for nothing in particular: the classic format.
        let classic = get(&client, admin, None, "/metrics", &[]).await;
        assert_eq!(classic.status, 200);
        assert_eq!(
            classic.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(
            classic.body.contains("trellis_requests_total{"),
            "{}",
            classic.body
        );
        let (ok, report) = promtool_check(&classic.body);
        assert!(
            ok,
            "promtool check metrics failed:\n{report}\n{}",
            classic.body
        );
        assert!(
            !report.contains("no help text"),
            "promtool: {report}\n{}",
            classic.body
        );

        // Prometheus: OpenMetrics, whole (it ends with # EOF), the same samples.
        let open = get(
            &client,
            admin,
            None,
            "/metrics",
            &[("accept", PROMETHEUS_ACCEPT)],
        )
        .await;
        assert_eq!(open.status, 200);
        assert_eq!(
            open.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(open.body.trim_end().ends_with("# EOF"), "{}", open.body);
        assert!(open.body.contains("# TYPE trellis_requests counter"));
        assert!(classic
            .body
            .contains("# TYPE trellis_requests_total counter"));
    }
}

/// Runs `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}
