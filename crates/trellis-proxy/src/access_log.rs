//! Access logs: one JSON line per request and per TCP connection, when the MeshConfig's
//! `telemetry.accessLog` asks for them (off by default; see `trellis_api::access_log`).
//!
//! A request never waits for its line. Lines go through a bounded queue to one writer thread,
//! which writes standard output or appends to a file; when the queue is full (a slow disk, a
//! pipe nobody reads) the line is dropped and counted (`trellis_access_log_dropped_lines`),
//! the trade Envoy's and Linkerd's loggers make too. The thread starts with the first line, so
//! a mesh that logs nothing pays nothing but one flag test per request.
//!
//! A request's line is written when its response body ends (or is abandoned), so it carries
//! the bytes sent, the full duration and a `grpc-status` that came in the trailers.
use crate::body::{Body, BoxError};
use crate::grpc;
use crate::live::tap::{shown_headers, Headers, Taps};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use trellis_api::access_log::{AccessLogConfig, AccessLogField, STDOUT};
use trellis_api::telemetry::TapEvent;

/// Lines waiting for the writer at most; past this they are dropped.
const QUEUE: usize = 8192;

/// The process's access log: the queue to its writer and the count of lines dropped.
pub struct AccessLog {
    queue: OnceLock<SyncSender<Line>>,
    dropped: Counter,
}

struct Line {
    output: Arc<str>,
    text: String,
}

impl AccessLog {
    pub fn new(dropped: Counter) -> Self {
        Self {
            queue: OnceLock::new(),
            dropped,
        }
    }

    fn send(&self, output: Arc<str>, text: String) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(rx));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the access-log writer: lines are dropped");
            }
            tx
        });
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            queue.try_send(Line { output, text })
        {
            self.dropped.inc();
        }
    }
}

/// How long the writer gathers lines after a write: the sender wakes no thread while the writer
/// sleeps, so a busy sidecar pays one wake-up and one write per this interval, not per line.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer thread: appends each line to its output, flushing whenever the queue runs dry.
fn write_lines(rx: Receiver<Line>) {
    let mut files: Vec<(Arc<str>, Option<std::io::BufWriter<std::fs::File>>)> = Vec::new();
    let mut stdout = std::io::BufWriter::new(std::io::stdout());
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(mut line) = next {
            // One write of the whole line: the buffer then flushes only between lines, so
            // sidecars appending to one file never interleave inside a line.
            line.text.push('\n');
            let written = if &*line.output == STDOUT {
                stdout.write_all(line.text.as_bytes())
            } else {
                let slot = match files.iter().position(|(o, _)| *o == line.output) {
                    Some(i) => i,
                    None => {
                        files.push((line.output.clone(), open(&line.output)));
                        files.len() - 1
                    }
                };
                match &mut files[slot].1 {
                    Some(f) => f.write_all(line.text.as_bytes()),
                    None => Ok(()),
                }
            };
            if let Err(e) = written {
                tracing::warn!(output = %line.output, error = %e, "cannot write the access log");
            }
            next = rx.try_recv().ok();
        }
        let _ = stdout.flush();
        for (_, f) in files
            .iter_mut()
            .filter_map(|(o, f)| f.as_mut().map(|f| (o, f)))
        {
            let _ = f.flush();
        }
        std::thread::sleep(GATHER);
    }
}

fn open(path: &str) -> Option<std::io::BufWriter<std::fs::File>> {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => Some(std::io::BufWriter::new(f)),
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot open the access log file: its lines are lost");
            None
        }
    }
}

/// The fields a line holds: the config's, or all of them when it names none.
fn fields(config: &AccessLogConfig) -> Arc<[AccessLogField]> {
    if config.fields.is_empty() {
        Arc::from(AccessLogField::ALL)
    } else {
        Arc::from(config.fields.as_slice())
    }
}

/// Whether this request or connection gets a line, by the config in force.
fn chosen(config: &AccessLogConfig) -> bool {
    config.enabled
        && (config.sample_percent >= 100.0 || rand::random::<f64>() * 100.0 < config.sample_percent)
}

/// What a line says, gathered as the request goes.
#[derive(Debug, Default)]
struct Record {
    kind: &'static str,
    direction: &'static str,
    trace_id: Option<String>,
    request_id: Option<String>,
    source: Option<SocketAddr>,
    source_identity: Option<Arc<str>>,
    destination: String,
    route: String,
    method: String,
    path: String,
    authority: Option<String>,
    protocol: &'static str,
    status: Option<u16>,
    grpc_status: Option<&'static str>,
    reason: &'static str,
    bytes_received: u64,
    bytes_sent: u64,
    duration: Duration,
    response_headers: Option<Duration>,
    attempts: Option<u32>,
}

