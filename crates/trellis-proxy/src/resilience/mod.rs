//! Resilience on the caller's side: passive outlier detection (eject endpoints that keep
//! failing), default failure accrual (back off from an endpoint that keeps failing when no
//! outlier detection is configured), circuit breaking by limits (fail fast with
//! `pool-overflow` instead of queueing without bound), and locality preference with failover.
//!
//! State that must outlive a config reload (who is ejected or backed off, how many requests are
//! in flight) lives in `Arc`s the snapshot builder carries from one snapshot to the next.
pub mod accrual;
pub mod health;
pub mod limits;
pub mod locality;
pub mod outlier;

pub use accrual::{AccrualParams, FailureAccrual};
pub use limits::{LimitState, Limits, Overflow, RequestPermit};
pub use locality::Locality;
pub use outlier::{Outcome, OutlierPolicy, OutlierState};

use crate::balance::Endpoint;
use std::time::Duration;

/// What passive health made of one try's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed that anyone needs to hear about.
    Noted,
    /// The configured outlier detector ejected the endpoint.
    Ejected,
    /// Default failure accrual backed the endpoint off for this long.
    BackedOff(Duration),
}

/// Feeds one try's outcome at `ep`, one of `all`, to the service's outlier detector when it
/// has one, else to default failure accrual.
pub fn report(
    policy: Option<&OutlierPolicy>,
    ep: &Endpoint,
    all: &[Endpoint],
    outcome: Outcome,
) -> Verdict {
    let Some(policy) = policy else {
        return match ep.outlier.accrual.record(&AccrualParams::DEFAULT, outcome) {
            Some(backoff) => Verdict::BackedOff(backoff),
            None => Verdict::Noted,
        };
    };
    let ejected = all.iter().filter(|e| e.outlier.is_ejected()).count();
    if ep.outlier.record(policy, outcome, ejected, all.len()) {
        Verdict::Ejected
    } else {
        Verdict::Noted
    }
}

/// Which of `eps` passive health lets through, when it excludes any: `None` (and no allocation
/// on the request path) when every endpoint may be used. With an outlier detector, ejected
/// endpoints are left out unless fewer than its panic threshold remain; without one, endpoints
/// backed off by failure accrual are left out unless that would leave none.
pub fn passive_filter(policy: Option<&OutlierPolicy>, eps: &[Endpoint]) -> Option<Vec<bool>> {
    let up: Vec<bool> = match policy {
        Some(policy) => {
            let up: Vec<bool> = eps.iter().map(|e| !e.outlier.is_ejected()).collect();
            let available = up.iter().filter(|u| **u).count();
            if !outlier::honour_ejections(policy, available, eps.len()) {
                return None;
            }
            up
        }
        None => {
            if !eps.iter().any(|e| e.outlier.accrual.may_be_backed_off()) {
                return None;
            }
            let up: Vec<bool> = eps
                .iter()
                .map(|e| e.outlier.accrual.is_available())
                .collect();
            if !up.contains(&true) || !up.contains(&false) {
                return None;
            }
            up
        }
    };
    Some(up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn eps(n: u16) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 8000 + i))))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn without_outlier_detection_failure_accrual_decides() {
        let eps = eps(3);
        assert_eq!(passive_filter(None, &eps), None);
        let mut verdicts = Vec::new();
        for _ in 0..5 {
            verdicts.push(report(None, &eps[1], &eps, Outcome::ConnectFailed));
        }
        assert_eq!(verdicts[..4], [Verdict::Noted; 4]);
        assert!(matches!(verdicts[4], Verdict::BackedOff(_)));
        assert_eq!(passive_filter(None, &eps), Some(vec![true, false, true]));
        // Never filter everything out.
        for e in [&eps[0], &eps[2]] {
            for _ in 0..5 {
                report(None, e, &eps, Outcome::ConnectFailed);
            }
        }
        assert_eq!(passive_filter(None, &eps), None);
        // Back-offs end on their own.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(passive_filter(None, &eps), None);
        assert!(eps.iter().all(|e| !e.outlier.accrual.may_be_backed_off()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_outlier_detector_replaces_accrual() {
        let eps = eps(2);
        let policy = OutlierPolicy::from_config(&trellis_api::policy::OutlierDetection {
            consecutive_connect_errors: Some(2),
            max_ejection_percent: Some(50),
            ..Default::default()
        });
        assert_eq!(
            report(Some(&policy), &eps[0], &eps, Outcome::ConnectFailed),
            Verdict::Noted
        );
        assert_eq!(
            report(Some(&policy), &eps[0], &eps, Outcome::ConnectFailed),
            Verdict::Ejected
        );
        assert_eq!(passive_filter(Some(&policy), &eps), Some(vec![false, true]));
        assert_eq!(eps[0].outlier.accrual.level(), 0, "accrual untouched");
    }
}
