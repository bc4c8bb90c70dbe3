//! Opaque TCP: bytes copied both ways between the downstream connection and an upstream, with
//! byte counts recorded when the connection ends.
use crate::metrics::{BytesLabels, Metrics};
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies until both sides close; records bytes as seen from the downstream side and returns
/// them (received, sent); a stream that ended in an error reports none.
pub async fn splice<D, U>(
    metrics: &Metrics,
    direction: &'static str,
    service: &str,
    mut downstream: D,
    mut upstream: U,
) -> (u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((received, sent)) => {
            let count = |flow, n| {
                metrics
                    .bytes
                    .get_or_create(&BytesLabels {
                        direction,
                        service: service.to_string(),
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
