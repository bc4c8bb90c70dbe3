//! Protocol detection: one bounded read, with a timeout, to tell HTTP/1, HTTP/2 and opaque TCP
//! apart. The bytes read are replayed to whoever handles the connection next ([`PrefixedIo`]).
//!
//! Detection must never stall a server-first protocol silently: when the client says nothing
//! before the timeout the connection is treated as opaque TCP, and the outcome is counted.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface a prior-knowledge client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest HTTP/1 method token we wait for before giving up on HTTP/1.
const MAX_METHOD_LEN: usize = 16;
/// Upper bound on bytes buffered for detection.
pub const DETECT_BUFFER: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tcp,
    /// The peer sent nothing before the timeout (perhaps a server-first protocol).
    Timeout,
    /// The peer closed before sending anything.
    Closed,
}

impl Detected {
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tcp => "tcp",
            Detected::Timeout => "timeout",
            Detected::Closed => "closed",
        }
    }
}

/// How what a connection carries was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From its first bytes (a bounded read).
    Read,
    /// The port declares `tcp`: nothing was read for it.
    Declared,
    /// The peer sidecar said, by ALPN on its mTLS connection: nothing was read for it.
    Alpn,
}

/// What a connection's first bytes said (or what stood in for reading them), and the bytes read,
/// to be replayed.
#[derive(Debug)]
pub struct Sniffed {
    pub detected: Detected,
    pub prefix: Vec<u8>,
    pub source: Source,
}

impl Sniffed {
    pub fn read(detected: Detected, prefix: Vec<u8>) -> Self {
        Self {
            detected,
            prefix,
            source: Source::Read,
        }
    }

    pub fn declared(detected: Detected) -> Self {
        Self {
            detected,
            prefix: Vec::new(),
            source: Source::Declared,
        }
    }

    pub fn told(detected: Detected) -> Self {
        Self {
            detected,
            prefix: Vec::new(),
            source: Source::Alpn,
        }
    }

    /// The `result` label of `trellis_protocol_detections_total`: what detection found, or
    /// `skipped` (the port declares `tcp`) or `alpn` (the peer sidecar said) when it did not run.
    pub fn metric_result(&self) -> &'static str {
        match self.source {
            Source::Read => self.detected.as_str(),
            Source::Declared => "skipped",
            Source::Alpn => "alpn",
        }
    }
}

/// What the prefix read so far says, if enough is known.
fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    for (i, b) in buf.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        match b {
            b'A'..=b'Z' | b'-' => continue,
            b' ' if i > 0 => return Some(Detected::Http1),
            _ => return Some(Detected::Tcp),
        }
    }
    if buf.len() > MAX_METHOD_LEN {
        Some(Detected::Tcp)
    } else {
        None
    }
}

/// Reads from `io` until the protocol is known, the buffer is full or `timeout` passes.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> io::Result<(Detected, Vec<u8>)> {
    let mut buf = Vec::with_capacity(DETECT_BUFFER);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut chunk = [0u8; DETECT_BUFFER];
        let room = DETECT_BUFFER - buf.len();
        let read = tokio::time::timeout_at(deadline, io.read(&mut chunk[..room])).await;
        match read {
            Err(_elapsed) => {
                let kind = if buf.is_empty() {
                    Detected::Timeout
                } else {
                    Detected::Tcp
                };
                return Ok((kind, buf));
            }
            Ok(Ok(0)) => {
                let kind = if buf.is_empty() {
                    Detected::Closed
                } else {
                    classify(&buf).unwrap_or(Detected::Tcp)
                };
                return Ok((kind, buf));
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
        if let Some(kind) = classify(&buf) {
            return Ok((kind, buf));
        }
        if buf.len() >= DETECT_BUFFER {
            return Ok((Detected::Tcp, buf));
        }
    }
}

/// An I/O stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Vec<u8>,
    offset: usize,
    io: I,
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Vec<u8>, io: I) -> Self {
        Self {
            prefix,
            offset: 0,
            io,
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(out.remaining());
            out.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Tcp));
        assert_eq!(classify(b"hello"), Some(Detected::Tcp));
        assert_eq!(classify(b" GET"), Some(Detected::Tcp));
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAA"), Some(Detected::Tcp));
    }

    #[tokio::test]
    async fn detects_and_replays() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        use tokio::io::AsyncWriteExt;
        client.write_all(b"POST /x HTTP/1.1\r\n").await.unwrap();
        let (kind, prefix) = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(kind, Detected::Http1);
        let mut io = PrefixedIo::new(prefix, server);
        client.write_all(b"rest").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"POST /x HTTP/1.1\r\nrest");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (kind, prefix) = detect(&mut server, Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(kind, Detected::Timeout);
        assert!(prefix.is_empty());
    }
}
