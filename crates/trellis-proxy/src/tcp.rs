//! Opaque TCP: bytes copied both ways between the downstream connection and an upstream, with
//! byte counts recorded when the connection ends.
use crate::metrics::{BytesLabels, Metrics};
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies until both sides close; records bytes as seen from the downstream side.
pub async fn splice<D, U>(
    metrics: &Metrics,
    direction: &'static str,
    service: &str,
    mut downstream: D,
    mut upstream: U,
) where
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
        }
        Err(e) => tracing::debug!(error = %e, "tcp stream ended with an error"),
    }
}
