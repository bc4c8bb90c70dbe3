//! Passive outlier detection, as Envoy and Istio do it: an endpoint that returns N consecutive
//! 5xx (or gateway errors, or connect failures) is ejected for `baseEjectionTime × ejections`,
//! capped at `maxEjectionTime`; at most `maxEjectionPercent` of a service's endpoints are
//! ejected at once (at least one, as Envoy); and below `minHealthPercent` available endpoints the
//! panic threshold ignores ejection altogether, because sending to a sick endpoint beats sending
//! nowhere.
//!
//! Ejection expires lazily: an endpoint is available again as soon as its time is up, with no
//! timer task. Its ejection count stays, so a repeat offender is ejected for longer next time;
//! a success after it returns resets its consecutive-failure counters.
//!
//! A gRPC answer is judged by the `grpc-status` of a trailers-only answer (the only place it can
//! be read before the body): `UNAVAILABLE` and `DEADLINE_EXCEEDED` are gateway errors,
//! `INTERNAL`, `UNKNOWN` and `DATA_LOSS` server errors, as their HTTP mappings would be.
use super::accrual::FailureAccrual;
use crate::grpc;
use http::{HeaderMap, StatusCode};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use trellis_api::policy::OutlierDetection;

const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// What one try at an endpoint came to, from the outlier detector's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than a gateway error.
    ServerError,
    /// 502, 503 or 504 from upstream, a reset, or a timeout.
    GatewayError,
    /// The connection could not be made.
    ConnectFailed,
}

impl Outcome {
    /// How an answer the upstream gave counts (see the module docs for gRPC).
    pub fn of_response(status: StatusCode, headers: &HeaderMap) -> Outcome {
        match status.as_u16() {
            502..=504 => return Outcome::GatewayError,
            500..=599 => return Outcome::ServerError,
            _ => {}
        }
        if !grpc::is_grpc(headers) {
            return Outcome::Success;
        }
        match grpc::status_of(headers) {
            Some(grpc::Code::Unavailable | grpc::Code::DeadlineExceeded) => Outcome::GatewayError,
            Some(grpc::Code::Internal | grpc::Code::Unknown | grpc::Code::DataLoss) => {
                Outcome::ServerError
            }
            _ => Outcome::Success,
        }
    }
}

/// A service's outlier detection settings, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub consecutive_connect: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl OutlierPolicy {
    pub fn from_config(c: &OutlierDetection) -> Self {
        Self {
            // Istio's default when outlier detection is configured at all.
            consecutive_5xx: c.consecutive_5xx_errors.or(
                if c.consecutive_gateway_errors.is_none() && c.consecutive_connect_errors.is_none()
                {
                    Some(5)
                } else {
                    None
                },
            ),
            consecutive_gateway: c.consecutive_gateway_errors,
            consecutive_connect: c.consecutive_connect_errors,
            base_ejection: c
                .base_ejection_time
                .map_or(DEFAULT_BASE_EJECTION, |d| d.as_std()),
            max_ejection: c
                .max_ejection_time
                .map_or(DEFAULT_MAX_EJECTION, |d| d.as_std()),
            max_ejection_percent: c
                .max_ejection_percent
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT)
                .min(100),
            min_health_percent: c.min_health_percent.unwrap_or(0).min(100),
        }
    }

    /// How many of `n` endpoints may be ejected at once.
    pub fn max_ejected(&self, n: usize) -> usize {
        if self.max_ejection_percent == 0 || n == 0 {
            return 0;
        }
        (n * self.max_ejection_percent as usize / 100).max(1)
    }
}

/// One endpoint's passive health, shared across snapshots: the configured outlier detector's
/// counters and ejection, and the default failure accrual used when none is configured.
#[derive(Debug, Default)]
pub struct OutlierState {
    pub accrual: FailureAccrual,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_connect: AtomicU32,
    ejections: AtomicU64,
    ejected_until: Mutex<Option<Instant>>,
}

impl OutlierState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the endpoint is ejected right now.
    pub fn is_ejected(&self) -> bool {
        match self.ejected_until.lock() {
            Ok(until) => until.is_some_and(|t| Instant::now() < t),
            Err(_) => false,
        }
    }

    /// Times this endpoint has been ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records an outcome; returns true when this outcome ejected the endpoint. `ejected_now` is
    /// how many of the service's endpoints are ejected at this moment, `total` how many it has.
    pub fn record(
        &self,
        policy: &OutlierPolicy,
        outcome: Outcome,
        ejected_now: usize,
        total: usize,
    ) -> bool {
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::Relaxed) + 1;
        let (n5xx, ngw, nconn) = match outcome {
            Outcome::Success => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                self.consecutive_connect.store(0, Ordering::Relaxed);
                return false;
            }
            Outcome::ServerError => {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                (bump(&self.consecutive_5xx), 0, 0)
            }
            Outcome::GatewayError => (
                bump(&self.consecutive_5xx),
                bump(&self.consecutive_gateway),
                0,
            ),
            Outcome::ConnectFailed => (
                bump(&self.consecutive_5xx),
                bump(&self.consecutive_gateway),
                bump(&self.consecutive_connect),
            ),
        };
        let hit = |limit: Option<u32>, n: u32| limit.is_some_and(|l| n >= l);
        let tripped = hit(policy.consecutive_5xx, n5xx)
            || hit(policy.consecutive_gateway, ngw)
            || hit(policy.consecutive_connect, nconn);
        if !tripped || self.is_ejected() || ejected_now >= policy.max_ejected(total) {
            return false;
        }
        self.eject(policy)
    }

    fn eject(&self, policy: &OutlierPolicy) -> bool {
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let factor = u32::try_from(times).unwrap_or(u32::MAX);
        let time = policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection.max(policy.base_ejection));
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_connect.store(0, Ordering::Relaxed);
        match self.ejected_until.lock() {
            Ok(mut until) => {
                *until = Some(Instant::now() + time);
                true
            }
            Err(_) => false,
        }
    }
}

