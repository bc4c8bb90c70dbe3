//! The timeouts of [`HttpServer`] on in-memory connections under tokio's paused clock.
use super::*;
use crate::limit::{Admission, ConnLimiter};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use std::convert::Infallible;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn server() -> HttpServer {
    HttpServer {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        ping_timeout: Duration::from_secs(20),
    }
}

fn slot(limiter: &ConnLimiter) -> ConnSlot {
    match limiter.admit("127.0.0.1:1".parse().unwrap()) {
        Admission::Admitted(s) => s,
        Admission::Refused => panic!("refused"),
    }
}

/// A response body that stays open until told to end, like a gRPC stream.
struct Held(oneshot::Receiver<()>);

impl Body for Held {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

type Reply = Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

/// Answers `/stream` with a body held open until `release` fires, anything else with "ok".
fn service(
    release: std::sync::Arc<std::sync::Mutex<Option<oneshot::Receiver<()>>>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Reply,
    Error = Infallible,
    Future = impl Future<Output = Result<Reply, Infallible>> + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    service_fn(move |req: Request<Incoming>| {
        let release = release.clone();
        async move {
            let body = if req.uri().path() == "/stream" {
                let rx = release.lock().unwrap().take().expect("one stream");
                Held(rx).boxed()
            } else {
                Full::new(Bytes::from_static(b"ok")).boxed()
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    })
}

fn no_stream() -> std::sync::Arc<std::sync::Mutex<Option<oneshot::Receiver<()>>>> {
    std::sync::Arc::new(std::sync::Mutex::new(None))
}

fn spawn_h1(io: DuplexStream, slot: ConnSlot) -> tokio::task::JoinHandle<Ended> {
    tokio::spawn(async move { server().serve_http1(io, service(no_stream()), slot).await })
}

#[tokio::test(start_paused = true)]
async fn a_half_sent_http1_head_is_cut_at_the_header_read_timeout() {
    let limiter = ConnLimiter::new(10, "test");
    let (mut client, io) = tokio::io::duplex(4096);
    let start = Instant::now();
    let served = spawn_h1(io, slot(&limiter));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow")
        .await
        .unwrap();
    let ended = served.await.unwrap();
    assert!(matches!(ended, Ended::HeaderTimeout), "{ended}");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "nothing answered");
    assert_eq!(limiter.stats().open, 0, "the place is given back");
}

#[tokio::test(start_paused = true)]
async fn an_http2_preface_without_a_request_is_cut_at_the_header_read_timeout() {
    let limiter = ConnLimiter::new(10, "test");
    let (mut client, io) = tokio::io::duplex(4096);
    let start = Instant::now();
    let s = slot(&limiter);
    let served =
        tokio::spawn(async move { server().serve_http2(io, service(no_stream()), s).await });
    client.write_all(PREFACE).await.unwrap();
    client
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap(); // empty SETTINGS
    let ended = served.await.unwrap();
    assert!(matches!(ended, Ended::HeaderTimeout), "{ended}");
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn detection_is_bounded_by_the_header_read_timeout_too() {
    let limiter = ConnLimiter::new(10, "test");
    let s = slot(&limiter);
    let start = Instant::now();
    let out = server()
        .while_pending(&s, std::future::pending::<()>())
        .await;
    assert!(out.is_none());
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(
        server().while_pending(&s, async { 7 }).await,
        None,
        "deadline passed"
    );
    let fresh = slot(&limiter);
    assert_eq!(server().while_pending(&fresh, async { 7 }).await, Some(7));
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_connection_is_closed_after_the_idle_timeout() {
    let limiter = ConnLimiter::new(10, "test");
    let (client, io) = tokio::io::duplex(4096);
    let served = spawn_h1(io, slot(&limiter));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    tokio::time::sleep(Duration::from_secs(5)).await; // a slow but complete client is fine
    let rsp = send
        .send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    let answered = Instant::now();
    for _ in 0..100 {
        if limiter.stats().idle == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(limiter.stats().idle, 1, "served, nothing in flight");
    let ended = served.await.unwrap();
    assert!(matches!(ended, Ended::Idle), "{ended}");
    assert_eq!(answered.elapsed(), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn a_long_lived_stream_outlives_the_idle_timeout() {
    let limiter = ConnLimiter::new(10, "test");
    let (client, io) = tokio::io::duplex(64 * 1024);
    let (release, held) = oneshot::channel();
    let streams = std::sync::Arc::new(std::sync::Mutex::new(Some(held)));
    let s = slot(&limiter);
    let svc = service(streams);
    let served = tokio::spawn(async move { server().serve_http2(io, svc, s).await });
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
    tokio::spawn(conn);
    let stream = send
        .send_request(Request::get("/stream").body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(limiter.stats().active, 1);
    // Ten idle timeouts (and PINGs, which the client answers) later, the stream is still there
    // and the connection still serves.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(!served.is_finished());
    let rsp = send
        .send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("the connection still serves");
    assert_eq!(
        &rsp.into_body().collect().await.unwrap().to_bytes()[..],
        b"ok"
    );
    // The stream ends; the connection now has nothing in flight and goes after the idle timeout.
    let _ = release.send(());
    let _ = stream.into_body().collect().await;
    let idle_from = Instant::now();
    let ended = served.await.unwrap();
    let waited = idle_from.elapsed();
    assert!(matches!(ended, Ended::Idle), "{ended:?} after {waited:?}");
    assert!(
        waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shed_connection_is_dropped_at_once() {
    let limiter = ConnLimiter::new(1, "test");
    let (mut client, io) = tokio::io::duplex(4096);
    let served = spawn_h1(io, slot(&limiter));
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let _newcomer = slot(&limiter);
    let ended = served.await.unwrap();
    assert!(matches!(ended, Ended::Shed), "{ended}");
    assert_eq!(start.elapsed(), Duration::ZERO);
}
