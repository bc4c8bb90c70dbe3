//! Client → outbound sidecar → inbound sidecar → demo-app, for every protocol the data plane
//! carries: HTTP/1.1 (keep-alive, chunked, `Expect: 100-continue`), HTTP/2, gRPC with trailers,
//! WebSocket and opaque TCP.
mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn http1_by_host_and_by_upstream_port_with_keepalive() {
    let p = echo_pair("h1", "http", "", &["--version=v7"]).await;
    let client = http1();
    for _ in 0..3 {
        let a = get(&client, p.caller.outbound, Some("echo"), "/hello?x=1", &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let j = a.json();
        assert_eq!(j["service"], "echo");
        assert_eq!(j["version"], "v7");
        assert_eq!(j["path"], "/hello?x=1");
        assert_eq!(j["headers"]["host"], "echo");
    }
    let a = get(&client, p.caller.upstreams[0], None, "/via-port", &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/via-port");
}

#[tokio::test]
async fn http1_chunked_body_streams_through() {
    let p = echo_pair("chunked", "http", "", &[]).await;
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..50)
        .map(|i| Ok(Frame::data(Bytes::from(format!("chunk-{i};")))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let req = http::Request::post(format!("http://{}/echo", p.caller.outbound))
        .header("host", "echo")
        .body(body)
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let got = rsp.into_body().collect().await.unwrap().to_bytes();
    let want: String = (0..50).map(|i| format!("chunk-{i};")).collect();
    assert_eq!(got, want.as_bytes());
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let p = echo_pair("expect", "http", "", &[]).await;
    let mut s = TcpStream::connect(p.caller.outbound).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no 100 Continue before the body was sent")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 100"), "got {head:?}");
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&rest).contains("hello") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&rest).contains("200 OK"));
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let p = echo_pair("h2", "http2", "", &[]).await;
    let req = http::Request::get("http://echo/h2path")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Connect to the caller's outbound port while keeping :authority = echo.
    let stream = TcpStream::connect(p.caller.outbound).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.version(), http::Version::HTTP_2);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["protocol"], "HTTP/2");
    assert_eq!(j["path"], "/h2path");
}

/// A unary gRPC call: the length-prefixed message comes back and `grpc-status` arrives as a
/// trailer, through both sidecars.
#[tokio::test]
async fn grpc_trailers_pass_through() {
    let p = echo_pair("grpc", "grpc", "", &[]).await;
    let stream = TcpStream::connect(p.caller.upstreams[0]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let msg = b"\x00\x00\x00\x00\x03abc".to_vec();
    let req = http::Request::post("http://echo/demo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(msg.clone())))
        .unwrap();
    let rsp = send.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("gRPC trailers lost");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(collected.to_bytes(), msg);
}

#[tokio::test]
async fn websocket_upgrade_echoes() {
    let p = echo_pair("ws", "http", "", &[]).await;
    let stream = TcpStream::connect(p.caller.outbound).await.unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://echo/ws", stream)
        .await
        .expect("websocket handshake through the mesh");
    assert_eq!(rsp.status(), 101);
    use tokio_tungstenite::tungstenite::Message;
    for i in 0..5 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn opaque_tcp_through_upstream_port() {
    let p = echo_pair("tcp", "tcp", "", &["--mode=tcp", "--version=v3"]).await;
    let mut s = TcpStream::connect(p.caller.upstreams[0]).await.unwrap();
    s.write_all(b"\x00\x01binary\xffdata").await.unwrap();
    let want = b"echo/v3: \x00\x01binary\xffdata";
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, want);
}

/// A client that sends nothing on a detect port is handled as opaque TCP after the detect
/// timeout (server-first protocols are not stalled forever).
#[tokio::test]
async fn server_first_protocol_is_not_stalled() {
    let p = echo_pair("srvfirst", "detect", "", &["--mode=tcp", "--version=v1"]).await;
    let mut s = TcpStream::connect(p.caller.upstreams[0]).await.unwrap();
    // Say nothing for longer than the 300 ms detect timeout, then talk.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    s.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("late"));
}

/// A WebSocket caller and an instance that died (its address refuses connections): a refused
/// upgrade counts toward failure accrual as any refused request does. Round robin alternates
/// regardless of cost, so without that report every other handshake would fail; with it, five
/// refusals in a row back the dead endpoint off.
#[tokio::test]
async fn refused_websocket_upgrades_back_a_dead_endpoint_off() {
    let dead = free_addr();
    let extra = format!(
        "{}---\napiVersion: trellis.dev/v1\nkind: DestinationPolicy\nmetadata: {{name: echo}}\nspec: {{service: echo, loadBalancer: {{algorithm: RoundRobin}}}}\n",
        workload("echo-dead", "echo", "v1", dead)
    );
    let p = echo_pair("ws-dead", "http", &extra, &[]).await;
    let caller = &p.caller;

    let mut refused = 0;
    for _ in 0..20 {
        let stream = TcpStream::connect(caller.outbound).await.unwrap();
        match tokio_tungstenite::client_async("ws://echo/ws", stream).await {
            Ok((mut ws, rsp)) => {
                assert_eq!(rsp.status(), 101);
                ws.close(None).await.unwrap();
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        (1..=5).contains(&refused),
        "{refused} of 20 handshakes went to the dead endpoint"
    );
}