/// Whether ejections should be honoured for a set where `available` of `total` endpoints are
/// not ejected: false below the panic threshold.
pub fn honour_ejections(policy: &OutlierPolicy, available: usize, total: usize) -> bool {
    if total == 0 || available == 0 {
        return false;
    }
    available * 100 >= total * policy.min_health_percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: Some(3),
            consecutive_gateway: None,
            consecutive_connect: Some(1),
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: 50,
            min_health_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_errors_for_base_time() {
        let p = policy();
        let s = OutlierState::new();
        assert!(!s.record(&p, Outcome::ServerError, 0, 4));
        assert!(!s.record(&p, Outcome::ServerError, 0, 4));
        assert!(s.record(&p, Outcome::ServerError, 0, 4));
        assert!(s.is_ejected());
        tokio::time::advance(Duration::from_millis(9_900)).await;
        assert!(s.is_ejected());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!s.is_ejected(), "back after the base ejection time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let p = policy();
        let s = OutlierState::new();
        s.record(&p, Outcome::ServerError, 0, 4);
        s.record(&p, Outcome::ServerError, 0, 4);
        s.record(&p, Outcome::Success, 0, 4);
        assert!(!s.record(&p, Outcome::ServerError, 0, 4));
        assert!(!s.is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn repeat_offenders_stay_out_longer_up_to_the_cap() {
        let p = policy();
        let s = OutlierState::new();
        assert!(s.record(&p, Outcome::ConnectFailed, 0, 4));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!s.is_ejected());
        assert!(s.record(&p, Outcome::ConnectFailed, 0, 4));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(s.is_ejected(), "second ejection lasts 2 × base");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!s.is_ejected());
        assert!(s.record(&p, Outcome::ConnectFailed, 0, 4));
        tokio::time::advance(Duration::from_secs(24)).await;
        assert!(s.is_ejected());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!s.is_ejected(), "third ejection capped at 25 s, not 30 s");
        assert_eq!(s.ejections(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_is_respected_but_one_is_always_allowed() {
        let p = policy();
        assert_eq!(p.max_ejected(4), 2);
        assert_eq!(p.max_ejected(1), 1);
        let s = OutlierState::new();
        assert!(
            !s.record(&p, Outcome::ConnectFailed, 2, 4),
            "two already out of four"
        );
        assert!(!s.is_ejected());
        let zero = OutlierPolicy {
            max_ejection_percent: 0,
            ..policy()
        };
        assert!(!s.record(&zero, Outcome::ConnectFailed, 0, 4));
    }

    #[test]
    fn panic_threshold() {
        let p = policy();
        assert!(honour_ejections(&p, 2, 4));
        assert!(
            !honour_ejections(&p, 1, 4),
            "below 50% healthy: use everything"
        );
        assert!(!honour_ejections(&p, 0, 4));
    }

    #[test]
    fn answers_are_judged_by_status_then_grpc_status() {
        let judge = |status: u16, grpc_status: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(g) = grpc_status {
                h.insert(
                    "content-type",
                    http::HeaderValue::from_static("application/grpc"),
                );
                h.insert("grpc-status", http::HeaderValue::from_static(g));
            }
            Outcome::of_response(StatusCode::from_u16(status).unwrap(), &h)
        };
        assert_eq!(judge(200, None), Outcome::Success);
        assert_eq!(judge(404, None), Outcome::Success);
        assert_eq!(judge(500, None), Outcome::ServerError);
        assert_eq!(judge(503, None), Outcome::GatewayError);
        assert_eq!(judge(200, Some("0")), Outcome::Success);
        assert_eq!(judge(200, Some("5")), Outcome::Success);
        assert_eq!(judge(200, Some("14")), Outcome::GatewayError);
        assert_eq!(judge(200, Some("4")), Outcome::GatewayError);
        assert_eq!(judge(200, Some("13")), Outcome::ServerError);
        assert_eq!(judge(200, Some("junk")), Outcome::ServerError);
    }

    #[test]
    fn defaults_follow_istio() {
        let p = OutlierPolicy::from_config(&OutlierDetection::default());
        assert_eq!(p.consecutive_5xx, Some(5));
        assert_eq!(p.base_ejection, Duration::from_secs(30));
        assert_eq!(p.max_ejection_percent, 10);
    }
}
