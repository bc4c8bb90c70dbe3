//! The server name a TLS client asks for, read from its ClientHello without terminating TLS
//! (for `mode: Passthrough` listeners): a bounded peek whose bytes are replayed to the backend.
//!
//! The parser reads only what it needs (record header, handshake header, the fixed fields, the
//! extensions up to `server_name`), with every length checked against what is there: any bytes
//! a client sends give an answer ([`Hello`]), never a panic or an unbounded wait.
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most bytes read while looking for the ClientHello: one full TLS record.
pub const MAX_PEEK: usize = 5 + 16 * 1024;

/// What the first bytes of a connection say about its TLS ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes yet.
    Incomplete,
    /// Not a TLS handshake (or a malformed one).
    NotTls,
    /// A ClientHello, with its server name when it sent one.
    ClientHello { server_name: Option<String> },
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize) -> Option<&'a [u8]> {
        let n = match len_bytes {
            1 => usize::from(self.u8()?),
            _ => self.u16()?,
        };
        self.take(n)
    }
}

/// Parses the start of a connection (see [`Hello`]). Only the first record is read: a
/// ClientHello split over several records (very large ones) is `NotTls`.
pub fn parse(bytes: &[u8]) -> Hello {
    let mut c = Cursor { bytes };
    // Record header: content type 22 (handshake), version 3.x, length.
    let Some(header) = c.take(5) else {
        return if bytes.first().is_some_and(|b| *b != 22) {
            Hello::NotTls
        } else {
            Hello::Incomplete
        };
    };
    if header[0] != 22 || header[1] != 3 {
        return Hello::NotTls;
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > 16 * 1024 {
        return Hello::NotTls;
    }
    let Some(record) = c.take(len) else {
        return Hello::Incomplete;
    };
    client_hello(record).unwrap_or(Hello::NotTls)
}

fn client_hello(record: &[u8]) -> Option<Hello> {
    let mut c = Cursor { bytes: record };
    if c.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = c.u24()?;
    let mut body = Cursor {
        bytes: c.take(len)?,
    };
    body.take(2)?; // legacy version
    body.take(32)?; // random
    body.vec(1)?; // session id
    body.vec(2)?; // cipher suites
    body.vec(1)?; // compression methods
    if body.bytes.is_empty() {
        return Some(Hello::ClientHello { server_name: None });
    }
    let mut exts = Cursor {
        bytes: body.vec(2)?,
    };
    while !exts.bytes.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if kind == 0 {
            return Some(Hello::ClientHello {
                server_name: server_name(data),
            });
        }
    }
    Some(Hello::ClientHello { server_name: None })
}

/// The first `host_name` of a `server_name` extension, when it is a valid DNS name.
fn server_name(data: &[u8]) -> Option<String> {
    let mut c = Cursor { bytes: data };
    let mut list = Cursor { bytes: c.vec(2)? };
    while !list.bytes.is_empty() {
        let kind = list.u8()?;
        let name = list.vec(2)?;
        if kind == 0 {
            let name = std::str::from_utf8(name).ok()?;
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
            return valid.then(|| name.to_ascii_lowercase());
        }
    }
    None
}

/// Reads from `io` until the ClientHello is whole (or is not one), at most [`MAX_PEEK`] bytes
/// and `timeout` long; returns what it says and the bytes read (to replay).
pub async fn peek<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<(Hello, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            let hello = parse(&buf);
            if hello != Hello::Incomplete || buf.len() >= MAX_PEEK {
                return Ok(hello);
            }
            let mut chunk = [0u8; 4096];
            let room = (MAX_PEEK - buf.len()).min(chunk.len());
            let n = io.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Ok(Hello::NotTls);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(hello)) => Ok((hello, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok((Hello::Incomplete, buf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client would send it, with `name` as SNI.
    fn hello(name: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        // An unrelated extension first (supported_versions).
        exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        if let Some(n) = name {
            let n = n.as_bytes();
            let mut sni = Vec::new();
            sni.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
            sni.push(0);
            sni.extend_from_slice(&(n.len() as u16).to_be_bytes());
            sni.extend_from_slice(n);
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(sni.len() as u16).to_be_bytes());
            exts.extend_from_slice(&sni);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0]); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        let h = hello(Some("Echo.Example.com"));
        assert_eq!(
            parse(&h),
            Hello::ClientHello {
                server_name: Some("echo.example.com".into())
            }
        );
        assert_eq!(
            parse(&hello(None)),
            Hello::ClientHello { server_name: None }
        );
    }

    #[test]
    fn every_prefix_is_incomplete_and_nothing_panics() {
        let h = hello(Some("a.example.com"));
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Hello::Incomplete, "prefix {n}");
        }
        // Corrupt every byte in turn: an answer each time, never a panic.
        for i in 0..h.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut bad = h.clone();
                bad[i] = v;
                let _ = parse(&bad);
            }
        }
    }

    #[test]
    fn other_protocols_are_not_tls() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse(b"PRI * HTTP/2.0"), Hello::NotTls);
        assert_eq!(parse(&[22, 3, 1, 0xff, 0xff]), Hello::NotTls);
        assert_eq!(parse(&[22, 2, 0, 0, 1, 1]), Hello::NotTls);
    }

    #[tokio::test]
    async fn peek_is_bounded() {
        let h = hello(Some("a.example.com"));
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &h)
            .await
            .unwrap();
        let (hello, bytes) = peek(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(bytes, h);
        assert!(matches!(
            hello,
            Hello::ClientHello {
                server_name: Some(_)
            }
        ));
        // A silent client: the timeout answers.
        let (_c, mut s) = tokio::io::duplex(1024);
        let (hello, bytes) = peek(&mut s, Duration::from_millis(20)).await.unwrap();
        assert_eq!((hello, bytes.len()), (Hello::Incomplete, 0));
    }
}