/// The access-log line of one request in progress: taken when the request arrives (if the
/// config says it gets one), finished when its response body ends.
pub struct RequestLine {
    log: Arc<AccessLog>,
    /// Where the line goes and what it holds, when the access log chose this request.
    logged: Option<(Arc<str>, Arc<[AccessLogField]>)>,
    /// The open taps and the request's headers as they show them, when a tap may want it.
    tapped: Option<(Arc<Taps>, Headers)>,
    time: SystemTime,
    start: Instant,
    received: Arc<AtomicU64>,
    record: Record,
}

/// Where a logged request's body bytes are counted (a request extension).
#[derive(Debug, Clone)]
struct RequestBytes(Arc<AtomicU64>);

/// Marks a request that has a body so that [`counting`] counts it, and returns the count
/// (`None` for a request with no body: nothing to count).
pub fn count_body<B: http_body::Body>(req: &mut Request<B>) -> Option<Arc<AtomicU64>> {
    if req.body().is_end_stream() {
        return None;
    }
    let count = Arc::new(AtomicU64::new(0));
    req.extensions_mut().insert(RequestBytes(count.clone()));
    Some(count)
}

/// `req`, its body counted (for its edge's byte metrics and its access-log line's
/// `bytesReceived`) when [`count_body`] marked it.
pub fn counting(req: Request<Body>) -> Request<Body> {
    match req.extensions().get::<RequestBytes>().cloned() {
        None => req,
        Some(RequestBytes(count)) => req.map(|inner| crate::body::boxed(Counted { inner, count })),
    }
}

/// A fresh `x-request-id` for a request that has none: a random (version 4) UUID, as Envoy
/// makes them, so a request is found in every log along its path.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(&REQUEST_ID) {
        return;
    }
    let v = (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    // Written into a stack buffer: this runs for most requests, so no formatting machinery.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [b'-'; 36];
    let mut nibble = 32;
    for (i, slot) in id.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        nibble -= 1;
        *slot = HEX[((v >> (nibble * 4)) & 0xf) as usize];
    }
    // Owned by the `Bytes` from the start, so the copies a retry or mirror makes of the head
    // share it rather than each promoting a copied buffer.
    if let Ok(value) = http::HeaderValue::from_maybe_shared(Bytes::from_owner(id)) {
        headers.insert(REQUEST_ID, value);
    }
}

/// A `HeaderName` rather than a `&str`: inserting under a `&str` copies the name into a fresh
/// buffer each time.
const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// How many tries a forwarded request took; put on the response by the forwarding core when a
/// line will be written.
#[derive(Debug, Clone, Copy)]
pub struct Attempts(pub u32);

impl RequestLine {
    /// A line for `req`, or `None` when the config logs nothing or the draw left it out. Its
    /// `bytesReceived` is the count [`count_body`] set up, when the request has a body.
    pub fn begin<B>(
        log: &Arc<AccessLog>,
        config: Option<&AccessLogConfig>,
        taps: &Arc<Taps>,
        direction: &'static str,
        peer: SocketAddr,
        peer_identity: Option<Arc<str>>,
        req: &mut Request<B>,
    ) -> Option<Self> {
        let logged = config
            .filter(|c| chosen(c))
            .map(|config| (Arc::from(config.output.as_str()), fields(config)));
        let tapped = taps
            .wants(req.method().as_str(), req.uri().path())
            .then(|| (taps.clone(), shown_headers(req.headers())));
        if logged.is_none() && tapped.is_none() {
            return None;
        }
        // Counted by the request's metrics when it has a body (see [`count_body`]).
        let received = match req.extensions().get::<RequestBytes>() {
            Some(RequestBytes(count)) => count.clone(),
            None => Arc::default(),
        };
        let h = req.headers();
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Some(Self {
            log: log.clone(),
            logged,
            tapped,
            time: SystemTime::now(),
            start: Instant::now(),
            received,
            record: Record {
                kind: "http",
                direction,
                trace_id: crate::trace::context::trace_id_text(h),
                request_id: text(REQUEST_ID.as_str()),
                source: Some(peer),
                source_identity: peer_identity,
                method: req.method().as_str().to_string(),
                path: req.uri().path().to_string(),
                authority: req
                    .uri()
                    .authority()
                    .map(|a| a.to_string())
                    .or_else(|| text("host")),
                protocol: protocol(req.version()),
                ..Record::default()
            },
        })
    }

