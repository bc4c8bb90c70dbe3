//! The demo app over real loopback sockets: HTTP/1.1, HTTP/2, gRPC, WebSocket and TCP.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::{CommandFactory as _, Parser};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::grpc::frame;
use super::{serve, serve_until, Config, DemoArgs, Mode};

type ReqBody = BoxBody<Bytes, Infallible>;

async fn start(cfg: Config) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, cfg));
    addr
}

fn demo() -> Config {
    Config::new("reviews", "v2", "reviews-1")
}

fn flaky() -> Config {
    Config {
        error_rate: 1.0,
        ..demo()
    }
}

fn empty() -> ReqBody {
    Empty::new().boxed()
}

async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<ReqBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    tx
}

async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ReqBody> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// The head of a response whose body was read as JSON (`Null` if it was not JSON).
async fn get(addr: SocketAddr, path: &str) -> (Response<()>, serde_json::Value) {
    let req = Request::get(path)
        .header("host", "reviews")
        .header("x-test", "a")
        .body(empty())
        .unwrap();
    let resp = h1(addr).await.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (Response::from_parts(parts, ()), json)
}

#[tokio::test]
async fn json_answer_names_service_version_instance_and_request() {
    let addr = start(demo()).await;
    let (resp, json) = get(addr, "/hello/world?x=1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-demo-version"], "v2");
    assert_eq!(resp.headers()["x-demo-instance"], "reviews-1");
    assert_eq!(json["service"], "reviews");
    assert_eq!(json["version"], "v2");
    assert_eq!(json["instance"], "reviews-1");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/hello/world?x=1");
    assert_eq!(json["protocol"], "HTTP/1.1");
    assert_eq!(json["headers"]["x-test"], "a");
    assert_eq!(json["headers"]["host"], "reviews");
    assert!(json.get("error").is_none());
}

#[tokio::test]
async fn error_rate_one_answers_500_but_health_stays_ok() {
    let addr = start(flaky()).await;
    let (resp, json) = get(addr, "/").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json["error"], "injected by --error-rate");
    assert_eq!(json["version"], "v2");

    let req = Request::get("/health").body(empty()).unwrap();
    let resp = h1(addr).await.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.collect().await.unwrap().to_bytes(), "ok\n");
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let latency = Duration::from_millis(50);
    let addr = start(Config { latency, ..demo() }).await;
    let started = std::time::Instant::now();
    let (resp, _) = get(addr, "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() >= latency);
}

#[tokio::test]
async fn status_route_answers_that_status() {
    let addr = start(demo()).await;
    let (resp, json) = get(addr, "/status/503").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["service"], "reviews");
    for bad in ["/status/abc", "/status/700", "/status/99", "/status/101"] {
        let (resp, _) = get(addr, bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn delay_route_answers_after_the_delay() {
    let addr = start(demo()).await;
    let started = std::time::Instant::now();
    let (resp, json) = get(addr, "/delay/20").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json["path"], "/delay/20");
    assert!(started.elapsed() >= Duration::from_millis(20));
    let (resp, _) = get(addr, "/delay/soon").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

/// A request body fed chunk by chunk from a channel (so HTTP/1.1 sends it chunked).
fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ReqBody) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    (tx, http_body_util::BodyExt::boxed(StreamBody::new(frames)))
}

#[tokio::test]
async fn echo_streams_a_chunked_body_back() {
    let addr = start(demo()).await;
    let (tx, body) = channel_body();
    let req = Request::post("/echo")
        .header("content-type", "text/x-demo")
        .body(body)
        .unwrap();
    let resp = h1(addr).await.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/x-demo");
    let mut body = resp.into_body();
    // Each chunk comes back before the next one is sent: the echo streams.
    for chunk in ["one ", "two ", "three"] {
        tx.send(Bytes::from(chunk)).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(tx);
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn echo_honours_expect_100_continue() {
    let addr = start(demo()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: demo\r\nexpect: 100-continue\r\n\
                content-length: 5\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("HTTP/1.1 100 Continue"), "{got}");
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "{rest}");
    assert!(rest.contains("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{rest}");
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let addr = start(demo()).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/h2?y=2").parse().unwrap();
    let resp = client.get(uri).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let bytes = resp.collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["protocol"], "HTTP/2");
    assert_eq!(json["path"], "/h2?y=2");
    assert_eq!(json["instance"], "reviews-1");
}

fn grpc_request(path: &str, body: Bytes) -> Request<ReqBody> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://demo{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body).boxed())
        .unwrap()
}

