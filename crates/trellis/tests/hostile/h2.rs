//! A raw HTTP/2 client for attacks a well-behaved client library will not send: hand-built
//! frames, header blocks split across CONTINUATION frames at any byte, pseudo-headers with any
//! value (absolute-form `:path`, odd `:authority`, `:protocol`), duplicated pseudo-headers.
//!
//! Header blocks are HPACK literals without indexing and without Huffman coding, so every name and
//! value travels as plain bytes. The client asks for a zero-size dynamic table; of the answers it
//! decodes only `:status` (static table, or a literal whose value may be Huffman-coded digits)
//! and keeps DATA, RST_STREAM and GOAWAY.
use super::client::Io;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What came back on one stream.
#[derive(Debug, Default, Clone)]
pub struct StreamResult {
    pub status: Option<u16>,
    pub body: Vec<u8>,
    pub reset: Option<u32>,
    pub ended: bool,
}

impl StreamResult {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Status, reset code and body text, on one line.
    pub fn summary(&self) -> String {
        format!(
            "status {:?} reset {:?} ended {} body {:?}",
            self.status,
            self.reset,
            self.ended,
            self.body_text()
        )
    }

    /// The stream is over: ended, reset, or the connection went away.
    pub fn done(&self) -> bool {
        self.ended || self.reset.is_some()
    }
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A header block of literal fields (without indexing, new names, no Huffman), in order.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(0x00);
        hpack_str(&mut out, k.as_bytes());
        hpack_str(&mut out, v.as_bytes());
    }
    out
}

/// HEADERS (and CONTINUATION frames when `split` cuts the block at those byte offsets).
pub fn headers_frames(stream: u32, block: &[u8], end_stream: bool, split: &[usize]) -> Vec<u8> {
    let mut cuts: Vec<usize> = split
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < block.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut at = 0;
    for c in cuts {
        pieces.push(&block[at..c]);
        at = c;
    }
    pieces.push(&block[at..]);
    let mut out = Vec::new();
    let last = pieces.len() - 1;
    for (i, p) in pieces.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = 0;
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        if i == last {
            flags |= END_HEADERS;
        }
        out.extend(frame(kind, flags, stream, p));
    }
    out
}

/// Preface, empty SETTINGS and one GET (END_STREAM) on stream 1: a whole HTTP/2 request as the
/// bytes a prior-knowledge client sends first.
pub fn request_bytes(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(headers_frames(1, &header_block(fields), true, &[]));
    out
}

/// The usual pseudo-headers of a GET for `path`.
pub fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":authority", "backend".into()),
        (":path", path.into()),
    ]
}

fn decode_int(b: &[u8], at: &mut usize, prefix_bits: u8) -> Option<usize> {
    let max = (1usize << prefix_bits) - 1;
    let mut v = (*b.get(*at)? as usize) & max;
    *at += 1;
    if v < max {
        return Some(v);
    }
    let mut m = 0;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        v += ((byte & 0x7f) as usize) << m;
        m += 7;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        if m > 28 {
            return None;
        }
    }
}

/// Huffman-coded digits (all `:status` needs): '0'-'2' are 5-bit codes 00000-00010, '3'-'9'
/// 6-bit codes 011001-011111 (RFC 7541 Appendix B).
fn huffman_digits(b: &[u8]) -> Option<String> {
    let bits: Vec<u8> = b
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let take = |i: usize, n: usize| -> Option<u8> {
        (i + n <= bits.len()).then(|| bits[i..i + n].iter().fold(0u8, |a, &x| (a << 1) | x))
    };
    while i < bits.len() {
        if bits[i..].iter().all(|&x| x == 1) {
            break;
        }
        let five = take(i, 5)?;
        if five <= 2 {
            out.push((b'0' + five) as char);
            i += 5;
            continue;
        }
        let six = take(i, 6)?;
        if (0b011001..=0b011111).contains(&six) {
            out.push((b'0' + 3 + (six - 0b011001)) as char);
            i += 6;
            continue;
        }
        return None;
    }
    Some(out)
}

