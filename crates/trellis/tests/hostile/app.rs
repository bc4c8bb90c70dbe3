//! The application behind the sidecar under attack: a raw TCP server that records every byte it
//! receives, per connection, before doing anything else with it. It is deliberately naive (as
//! the apps a mesh protects often are): it answers every HTTP/1.1 request it can parse with
//! `200 OK`, answers `101 Switching Protocols` to any request carrying `Upgrade` (and `200` to
//! `CONNECT`) and then only records raw bytes, and serves HTTP/2 prior knowledge (hyper, with
//! extended CONNECT enabled) recording each request it decodes. What it recorded is the ground
//! truth of every hostile test: whatever the attacker saw, these are the bytes that got through.
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One request the app decoded (HTTP/1.x by its own parser, HTTP/2 by hyper).
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index of the app-side connection it arrived on.
    pub conn: usize,
    pub version: &'static str,
    pub method: String,
    /// HTTP/1: the request-target as sent; HTTP/2: the whole URI (`scheme://authority/path`).
    pub target: String,
    /// Lower-case names; for HTTP/2 an extended CONNECT's `:protocol` is listed as a header.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The path part of a request target: for absolute-form (`http://host/p`) the part from the first
/// `/` after the authority.
pub fn path_of(target: &str) -> &str {
    let lower = target.to_ascii_lowercase();
    for scheme in ["http://", "https://"] {
        if lower.starts_with(scheme) {
            let rest = &target[scheme.len()..];
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

#[derive(Default)]
struct Log {
    conns: Vec<Vec<u8>>,
    requests: Vec<Seen>,
}

/// Where the record stood at some moment, to look at what arrived after it.
#[derive(Debug, Clone, Default)]
pub struct Mark {
    lens: Vec<usize>,
    requests: usize,
}

/// What the app received (since a mark).
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Bytes per app-side connection (only those that received any).
    pub conns: Vec<(usize, Vec<u8>)>,
    pub requests: Vec<Seen>,
}

impl Record {
    pub fn total_bytes(&self) -> usize {
        self.conns.iter().map(|(_, b)| b.len()).sum()
    }

    /// Connections whose bytes contain `needle` (ASCII case-insensitive).
    pub fn conns_containing(&self, needle: &[u8]) -> Vec<usize> {
        let needle = needle.to_ascii_lowercase();
        self.conns
            .iter()
            .filter(|(_, b)| contains(&b.to_ascii_lowercase(), &needle))
            .map(|(i, _)| *i)
            .collect()
    }

    pub fn contains(&self, needle: &[u8]) -> bool {
        !self.conns_containing(needle).is_empty()
    }

    /// Whether any connection's bytes contain `needle` exactly (case-sensitive).
    pub fn contains_exact(&self, needle: &[u8]) -> bool {
        self.conns.iter().any(|(_, b)| contains(b, needle))
    }

    /// A readable account for assertion messages: each connection's first bytes, each request.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, b) in &self.conns {
            out.push_str(&format!(
                "\n  app conn #{i}: {} bytes: {}",
                b.len(),
                excerpt(b, 160)
            ));
        }
        for r in &self.requests {
            out.push_str(&format!(
                "\n  app request (conn #{}) {} {} {} {:?}",
                r.conn, r.version, r.method, r.target, r.headers
            ));
        }
        if out.is_empty() {
            out.push_str(" nothing");
        }
        out
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Printable form of the first `max` bytes.
pub fn excerpt(b: &[u8], max: usize) -> String {
    let cut = &b[..b.len().min(max)];
    let mut s = String::new();
    for &c in cut {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    if b.len() > max {
        s.push_str("...");
    }
    s
}

/// The recording app, listening on `addr` until the test's runtime ends.
#[derive(Clone)]
pub struct App {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl App {
    pub async fn start() -> App {
        let listener = bind_free().await;
        let addr = listener.local_addr().expect("app addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let app = App {
            addr,
            log: log.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let idx = {
                    let mut l = log.lock().unwrap();
                    l.conns.push(Vec::new());
                    l.conns.len() - 1
                };
                tokio::spawn(serve(stream, idx, log.clone()));
            }
        });
        app
    }

    pub fn mark(&self) -> Mark {
        let l = self.log.lock().unwrap();
        Mark {
            lens: l.conns.iter().map(Vec::len).collect(),
            requests: l.requests.len(),
        }
    }

    /// Everything received since `mark`.
    pub fn since(&self, mark: &Mark) -> Record {
        let l = self.log.lock().unwrap();
        let conns = l
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let from = mark.lens.get(i).copied().unwrap_or(0);
                (b.len() > from).then(|| (i, b[from..].to_vec()))
            })
            .collect();
        Record {
            conns,
            requests: l.requests[mark.requests..].to_vec(),
        }
    }

    /// Everything received so far.
    pub fn all(&self) -> Record {
        self.since(&Mark::default())
    }
}

