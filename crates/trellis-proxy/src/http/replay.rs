//! Request bodies buffered so a retry or a mirror can send them again — up to a limit. A body
//! larger than the limit is streamed once (what was read so far goes first) and never retried.
use crate::body::{self, Body, BoxError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::request::Parts;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Frame;

/// A copy of a request's head, to send it again with a replayed body.
pub fn clone_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// A body that can be sent more than once.
#[derive(Debug, Clone)]
pub struct Replayable {
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Replayable {
    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self {
            data: Bytes::new(),
            trailers: None,
        }
    }

    pub fn body(&self) -> Body {
        if self.trailers.is_none() {
            return body::full(self.data.clone());
        }
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = Vec::with_capacity(2);
        if !self.data.is_empty() {
            frames.push(Ok(Frame::data(self.data.clone())));
        }
        if let Some(t) = &self.trailers {
            frames.push(Ok(Frame::trailers(t.clone())));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }
}

pub enum Prepared {
    Replayable(Replayable),
    /// Too large to buffer: send once.
    Streaming(Body),
}

/// Reads `body` into memory if it fits in `limit` bytes.
pub async fn prepare(
    mut body: Body,
    limit: usize,
    content_length: Option<u64>,
) -> Result<Prepared, BoxError> {
    if content_length.is_some_and(|n| n > limit as u64) {
        return Ok(Prepared::Streaming(body));
    }
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    let head = futures_util::stream::once(async move {
                        Ok::<_, BoxError>(Frame::data(data.freeze()))
                    });
                    let rest = BodyStream::new(body);
                    return Ok(Prepared::Streaming(
                        StreamBody::new(head.chain(rest)).boxed_unsync(),
                    ));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(Prepared::Replayable(Replayable {
        data: data.freeze(),
        trailers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_bodies_replay_and_large_ones_stream() {
        let p = prepare(body::full("hello"), 10, None).await.unwrap();
        let Prepared::Replayable(r) = p else {
            panic!("expected buffered")
        };
        for _ in 0..2 {
            let got = r.body().collect().await.unwrap().to_bytes();
            assert_eq!(got, "hello");
        }
        let p = prepare(body::full("0123456789abcdef"), 10, None)
            .await
            .unwrap();
        let Prepared::Streaming(b) = p else {
            panic!("expected streaming")
        };
        assert_eq!(b.collect().await.unwrap().to_bytes(), "0123456789abcdef");
        let p = prepare(body::full("x"), 10, Some(11)).await.unwrap();
        assert!(matches!(p, Prepared::Streaming(_)));
    }
}