/// `:status` of a response header block, if it can be told.
fn status_of(block: &[u8], dynamic: &mut Vec<Option<u16>>) -> Option<u16> {
    const STATIC_STATUS: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let mut at = 0;
    let mut status = None;
    while at < block.len() {
        let b = block[at];
        if b & 0x80 != 0 {
            let idx = decode_int(block, &mut at, 7)?;
            if (8..=14).contains(&idx) {
                status = status.or(Some(STATIC_STATUS[idx - 8]));
            } else if idx > 61 {
                if let Some(Some(s)) = dynamic.get(idx - 62) {
                    status = status.or(Some(*s));
                }
            }
            continue;
        }
        if b & 0xe0 == 0x20 {
            let size = decode_int(block, &mut at, 5)?;
            if size == 0 {
                dynamic.clear();
            }
            continue;
        }
        let (prefix, indexing) = if b & 0xc0 == 0x40 {
            (6, true)
        } else {
            (4, false)
        };
        let name_idx = decode_int(block, &mut at, prefix)?;
        if name_idx == 0 {
            let h = block.get(at)? & 0x80 != 0;
            let len = decode_int(block, &mut at, 7)?;
            let _ = h;
            at += len;
        }
        let huff = block.get(at)? & 0x80 != 0;
        let len = decode_int(block, &mut at, 7)?;
        let value = block.get(at..at + len)?;
        at += len;
        let is_status = (8..=14).contains(&name_idx);
        let parsed = if is_status {
            let text = if huff {
                huffman_digits(value)?
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            text.parse::<u16>().ok()
        } else {
            None
        };
        if is_status {
            status = status.or(parsed);
        }
        if indexing {
            dynamic.insert(0, parsed);
        }
    }
    status
}

/// One HTTP/2 connection, driven by hand.
pub struct H2 {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    pub streams: BTreeMap<u32, StreamResult>,
    /// GOAWAY's error code, once received.
    pub goaway: Option<u32>,
    /// The connection ended (EOF or error).
    pub closed: bool,
    dynamic: Vec<Option<u16>>,
    /// Header block being assembled across CONTINUATION frames: stream, flags, bytes.
    pending: Option<(u32, u8, Vec<u8>)>,
}

impl H2 {
    /// Sends the preface and SETTINGS (no push, no dynamic table for answers).
    pub async fn start(mut io: Box<dyn Io>) -> std::io::Result<H2> {
        let mut hello = PREFACE.to_vec();
        // HEADER_TABLE_SIZE = 0, ENABLE_PUSH = 0.
        hello.extend(frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]));
        io.write_all(&hello).await?;
        Ok(H2 {
            io,
            buf: Vec::new(),
            streams: BTreeMap::new(),
            goaway: None,
            closed: false,
            dynamic: Vec::new(),
            pending: None,
        })
    }

    /// Every stream's outcome, one per line.
    pub fn summary(&self) -> String {
        let mut out = format!("goaway {:?} closed {}", self.goaway, self.closed);
        for (id, s) in &self.streams {
            out.push_str(&format!("\n    stream {id}: {}", s.summary()));
        }
        out
    }

    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.io.write_all(bytes).await.is_ok()
    }

    /// Sends one request without a body; `split` cuts its header block into CONTINUATIONs.
    pub async fn request(&mut self, stream: u32, fields: &[(&str, &str)], split: &[usize]) -> bool {
        let block = header_block(fields);
        let frames = headers_frames(stream, &block, true, split);
        self.streams.entry(stream).or_default();
        self.send(&frames).await
    }

    /// Reads frames until every stream in `wanted` is done, the connection ends, or `limit`.
    pub async fn collect(&mut self, wanted: &[u32], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.closed
                || wanted
                    .iter()
                    .all(|s| self.streams.get(s).is_some_and(StreamResult::done))
            {
                return;
            }
            if !self.process().await {
                let mut chunk = [0u8; 16 * 1024];
                match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                    Err(_) => return,
                    Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }

    /// Handles one buffered frame; `false` when no whole frame is buffered.
    async fn process(&mut self) -> bool {
        if self.buf.len() < 9 {
            return false;
        }
        let len =
            ((self.buf[0] as usize) << 16) | ((self.buf[1] as usize) << 8) | self.buf[2] as usize;
        if self.buf.len() < 9 + len {
            return false;
        }
        let kind = self.buf[3];
        let flags = self.buf[4];
        let stream =
            u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
        let payload: Vec<u8> = self.buf[9..9 + len].to_vec();
        self.buf.drain(..9 + len);
        match kind {
            DATA => {
                let body = strip_padding(flags, &payload);
                let s = self.streams.entry(stream).or_default();
                s.body.extend_from_slice(body);
                if flags & END_STREAM != 0 {
                    s.ended = true;
                }
            }
            HEADERS => {
                let mut p = strip_padding(flags, &payload).to_vec();
                if flags & PRIORITY != 0 && p.len() >= 5 {
                    p.drain(..5);
                }
                if flags & END_HEADERS != 0 {
                    self.headers_done(stream, flags, &p);
                } else {
                    self.pending = Some((stream, flags, p));
                }
            }
            CONTINUATION => {
                if let Some((s, f, mut block)) = self.pending.take() {
                    block.extend_from_slice(&payload);
                    if flags & END_HEADERS != 0 {
                        self.headers_done(s, f, &block);
                    } else {
                        self.pending = Some((s, f, block));
                    }
                }
            }
            RST_STREAM => {
                let code = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                self.streams.entry(stream).or_default().reset = Some(code);
            }
            SETTINGS if flags & ACK == 0 => {
                let _ = self.io.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            PING if flags & ACK == 0 => {
                let _ = self.io.write_all(&frame(PING, ACK, 0, &payload)).await;
            }
            GOAWAY => {
                let code = payload
                    .get(4..8)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                self.goaway = Some(code);
            }
            _ => {}
        }
        true
    }

    fn headers_done(&mut self, stream: u32, flags: u8, block: &[u8]) {
        let status = status_of(block, &mut self.dynamic);
        let s = self.streams.entry(stream).or_default();
        if s.status.is_none() {
            s.status = status;
        }
        if flags & END_STREAM != 0 {
            s.ended = true;
        }
    }
}

fn strip_padding(flags: u8, payload: &[u8]) -> &[u8] {
    if flags & PADDED == 0 || payload.is_empty() {
        return payload;
    }
    let pad = payload[0] as usize;
    let end = payload.len().saturating_sub(pad).max(1);
    &payload[1..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_pieces() {
        // "403" Huffman-coded: 011010 00000 011001, padded with ones.
        assert_eq!(huffman_digits(&[0x68, 0x0c, 0xff]).as_deref(), Some("403"));
        let mut d = Vec::new();
        assert_eq!(status_of(&[0x88], &mut d), Some(200));
        assert_eq!(
            status_of(&[0x08, 0x03, b'5', b'0', b'3'], &mut d),
            Some(503)
        );
        assert_eq!(
            status_of(&[0x48, 0x03, b'4', b'0', b'3'], &mut d),
            Some(403)
        );
        assert_eq!(status_of(&[0xbe], &mut d), Some(403));
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 7, 300);
        let mut at = 0;
        assert_eq!(decode_int(&out, &mut at, 7), Some(300));
        let f = headers_frames(1, &[1, 2, 3, 4], true, &[2]);
        assert_eq!(f.len(), 9 + 2 + 9 + 2);
        assert_eq!((f[3], f[4]), (HEADERS, END_STREAM));
        assert_eq!((f[9 + 2 + 3], f[9 + 2 + 4]), (CONTINUATION, END_HEADERS));
    }
}
