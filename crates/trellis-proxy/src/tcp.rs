//! Opaque TCP: bytes copied both ways between the downstream connection and an upstream, with
//! byte counts recorded when the connection ends — however it ends: most TCP connections end
//! with a reset or a TLS peer gone without `close_notify`, and their bytes still count.
use crate::metrics::{BytesLabels, Metrics, TcpLabels};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copies until both sides close or one fails; records the connection (opened, closed,
/// duration) and its bytes as seen from the downstream side under `edge`, and returns the
/// bytes (received from downstream and written upstream, sent to downstream).
pub async fn splice<D, U>(
    metrics: &Metrics,
    edge: TcpLabels,
    downstream: D,
    upstream: U,
) -> (u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = std::time::Instant::now();
    metrics.tcp_streams_opened.get_or_create(&edge).inc();
    let mut downstream = CountWrites::new(downstream);
    let mut upstream = CountWrites::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(error = %e, "tcp stream ended with an error");
    }
    metrics.tcp_streams_closed.get_or_create(&edge).inc();
    metrics
        .tcp_stream_duration
        .get_or_create(&edge)
        .observe(start.elapsed().as_secs_f64());
    let (received, sent) = (upstream.written, downstream.written);
    let count = |flow, n| {
        metrics
            .bytes
            .get_or_create(&BytesLabels {
                direction: edge.direction,
                source: edge.source.clone(),
                service: edge.service.clone(),
                flow,
            })
            .inc_by(n);
    };
    count("received", received);
    count("sent", sent);
    (received, sent)
}

/// A stream that counts the bytes written into it (what was delivered, even if the copy
/// later fails).
struct CountWrites<T> {
    inner: T,
    written: u64,
}

impl<T> CountWrites<T> {
    fn new(inner: T) -> Self {
        Self { inner, written: 0 }
    }

    fn add(&mut self, done: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = done {
            self.written += *n as u64;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let done = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.add(&done);
        done
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let done = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.add(&done);
        done
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection that ends in an error after bytes went through still counts them.
    #[tokio::test]
    async fn bytes_count_when_the_stream_ends_in_an_error() {
        let metrics = Metrics::new();
        let (down_app, down_proxy) = tokio::io::duplex(64);
        let (up_proxy, up_server) = tokio::io::duplex(64);
        let edge = TcpLabels {
            direction: "outbound",
            source: "test".into(),
            service: "echo".into(),
        };
        let spliced =
            tokio::spawn(async move { splice(&metrics, edge, down_proxy, up_proxy).await });
        let (mut app, mut server) = (down_app, up_server);
        app.write_all(b"ping\n").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"echo: ping\n").await.unwrap();
        let mut back = [0u8; 11];
        app.read_exact(&mut back).await.unwrap();
        // The server goes away, then the app writes more: writing it upstream fails, so the
        // copy ends in an error (broken pipe), after 5 bytes up and 11 down went through.
        drop(server);
        app.write_all(b"late\n").await.unwrap();
        let (received, sent) = spliced.await.unwrap();
        assert_eq!((received, sent), (5, 11));
        drop(app);
    }
}
