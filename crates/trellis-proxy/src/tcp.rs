//! Opaque TCP: bytes copied both ways between the downstream connection and an upstream, with
//! byte counts recorded when the connection ends.
use crate::metrics::{BytesLabels, Metrics, TcpLabels};
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies until both sides close; records the connection (opened, closed, duration) and its
/// bytes as seen from the downstream side under `edge`, and returns the bytes (received, sent);
/// a stream that ended in an error reports none.
pub async fn splice<D, U>(
    metrics: &Metrics,
    edge: TcpLabels,
    mut downstream: D,
    mut upstream: U,
) -> (u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = std::time::Instant::now();
    metrics.tcp_streams_opened.get_or_create(&edge).inc();
    let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    metrics.tcp_streams_closed.get_or_create(&edge).inc();
    metrics
        .tcp_stream_duration
        .get_or_create(&edge)
        .observe(start.elapsed().as_secs_f64());
    match copied {
        Ok((received, sent)) => {
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
        Err(e) => {
            tracing::debug!(error = %e, "tcp stream ended with an error");
            (0, 0)
        }
    }
}