/// Sends a gRPC call over HTTP/2; returns headers, body bytes and trailers.
async fn grpc_call(addr: SocketAddr, path: &str, body: Bytes) -> (HeaderMap, Bytes, HeaderMap) {
    let resp = h2(addr)
        .await
        .send_request(grpc_request(path, body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (parts.headers, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn grpc_unary_echo_returns_body_and_ok_trailers() {
    let addr = start(demo()).await;
    let message = frame(b"\x0a\x05hello");
    let (headers, body, trailers) = grpc_call(addr, "/demo.Echo/Say", message.clone()).await;
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(body, message);
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "");
    assert_eq!(trailers["x-demo-version"], "v2");
}

#[tokio::test]
async fn grpc_health_check_says_serving_even_when_flaky() {
    let addr = start(flaky()).await;
    let path = "/grpc.health.v1.Health/Check";
    let (_, body, trailers) = grpc_call(addr, path, frame(b"")).await;
    assert_eq!(&body[..], &[0, 0, 0, 0, 2, 0x08, 0x01]);
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn grpc_injected_error_is_trailers_only_unavailable() {
    let addr = start(flaky()).await;
    let (headers, body, trailers) = grpc_call(addr, "/demo.Echo/Say", frame(b"x")).await;
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "14");
    assert_eq!(headers["grpc-message"], "injected");
    assert!(body.is_empty());
    assert!(trailers.is_empty());
}

#[tokio::test]
async fn websocket_echoes_text_and_binary() {
    let addr = start(demo()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/ws");
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.headers()["x-demo-version"], "v2");
    for msg in [
        Message::text("hi there"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), msg);
    }
    ws.close(None).await.unwrap();
    while let Some(Ok(msg)) = ws.next().await {
        assert!(msg.is_close(), "{msg:?}");
    }
}

#[tokio::test]
async fn websocket_without_upgrade_is_a_bad_request() {
    let addr = start(demo()).await;
    let (resp, _) = get(addr, "/ws").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tcp_mode_echoes_with_a_prefix_on_the_first_reply() {
    let addr = start(Config {
        mode: Mode::Tcp,
        ..demo()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let expected = b"reviews/v2: hello";
    let mut buf = vec![0u8; expected.len()];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, expected);
    stream.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_until(listener, demo(), async {
        let _ = stop_rx.await;
    }));
    // A keep-alive connection that stays open after its request.
    let mut client = h1(addr).await;
    let resp = client.send_request(Request::get("/").body(empty()).unwrap());
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server).await;
    result.unwrap().unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    #[command(disable_version_flag = true)]
    DemoApp(DemoArgs),
    /// The same without the attribute on the variant: the struct's own attribute must suffice.
    Plain(DemoArgs),
}

#[test]
fn cli_flags_parse_and_version_does_not_clash() {
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "trellis",
        "demo-app",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "ratings",
        "--version",
        "v3",
        "--latency",
        "20ms",
        "--error-rate",
        "0.25",
        "--mode",
        "tcp",
    ])
    .unwrap();
    let Cmd::DemoApp(args) = cli.cmd else {
        panic!("wrong subcommand")
    };
    assert_eq!(args.listen, "127.0.0.1:0");
    assert_eq!(args.name, "ratings");
    assert_eq!(args.app_version, "v3");
    assert_eq!(args.instance, None);
    assert_eq!(args.latency.as_std(), Duration::from_millis(20));
    assert_eq!(args.error_rate, 0.25);
    assert_eq!(args.mode, Mode::Tcp);

    let cli = Cli::try_parse_from(["trellis", "plain", "--version", "v9"]).unwrap();
    let Cmd::Plain(args) = cli.cmd else {
        panic!("wrong subcommand")
    };
    assert_eq!(args.app_version, "v9");
    assert_eq!(args.listen, "127.0.0.1:8080");
    assert_eq!(args.name, "demo");
    assert!(args.latency.is_zero());
    assert_eq!(args.mode, Mode::Http);
}

#[test]
fn cli_rejects_bad_values() {
    for bad in [
        ["--error-rate", "1.5"],
        ["--error-rate", "NaN"],
        ["--latency", "20"],
        ["--mode", "udp"],
    ] {
        let argv = ["trellis", "demo-app", bad[0], bad[1]];
        assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
    }
}