/// A listener on a port from `free_addr()` (retried if another process took it meanwhile).
pub async fn bind_free() -> TcpListener {
    for _ in 0..20 {
        if let Ok(l) = TcpListener::bind(crate::common::free_addr()).await {
            return l;
        }
    }
    panic!("no free port to bind");
}

fn record(log: &Mutex<Log>, idx: usize, bytes: &[u8]) {
    log.lock().unwrap().conns[idx].extend_from_slice(bytes);
}

async fn serve(mut stream: TcpStream, idx: usize, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // Enough bytes to tell the HTTP/2 preface from anything else.
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        record(&log, idx, &chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        let k = buf.len().min(H2_PREFACE.len());
        if buf[..k] != H2_PREFACE[..k] {
            break;
        }
        if buf.len() >= H2_PREFACE.len() {
            return serve_h2(stream, buf, idx, log).await;
        }
    }
    serve_h1(stream, buf, idx, log).await
}

/// What an HTTP/1 head said.
struct Head {
    len: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

/// Parses a request head at the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Err(n)` when the first `n` bytes end a head that is not a request.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, usize> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let len = end + 4;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(len);
    };
    if method.is_empty() || !version.starts_with("HTTP/1") {
        return Err(len);
    }
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        len,
        method: method.to_string(),
        target: target.to_string(),
        headers,
    }))
}

/// Length of a complete chunked body at the start of `buf`, if all of it is there.
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size_text = String::from_utf8_lossy(&buf[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let e = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let empty = e == at;
                at = e + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > buf.len() {
            return None;
        }
    }
}

async fn serve_h1(mut stream: TcpStream, mut buf: Vec<u8>, idx: usize, log: Arc<Mutex<Log>>) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Answer every complete request in the buffer.
        loop {
            let head = match parse_head(&buf) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(n) => {
                    buf.drain(..n);
                    continue;
                }
            };
            let header = |name: &str| {
                head.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let body_len = if header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
            {
                match chunked_len(&buf[head.len..]) {
                    Some(n) => n,
                    None => break,
                }
            } else {
                header("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            if buf.len() < head.len + body_len {
                break;
            }
            buf.drain(..head.len + body_len);
            let upgrade = header("upgrade");
            let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let connect = head.method.eq_ignore_ascii_case("CONNECT");
            log.lock().unwrap().requests.push(Seen {
                conn: idx,
                version: "HTTP/1.1",
                method: head.method.clone(),
                target: head.target.clone(),
                headers: head.headers.clone(),
            });
            if let Some(proto) = upgrade {
                let rsp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {proto}\r\n\r\n"
                );
                let _ = stream.write_all(rsp.as_bytes()).await;
                return raw(stream, idx, log).await;
            }
            if connect {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await;
                return raw(stream, idx, log).await;
            }
            let body = format!("app-saw {} {}\n", head.method, head.target);
            let rsp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "connection: close\r\n" } else { "" }
            );
            if stream.write_all(rsp.as_bytes()).await.is_err() {
                return raw(stream, idx, log).await;
            }
            if close {
                let _ = stream.shutdown().await;
                return raw(stream, idx, log).await;
            }
        }
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        record(&log, idx, &chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// After an upgrade (or garbage it cannot answer): record until the peer closes.
async fn raw(mut stream: TcpStream, idx: usize, log: Arc<Mutex<Log>>) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => record(&log, idx, &chunk[..n]),
        }
    }
}

/// A stream that replays bytes already read (and recorded), then records what it reads.
struct RecordingIo {
    prefix: Vec<u8>,
    stream: TcpStream,
    idx: usize,
    log: Arc<Mutex<Log>>,
}

impl AsyncRead for RecordingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, out);
        if let Poll::Ready(Ok(())) = &r {
            let got = &out.filled()[before..];
            if !got.is_empty() {
                record(&this.log, this.idx, got);
            }
        }
        r
    }
}

impl AsyncWrite for RecordingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn serve_h2(stream: TcpStream, prefix: Vec<u8>, idx: usize, log: Arc<Mutex<Log>>) {
    let io = RecordingIo {
        prefix,
        stream,
        idx,
        log: log.clone(),
    };
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let mut headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            if let Some(p) = req.extensions().get::<hyper::ext::Protocol>() {
                headers.push((":protocol".into(), p.as_str().to_string()));
            }
            let target = req.uri().to_string();
            let method = req.method().to_string();
            log.lock().unwrap().requests.push(Seen {
                conn: idx,
                version: "HTTP/2",
                method: method.clone(),
                target: target.clone(),
                headers,
            });
            let body = format!("app-saw {method} {target}\n");
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .enable_connect_protocol()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_chunks() {
        let h = parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/a"));
        assert_eq!(h.len, 28);
        assert!(parse_head(b"GET /a HTTP/1.1\r\n").unwrap().is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert_eq!(chunked_len(b"3\r\nabc\r\n0\r\n\r\nX"), Some(13));
        assert_eq!(chunked_len(b"3\r\nabc\r\n"), None);
        assert_eq!(path_of("http://backend/admin?x"), "/admin?x");
        assert_eq!(path_of("/hello"), "/hello");
    }
}
