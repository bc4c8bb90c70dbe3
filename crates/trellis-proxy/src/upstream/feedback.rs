//! What a try teaches, reported in one place for HTTP tries and opaque TCP connects alike: the
//! balancer learns the endpoint's latency, or the failure penalty when it did not serve (so
//! peak-EWMA steers away from a dead endpoint instead of finding it cheap), and passive health
//! learns the outcome (the service's outlier detection, else default failure accrual, which
//! backs off an endpoint that keeps failing and clears its record when it serves). An ejection
//! or back-off is counted and logged.
use super::pick::Picked;
use crate::balance::InFlight;
use crate::metrics::{Metrics, ServiceLabels};
use crate::resilience::{self, Outcome, Verdict};
use crate::retry::Failure;

/// How a try at an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The endpoint answered (an HTTP response head, an opaque connection established); the
    /// outcome is how the answer counts for passive health.
    Answered(Outcome),
    /// The endpoint did not answer.
    Failed(Failure),
}

/// Reports how a try at `picked` ended (`in_flight` is the try's load guard).
pub fn record(metrics: &Metrics, picked: &Picked, in_flight: &mut InFlight, ended: Ended) {
    let outcome = match ended {
        Ended::Answered(outcome) => {
            in_flight.observe_now();
            outcome
        }
        // The per-try timeout: the endpoint was this slow at least.
        Ended::Failed(Failure::PerTryTimeout) => {
            in_flight.observe_now();
            Outcome::GatewayError
        }
        // No answer is the most expensive answer: peak-EWMA must not see it as fast.
        Ended::Failed(Failure::ConnectFailed) => {
            in_flight.observe_failure();
            Outcome::ConnectFailed
        }
        Ended::Failed(Failure::Reset) => {
            in_flight.observe_failure();
            Outcome::GatewayError
        }
    };
    report(metrics, picked, outcome);
}

/// Feeds an outcome to passive health: the service's outlier detection, or default failure
/// accrual when it has none.
fn report(metrics: &Metrics, picked: &Picked, outcome: Outcome) {
    let (svc, ep) = (picked.service(), picked.endpoint());
    let all = svc
        .groups
        .get(&None)
        .map(|g| g.endpoints.as_slice())
        .unwrap_or_default();
    let family = match resilience::report(svc.outlier.as_ref(), ep, all, outcome) {
        Verdict::Noted => return,
        Verdict::Ejected => {
            tracing::warn!(
                service = %svc.name,
                endpoint = %ep.addr,
                ejections = ep.outlier.ejections(),
                "endpoint ejected by outlier detection"
            );
            &metrics.ejections
        }
        Verdict::BackedOff(backoff) => {
            tracing::warn!(
                service = %svc.name,
                endpoint = %ep.addr,
                ?backoff,
                in_a_row = ep.outlier.accrual.level(),
                "endpoint backed off after consecutive failures"
            );
            &metrics.accrual_backoffs
        }
    };
    family
        .get_or_create(&ServiceLabels {
            service: svc.name.to_string(),
        })
        .inc();
}