    /// Fills in what the proxy decided and wraps the response body; the line is written when
    /// that body ends or is dropped.
    pub fn finish(
        mut self,
        destination: &str,
        route: &str,
        reason: &'static str,
        response: Response<Body>,
    ) -> Response<Body> {
        let r = &mut self.record;
        r.destination = destination.to_string();
        r.route = route.to_string();
        r.reason = reason;
        r.status = Some(response.status().as_u16());
        r.response_headers = Some(self.start.elapsed());
        r.attempts = response.extensions().get::<Attempts>().map(|a| a.0);
        if grpc::is_grpc(response.headers()) {
            r.grpc_status = grpc::status_of(response.headers()).map(grpc::Code::as_str);
        }
        response.map(|body| {
            crate::body::boxed(Logged {
                inner: body,
                line: Some(self),
            })
        })
    }

    fn write(mut self) {
        self.record.bytes_received = self.received.load(Ordering::Relaxed);
        self.record.duration = self.start.elapsed();
        if let Some((output, fields)) = &self.logged {
            let text = render(fields, self.time, &self.record);
            self.log.send(output.clone(), text);
        }
        if let Some((taps, headers)) = self.tapped.take() {
            taps.offer(tap_event(self.time, &self.record, headers));
        }
    }
}

/// One line for an opaque TCP connection that ended.
#[allow(clippy::too_many_arguments)]
pub fn tcp_connection(
    log: &Arc<AccessLog>,
    config: &AccessLogConfig,
    direction: &'static str,
    started: (SystemTime, Instant),
    peer: SocketAddr,
    peer_identity: Option<Arc<str>>,
    destination: &str,
    bytes: (u64, u64),
    reason: &'static str,
) {
    if !chosen(config) {
        return;
    }
    let record = Record {
        kind: "tcp",
        direction,
        source: Some(peer),
        source_identity: peer_identity,
        destination: destination.to_string(),
        reason,
        bytes_received: bytes.0,
        bytes_sent: bytes.1,
        duration: started.1.elapsed(),
        ..Record::default()
    };
    let text = render(&fields(config), started.0, &record);
    log.send(Arc::from(config.output.as_str()), text);
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// A line: the chosen fields, in order, as one JSON object, written straight into one string.
fn render(fields: &[AccessLogField], time: SystemTime, r: &Record) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(512);
    let ms = |out: &mut String, d: Duration| {
        let _ = write!(out, "{}", (d.as_secs_f64() * 1e6).round() / 1e3);
    };
    out.push('{');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(f.key());
        out.push_str("\":");
        match f {
            AccessLogField::Time => json_str(&mut out, Some(&rfc3339(time))),
            AccessLogField::Kind => json_str(&mut out, Some(r.kind)),
            AccessLogField::Direction => json_str(&mut out, Some(r.direction)),
            AccessLogField::TraceId => json_str(&mut out, r.trace_id.as_deref()),
            AccessLogField::RequestId => json_str(&mut out, r.request_id.as_deref()),
            AccessLogField::Source => match r.source {
                Some(s) => {
                    let _ = write!(out, "\"{s}\"");
                }
                None => out.push_str("null"),
            },
            AccessLogField::SourceIdentity => json_str(&mut out, r.source_identity.as_deref()),
            AccessLogField::Destination => json_str(&mut out, Some(&r.destination)),
            AccessLogField::Route => json_str(&mut out, Some(&r.route)),
            AccessLogField::Method => json_str(&mut out, Some(&r.method)),
            AccessLogField::Path => json_str(&mut out, Some(&r.path)),
            AccessLogField::Authority => json_str(&mut out, r.authority.as_deref()),
            AccessLogField::Protocol => json_str(&mut out, Some(r.protocol)),
            AccessLogField::Status => json_num(&mut out, r.status.map(u64::from)),
            AccessLogField::GrpcStatus => json_str(&mut out, r.grpc_status),
            AccessLogField::Reason => json_str(&mut out, Some(r.reason)),
            AccessLogField::BytesReceived => json_num(&mut out, Some(r.bytes_received)),
            AccessLogField::BytesSent => json_num(&mut out, Some(r.bytes_sent)),
            AccessLogField::DurationMs => ms(&mut out, r.duration),
            AccessLogField::ResponseHeadersMs => match r.response_headers {
                Some(d) => ms(&mut out, d),
                None => out.push_str("null"),
            },
            AccessLogField::Attempts => json_num(&mut out, r.attempts.map(u64::from)),
        }
    }
    out.push('}');
    out
}

