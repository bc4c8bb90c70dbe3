//! Accept loops that survive running out of file descriptors.
//!
//! Why: `accept` fails when the process is out of descriptors (`EMFILE`), and keeps failing
//! until one is freed. A loop that logs every failure and retries after a fixed short sleep
//! writes a line per attempt (the log fills while the port is useless), and one that retries
//! at once spins a core. [`Acceptor`] instead:
//!
//! - retries at once only on errors about one connection (the client reset it before it was
//!   accepted, or a signal interrupted the call);
//! - on any other error backs off exponentially (5 ms, doubling, at most 1 s; back to the start
//!   after the next success), logging at most one line a second that says how many failures it
//!   held back ([`LogThrottle`]);
//! - when given a [`ConnLimiter`], sheds one of its sheddable connections per failure, since
//!   that is what frees a descriptor soonest.
//!
//! [`serve`] is the whole loop for a port with a connection cap: wait for room (not too many
//! shed connections still closing), accept, admit under the [`ConnLimiter`] (shedding rather
//! than refusing), and spawn the handler.
use crate::limit::{Admission, ConnLimiter, ConnSlot};
use crate::throttle::LogThrottle;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The accept queue [`bind`] asks for (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: u32 = 1024;

/// Binds a listener with an accept queue of [`BACKLOG`] (and `SO_REUSEADDR`, as std does).
///
/// Why: `TcpListener::bind` asks for 128. Under a flood of connections a burst of 128 fills
/// that queue within milliseconds whenever the accept loop is busy, and the kernel then drops
/// SYNs: a legitimate client waits a whole second for its SYN to be sent again.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Exponential backoff between failed accepts.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 5 ms, doubling, capped at 1 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(5), Duration::from_secs(1))
    }
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the next one is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Something that accepts connections; a [`TcpListener`] in production, a fake in tests.
pub trait Listen: Send {
    type Io: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Listen for TcpListener {
    type Io = TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// Errors about one connection only: retry at once, nothing to back off from.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A listener whose `accept` never fails: errors are backed off from and logged, throttled.
#[derive(Debug)]
pub struct Acceptor<L = TcpListener> {
    listener: L,
    what: &'static str,
    backoff: Backoff,
    log: LogThrottle,
    shed_on_error: Option<ConnLimiter>,
    failures: u64,
}

impl<L: Listen> Acceptor<L> {
    /// `what` names the port in log lines (`admin`, `control`, `inbound`...).
    pub fn new(listener: L, what: &'static str) -> Self {
        Self {
            listener,
            what,
            backoff: Backoff::default(),
            log: LogThrottle::per_second(),
            shed_on_error: None,
            failures: 0,
        }
    }

    /// On a failed accept, also shed one of `limiter`'s sheddable connections.
    pub fn shed_on_error(mut self, limiter: ConnLimiter) -> Self {
        self.shed_on_error = Some(limiter);
        self
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// Failed accepts so far (those about one connection not counted).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The next connection. Cancel-safe: nothing is lost when the future is dropped.
    pub async fn accept(&mut self) -> (L::Io, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff.reset();
                    return accepted;
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(port = self.what, error = %e, "accept: connection gone before it was accepted");
                }
                Err(e) => {
                    self.failures += 1;
                    let shed = self.shed_on_error.as_ref().is_some_and(|l| l.shed_one());
                    let delay = self.backoff.next_delay();
                    if let Some(suppressed) = self.log.allow() {
                        tracing::warn!(
                            port = self.what,
                            error = %e,
                            retry_in = ?delay,
                            shed_a_connection = shed,
                            suppressed,
                            "accept failed; backing off"
                        );
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Accepts on `listener` until `stop` resolves, admitting each connection under `limiter`
/// (shedding an older one when full; closing the newcomer only when every connection is busy)
/// and running `handle` on its own task.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    limiter: ConnLimiter,
    stop: impl Future<Output = ()>,
    mut handle: F,
) where
    F: FnMut(TcpStream, SocketAddr, ConnSlot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = Acceptor::new(listener, what).shed_on_error(limiter.clone());
    tokio::pin!(stop);
    loop {
        let next = async {
            limiter.room().await;
            acceptor.accept().await
        };
        let (stream, peer) = tokio::select! {
            a = next => a,
            _ = &mut stop => return,
        };
        match limiter.admit(peer) {
            Admission::Admitted(slot) => {
                tokio::spawn(handle(stream, peer, slot));
            }
            Admission::Refused => drop(stream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    #[tokio::test]
    async fn bind_asks_for_a_long_accept_queue() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        // More connections than std's queue of 128 complete without anyone accepting.
        let mut conns = Vec::new();
        for i in 0..300 {
            let c = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr))
                .await
                .unwrap_or_else(|_| panic!("connection {i} waited: the queue is short"))
                .unwrap();
            conns.push(c);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(
            delays,
            [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000],
            "exponential, capped at 1 s"
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(5));
    }

    /// Hands out scripted results, then pends forever.
    struct Script(Mutex<VecDeque<io::Result<u32>>>);

    impl Listen for Script {
        type Io = u32;
        fn accept(&self) -> impl Future<Output = io::Result<(u32, SocketAddr)>> + Send {
            let next = self.0.lock().unwrap().pop_front();
            async move {
                match next {
                    Some(r) => r.map(|n| (n, "127.0.0.1:9".parse().unwrap())),
                    None => std::future::pending().await,
                }
            }
        }
    }

    fn emfile() -> io::Error {
        io::Error::other("Too many open files (os error 24)")
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_on_errors_and_sheds_to_free_descriptors() {
        let mut script: VecDeque<io::Result<u32>> = VecDeque::new();
        for _ in 0..12 {
            script.push_back(Err(emfile()));
        }
        script.push_back(Err(io::ErrorKind::ConnectionAborted.into()));
        script.push_back(Ok(7));
        let limiter = ConnLimiter::new(10, "test");
        let held: Vec<_> = (0..3)
            .map(|_| match limiter.admit("127.0.0.1:1".parse().unwrap()) {
                Admission::Admitted(s) => s,
                Admission::Refused => unreachable!(),
            })
            .collect();
        let mut acceptor =
            Acceptor::new(Script(Mutex::new(script)), "test").shed_on_error(limiter.clone());
        let start = tokio::time::Instant::now();
        let (io, _) = acceptor.accept().await;
        assert_eq!(io, 7);
        assert_eq!(acceptor.failures(), 12);
        // 5+10+...+640 ms, then 1 s four times: backed off, neither spinning nor stuck.
        let waited = start.elapsed();
        assert_eq!(waited, Duration::from_millis(1275 + 4000), "{waited:?}");
        assert!(held.iter().all(|s| s.is_shed()), "each failure shed one");
        assert_eq!(limiter.stats().shed, 3);
        // A success resets the backoff.
        assert_eq!(acceptor.backoff.next_delay(), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn serve_sheds_slowloris_and_still_serves_a_real_client() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limiter = ConnLimiter::new(8, "test");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            "test",
            limiter.clone(),
            async move {
                let _ = stop_rx.await;
            },
            |mut stream, _peer, slot| async move {
                // A one-line protocol: a line is a request; "silent" clients never send one.
                let mut buf = [0u8; 64];
                let read = tokio::select! {
                    r = stream.read(&mut buf) => r,
                    _ = slot.shed() => return,
                };
                if let Ok(n) = read {
                    if n > 0 {
                        let _g = slot.request_started();
                        let _ = stream.write_all(b"ok\n").await;
                    }
                }
            },
        ));
        // 50 silent connections against a cap of 8.
        let mut silent = Vec::new();
        for _ in 0..50 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut real = TcpStream::connect(addr).await.unwrap();
        real.write_all(b"hello\n").await.unwrap();
        let mut answer = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(10), real.read_exact(&mut answer))
            .await
            .expect("answered in time")
            .unwrap();
        assert_eq!(&answer, b"ok\n");
        let st = limiter.stats();
        assert!(st.shed >= 42, "{st:?}");
        // The oldest silent connections were closed by the server.
        let mut first = silent.remove(0);
        let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut answer))
            .await
            .expect("closed by the server");
        assert!(matches!(n, Ok(0) | Err(_)));
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("stops")
            .unwrap();
    }
}
