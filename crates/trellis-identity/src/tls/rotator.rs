//! Certificate renewal for a proxy: a fresh key and CSR at about half the certificate's
//! lifetime, swapped into the [`CertSource`] without touching any connection.
//!
//! Why half, with jitter: renewing at 50% (±5% by default) leaves the other half of the lifetime
//! to ride out a control plane outage, and the jitter keeps a fleet started together from
//! renewing in lockstep. A new key per renewal (as Istio does) limits what a leaked key is worth.
//! Failures are retried with exponential backoff; the current certificate stays in use meanwhile.
use super::CertSource;
use crate::ca::CertBundle;
use crate::keys::WorkloadKey;
use crate::spiffe::SpiffeId;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// When and how to renew.
#[derive(Debug, Clone)]
pub struct RotatorOptions {
    /// Share of the lifetime after which to renew (0.5 = half way).
    pub renew_at: f64,
    /// Width of the random spread around `renew_at`, as a share of the lifetime (0.1 = ±5%).
    pub jitter: f64,
    /// First retry delay after a failed renewal; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for RotatorOptions {
    fn default() -> Self {
        Self {
            renew_at: 0.5,
            jitter: 0.1,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// What the rotator has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationStatus {
    /// Certificates obtained and installed.
    pub issued: u64,
    /// Failed attempts (issuer error, or a certificate that did not fit).
    pub failures: u64,
    pub last_error: Option<String>,
    /// Expiry of the installed certificate.
    pub not_after: Option<SystemTime>,
    /// Delay until the next planned renewal, as computed when it was planned.
    pub next_renewal_in: Option<Duration>,
}

/// A background task that keeps a [`CertSource`] supplied. Dropping it stops the task.
pub struct Rotator {
    task: JoinHandle<()>,
    status: watch::Receiver<RotationStatus>,
}

impl Rotator {
    /// Starts renewing certificates for `identity` into `certs`. `issue` receives a PEM CSR and
    /// returns the CA's answer (over the control connection, with the join token). When `certs`
    /// is empty or its certificate is past its renewal point, the first request goes out at once.
    pub fn spawn<F, Fut, E>(
        identity: SpiffeId,
        certs: Arc<CertSource>,
        issue: F,
        options: RotatorOptions,
    ) -> Self
    where
        F: FnMut(String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<CertBundle, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let (tx, rx) = watch::channel(RotationStatus::default());
        let task = tokio::spawn(run(identity, certs, issue, options, tx));
        Self { task, status: rx }
    }

    pub fn status(&self) -> RotationStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<RotationStatus> {
        self.status.clone()
    }

    /// Waits until at least `n` certificates have been installed by this rotator.
    pub async fn wait_issued(&self, n: u64) {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.issued >= n).await;
    }
}

impl Drop for Rotator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for Rotator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotator")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

async fn run<F, Fut, E>(
    identity: SpiffeId,
    certs: Arc<CertSource>,
    mut issue: F,
    options: RotatorOptions,
    tx: watch::Sender<RotationStatus>,
) where
    F: FnMut(String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<CertBundle, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let mut backoff = options.retry_min;
    let mut retrying = false;
    loop {
        if !retrying {
            if let Some((not_before, not_after)) = certs.validity() {
                let share = renewal_share(&options, rand::random::<f64>());
                // The certificate was just installed: its useful life starts now, not at
                // `not_before`, which the CA backdates for clock skew (a minute). Counting from
                // `not_before` would renew a one-minute certificate at once, in a loop.
                let now = SystemTime::now();
                let delay = renewal_delay(not_before.max(now), not_after, now, share);
                tx.send_modify(|s| s.next_renewal_in = Some(delay));
                tokio::time::sleep(delay).await;
            }
        }
        match renew_once(&identity, &certs, &mut issue).await {
            Ok(not_after) => {
                tracing::info!(identity = %identity, ?not_after, "workload certificate renewed");
                tx.send_modify(|s| {
                    s.issued += 1;
                    s.not_after = Some(not_after);
                    s.last_error = None;
                });
                backoff = options.retry_min;
                retrying = false;
            }
            Err(e) => {
                tracing::warn!(identity = %identity, error = %e, retry_in = ?backoff, "certificate renewal failed");
                tx.send_modify(|s| {
                    s.failures += 1;
                    s.last_error = Some(e);
                    s.next_renewal_in = Some(backoff);
                });
                tokio::time::sleep(backoff).await;
                backoff = backoff
                    .saturating_mul(2)
                    .min(options.retry_max.max(options.retry_min));
                retrying = true;
            }
        }
    }
}

async fn renew_once<F, Fut, E>(
    identity: &SpiffeId,
    certs: &CertSource,
    issue: &mut F,
) -> Result<SystemTime, String>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<CertBundle, E>>,
    E: fmt::Display,
{
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    let csr = key.csr_pem(identity).map_err(|e| e.to_string())?;
    let bundle = issue(csr).await.map_err(|e| format!("issuer: {e}"))?;
    // Check before installing: a certificate for someone else must never be used.
    let staged = CertSource::new();
    staged.set(&bundle, &key).map_err(|e| e.to_string())?;
    match staged.identity() {
        Some(got) if &got == identity => {}
        got => {
            return Err(format!(
                "issuer returned a certificate for {got:?}, expected {identity}"
            ))
        }
    }
    certs.set(&bundle, &key).map_err(|e| e.to_string())?;
    Ok(bundle.not_after)
}

/// The share of the lifetime at which to renew, given a uniform random number in `[0, 1)`.
pub(crate) fn renewal_share(options: &RotatorOptions, uniform: f64) -> f64 {
    let share = options.renew_at + (uniform - 0.5) * options.jitter;
    if share.is_finite() {
        share.clamp(0.05, 0.95)
    } else {
        0.5
    }
}

/// How long from `now` until `not_before + share * lifetime` (zero when already past).
pub(crate) fn renewal_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    share: f64,
) -> Duration {
    let Ok(lifetime) = not_after.duration_since(not_before) else {
        return Duration::ZERO;
    };
    let at = not_before + lifetime.mul_f64(share.clamp(0.0, 1.0));
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_point_is_half_the_lifetime_with_bounded_jitter() {
        let opts = RotatorOptions::default();
        assert_eq!(renewal_share(&opts, 0.5), 0.5);
        assert!((renewal_share(&opts, 0.0) - 0.45).abs() < 1e-9);
        assert!((renewal_share(&opts, 0.999_999) - 0.55).abs() < 1e-6);
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(24 * 3600);
        assert_eq!(
            renewal_delay(nb, na, nb, 0.5),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            renewal_delay(nb, na, nb + Duration::from_secs(13 * 3600), 0.5),
            Duration::ZERO
        );
        // A certificate whose dates are upside down renews at once.
        assert_eq!(renewal_delay(na, nb, nb, 0.5), Duration::ZERO);
    }
}