fn json_num(out: &mut String, n: Option<u64>) {
    use std::fmt::Write as _;
    match n {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

/// A JSON string (RFC 8259 escaping: quote, backslash, control characters), or `null`.
fn json_str(out: &mut String, s: Option<&str>) {
    use std::fmt::Write as _;
    let Some(s) = s else {
        out.push_str("null");
        return;
    };
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 in UTC with milliseconds (`2026-12-02T08:00:00.123Z`).
fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A finished request as a tap shows it (the proxy and namespace are the tap's to fill in).
fn tap_event(time: SystemTime, r: &Record, request_headers: Headers) -> TapEvent {
    TapEvent {
        time: rfc3339(time),
        direction: r.direction.to_string(),
        source: r.source_identity.as_deref().unwrap_or("").to_string(),
        source_address: r.source.map(|a| a.to_string()).unwrap_or_default(),
        destination: r.destination.clone(),
        route: r.route.clone(),
        method: r.method.clone(),
        authority: r.authority.clone().unwrap_or_default(),
        path: r.path.clone(),
        status: r.status.unwrap_or(0),
        grpc_status: r.grpc_status.map(str::to_string),
        reason: r.reason.to_string(),
        duration_ms: r.duration.as_secs_f64() * 1000.0,
        bytes_received: r.bytes_received,
        bytes_sent: r.bytes_sent,
        attempts: r.attempts,
        trace_id: r.trace_id.clone(),
        request_id: r.request_id.clone(),
        request_headers,
        ..TapEvent::default()
    }
}

pin_project_lite::pin_project! {
    /// A request body that adds what passes to a counter.
    struct Counted {
        #[pin]
        inner: Body,
        count: Arc<AtomicU64>,
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that writes its request's line when it ends or is dropped.
struct Logged {
    inner: Body,
    line: Option<RequestLine>,
}

impl Logged {
    /// Writes the line, once.
    fn end(&mut self) {
        if let Some(line) = self.line.take() {
            line.write();
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.end();
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let (data, status) = (
                    frame.data_ref().map_or(0, |d| d.len() as u64),
                    frame
                        .trailers_ref()
                        .and_then(grpc::status_of)
                        .map(grpc::Code::as_str),
                );
                if let Some(line) = self.line.as_mut() {
                    line.record.bytes_sent += data;
                    if status.is_some() {
                        line.record.grpc_status = status;
                    }
                }
                if self.inner.is_end_stream() {
                    self.end();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_json_with_the_chosen_fields_in_order() {
        let r = Record {
            kind: "http",
            direction: "outbound",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            method: "GET".into(),
            path: "/a \"quoted\" \\ path\u{1}\tü".into(),
            status: Some(200),
            duration: Duration::from_micros(1500),
            ..Record::default()
        };
        let fields = [
            AccessLogField::Status,
            AccessLogField::Path,
            AccessLogField::TraceId,
            AccessLogField::DurationMs,
            AccessLogField::GrpcStatus,
            AccessLogField::Time,
        ];
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_662_400_123);
        let line = render(&fields, t, &r);
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/a \"quoted\" \\ path\u{1}\tü");
        assert_eq!(v["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["durationMs"], 1.5);
        assert_eq!(v["grpcStatus"], serde_json::Value::Null);
        assert_eq!(v["time"], "2025-12-02T08:00:00.123Z");
        let keys: Vec<&str> = line
            .split(&[',', '{'][..])
            .filter_map(|p| p.strip_prefix('"').and_then(|p| p.split('"').next()))
            .filter(|k| fields.iter().any(|f| f.key() == *k))
            .collect();
        assert_eq!(
            keys,
            [
                "status",
                "path",
                "traceId",
                "durationMs",
                "grpcStatus",
                "time"
            ]
        );
    }

    #[test]
    fn a_request_id_is_made_only_when_missing_and_is_a_version_4_uuid() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h[&REQUEST_ID].to_str().unwrap().to_string();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {id}");
        assert!(
            matches!(&groups[3][..1], "8" | "9" | "a" | "b"),
            "variant: {id}"
        );
        ensure_request_id(&mut h);
        assert_eq!(h[&REQUEST_ID], id.as_str(), "an id a request has is kept");
        let mut other = HeaderMap::new();
        ensure_request_id(&mut other);
        assert_ne!(other[&REQUEST_ID], id.as_str());
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dropped = Counter::default();
        let log = AccessLog::new(dropped.clone());
        // A queue nobody drains: the writer is replaced by a receiver held here.
        let (tx, rx) = sync_channel(2);
        let _ = log.queue.set(tx);
        for _ in 0..5 {
            log.send(Arc::from("stdout"), "{}".into());
        }
        assert_eq!(dropped.get(), 3);
        drop(rx);
        log.send(Arc::from("stdout"), "{}".into());
        assert_eq!(dropped.get(), 4, "a gone writer drops too");
    }
}
