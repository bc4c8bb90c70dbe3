//! Readiness, metrics exposition, and drain: `/shutdown` and SIGTERM let in-flight requests
//! finish, then the proxy exits.
mod common;

use common::*;
use std::time::Duration;

async fn setup(tag: &str) -> (std::path::PathBuf, Instance, Caller) {
    let dir = tempdir(tag);
    let config = dir.join("mesh.yaml");
    let ports = Ports::free();
    let text = format!(
        "{}{}",
        service("web", "http"),
        workload("web-0", "web", "v1", ports.inbound)
    );
    write_config(&config, &text);
    let instance = start_instance(&dir, &config, "web", "web-0", &[], ports);
    let caller = start_caller(&dir, &config, &["web"]);
    wait_ready(instance.admin).await;
    wait_ready(caller.admin).await;
    wait_listening(instance.app_addr).await;
    (dir, instance, caller)
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses")
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => 0.0,
    }
}

#[tokio::test]
async fn metrics_parse_and_count_by_reason() {
    let (_dir, _i, caller) = setup("metrics").await;
    let c = http1();
    for _ in 0..5 {
        assert_eq!(
            get(&c, caller.outbound, Some("web"), "/", &[]).await.status,
            200
        );
    }
    for _ in 0..3 {
        get(&c, caller.outbound, Some("nope"), "/", &[]).await;
    }
    let (status, text) = get_status(caller.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let scrape = parse(&text);
    let ok: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "trellis_requests_total")
        .filter(|s| s.labels.get("service") == Some("web") && s.labels.get("code") == Some("200"))
        .map(value)
        .sum();
    assert_eq!(ok, 5.0);
    let no_route: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "trellis_requests_total")
        .filter(|s| s.labels.get("reason") == Some("no-route"))
        .map(value)
        .sum();
    assert_eq!(no_route, 3.0);
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "trellis_request_duration_seconds" && s.labels.get("service") == Some("web")
        })
        .expect("latency histogram");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert!(total >= 5.0, "histogram counted the requests: {buckets:?}");
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
    let opened: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "trellis_tcp_connections_opened_total")
        .map(value)
        .sum();
    assert!(opened >= 1.0);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_exits() {
    let (_dir, _i, mut caller) = setup("drain").await;
    let out = caller.outbound;
    let long =
        tokio::spawn(async move { get(&http1(), out, Some("web"), "/delay/1000", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rsp = http1()
        .request(
            http::Request::post(format!("http://{}/shutdown", caller.admin))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let a = long.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight request finished: {}", a.body);
    let status = caller
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy exits after draining");
    assert!(status.success());
    assert!(
        tokio::net::TcpStream::connect(out).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn sigterm_drains_too() {
    let (_dir, _i, mut caller) = setup("sigterm").await;
    let port = caller.upstreams[0];
    let long = tokio::spawn(async move { get(&http1(), port, None, "/delay/800", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    caller.proc.terminate();
    let a = long.await.unwrap();
    assert_eq!(a.status, 200);
    let status = caller
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exit");
    assert!(status.success());
}
