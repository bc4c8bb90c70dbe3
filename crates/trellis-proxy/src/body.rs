//! The one body type the proxy moves around, and helpers to build it.
//!
//! Everything is boxed into [`Body`] so one handler serves requests from hyper's server, answers
//! from hyper's client, replayed buffers and proxy-generated errors alike.
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// Boxes any body whose errors convert into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// How long a request body waits for the upstream's `100 Continue` before it is sent anyway,
/// as curl does (RFC 9110 §10.1.1: a client need not wait indefinitely); an upstream that
/// ignores `Expect` then still gets the body.
pub const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// `Expect: 100-continue` across a hop: the request body is held until the upstream asks for
/// it. The upstream's decision travels back as the hop's own behaviour: a `100 Continue` opens
/// the gate (the body is polled, so the downstream server, hyper, sends its own `100 Continue`
/// to the client and the client sends the body); a final answer first means the body is never
/// read, so the client never sends it (an app answering 413 to a 10 MB upload gets ~0 bytes).
///
/// What it must never do: read the body before the upstream asked (or [`CONTINUE_WAIT`]
/// passed), or hold it forever: once the final answer is done with, the gate closes and the
/// body ends with an error, which makes the upstream connection close (the request's body was
/// announced but never sent, so that connection cannot carry another request).
#[derive(Debug, Default)]
pub struct ContinueGate {
    state: AtomicU8,
    waker: AtomicWaker,
}

const WAITING: u8 = 0;
const OPEN: u8 = 1;
/// A final answer came first: the body is held until [`ContinueGate::close`].
const ANSWERED: u8 = 2;
const CLOSED: u8 = 3;

impl ContinueGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn set(&self, from: &[u8], to: u8) {
        for f in from {
            if self
                .state
                .compare_exchange(*f, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.waker.wake();
                return;
            }
        }
    }

    /// The upstream said `100 Continue`: send the body.
    pub fn open(&self) {
        self.set(&[WAITING], OPEN);
    }

    /// The upstream answered without asking for the body: keep holding it (the wait no longer
    /// opens the gate) until [`ContinueGate::close`].
    pub fn answered(&self) {
        self.set(&[WAITING], ANSWERED);
    }

    /// The answer is done with: end the body (with an error) so the connection is let go.
    pub fn close(&self) {
        self.set(&[WAITING, ANSWERED], CLOSED);
    }

    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == OPEN
    }

    /// `body`, held behind this gate.
    pub fn hold(self: &Arc<Self>, body: Body) -> Body {
        Gated {
            inner: body,
            gate: self.clone(),
            wait: None,
        }
        .boxed_unsync()
    }
}

struct Gated {
    inner: Body,
    gate: Arc<ContinueGate>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Gated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        loop {
            match self.gate.state.load(Ordering::Acquire) {
                OPEN => return Pin::new(&mut self.inner).poll_frame(cx),
                CLOSED => {
                    return Poll::Ready(Some(Err(
                        "the upstream answered without asking for the request body \
                         (Expect: 100-continue); the body was not sent"
                            .into(),
                    )))
                }
                state => {
                    self.gate.waker.register(cx.waker());
                    if self.gate.state.load(Ordering::Acquire) != state {
                        continue;
                    }
                    if state == WAITING {
                        let wait = self
                            .wait
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CONTINUE_WAIT)));
                        if wait.as_mut().poll(cx).is_ready() {
                            self.gate.open();
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `body`, calling `on_drop` once it is dropped (finished, or abandoned by its reader).
pub fn on_drop(body: Body, on_drop: impl FnOnce() + Send + 'static) -> Body {
    OnDrop {
        inner: body,
        on_drop: Some(Box::new(on_drop)),
    }
    .boxed_unsync()
}

struct OnDrop {
    inner: Body,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

impl http_body::Body for OnDrop {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `inner`, holding `guard` until the body is dropped (finished, or abandoned by its reader):
/// what [`on_drop`] does when all that must happen then is `guard`'s own `Drop`, without boxing
/// a closure and the body again on every answer.
pub struct Holding<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Holding<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B, G> http_body::Body for Holding<B, G>
where
    B: http_body::Body + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request asks for `100 Continue` before sending a body it has.
pub fn expects_continue<B: http_body::Body>(req: &http::Request<B>) -> bool {
    !req.body().is_end_stream()
        && req
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A body that records whether it was ever polled.
    fn watched(polled: Arc<AtomicBool>) -> Body {
        let stream = futures_util::stream::poll_fn(move |_| {
            polled.store(true, Ordering::SeqCst);
            Poll::Ready(Some(Ok::<_, BoxError>(http_body::Frame::data(
                Bytes::from("x"),
            ))))
        })
        .take(1);
        http_body_util::StreamBody::new(stream).boxed_unsync()
    }

    use futures_util::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn the_body_waits_for_100_continue() {
        let polled = Arc::new(AtomicBool::new(false));
        let gate = ContinueGate::new();
        let mut body = gate.hold(watched(polled.clone()));
        let early = tokio::time::timeout(Duration::from_millis(500), body.frame()).await;
        assert!(early.is_err(), "a frame before the 100");
        assert!(
            !polled.load(Ordering::SeqCst),
            "the body was read before the 100"
        );
        gate.open();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_answer_first_means_the_body_is_never_read() {
        let polled = Arc::new(AtomicBool::new(false));
        let gate = ContinueGate::new();
        let mut body = gate.hold(watched(polled.clone()));
        gate.answered();
        // Long past the wait: an answered gate does not open by itself.
        let held = tokio::time::timeout(CONTINUE_WAIT * 5, body.frame()).await;
        assert!(held.is_err());
        gate.close();
        assert!(body.frame().await.unwrap().is_err());
        assert!(!polled.load(Ordering::SeqCst));
        gate.open();
        assert!(!gate.is_open(), "a closed gate never opens");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_ignores_expect_gets_the_body_after_the_wait() {
        let polled = Arc::new(AtomicBool::new(false));
        let gate = ContinueGate::new();
        let mut body = gate.hold(watched(polled.clone()));
        let frame = tokio::time::timeout(CONTINUE_WAIT * 2, body.frame())
            .await
            .expect("the wait opens the gate")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
    }

    #[tokio::test]
    async fn a_held_guard_goes_with_the_body() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let mut body = Holding::new(full("x"), Flag(dropped.clone()));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
        assert!(!dropped.load(Ordering::SeqCst), "held while the body lives");
        drop(body);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn only_a_request_with_a_body_expects_continue() {
        let req = |expect: &str, b: Body| {
            http::Request::post("/")
                .header(http::header::EXPECT, expect)
                .body(b)
                .unwrap()
        };
        assert!(expects_continue(&req("100-continue", full("x"))));
        assert!(expects_continue(&req("100-Continue", full("x"))));
        assert!(!expects_continue(&req("100-continue", empty())));
        assert!(!expects_continue(&req("something", full("x"))));
    }
}
