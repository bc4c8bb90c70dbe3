//! Local rate limiting: token buckets checked on the request path.
//!
//! - **Outbound, per route rule** (`rateLimit` on a Route rule): one bucket per rule in each
//!   caller's sidecar, checked once the rule is chosen and before faults, retries or upstream
//!   work. Local, as Envoy's `local_ratelimit`: N callers admit N times the rate.
//! - **Inbound, per service** (`RateLimitPolicy`): the service's own sidecars check, after
//!   authentication and authorization, a bucket per client identity (the mTLS peer's SPIFFE
//!   ID; callers without one share a single bucket) and then the `total` bucket. After
//!   authorization, so a caller that is denied anyway spends no tokens and cannot drain the
//!   budget of callers that are allowed; identity before total, so a caller over its own
//!   share is refused without taking a token from the total the others share (what makes the
//!   share fair).
//!
//! Over the limit a request is answered `429` with `trellis-error: rate-limited` and
//! `retry-after` (whole seconds until the bucket holds a token, at least 1); a gRPC caller gets
//! `RESOURCE_EXHAUSTED`. In `Shadow` mode it goes through and is only counted. Every decision
//! on a limited path is counted in `trellis_rate_limited_total{direction, service, route,
//! scope, mode, decision}`; a path with no limit costs one `Option` check.
//!
//! The bucket is a small implementation rather than a crate (`governor`): what is needed is
//! one refill-and-take under a mutex per bucket (a few tens of nanoseconds, uncontended in the
//! common case) plus the time until the next token for `retry-after`, and the per-identity
//! table with a cap; a dependency tree for that would cost more build time than it saves code.
//! Tokens are `f64`, refilled from the elapsed time on each take, so no timer runs.
//!
//! The per-identity table holds at most [`MAX_IDENTITIES`] buckets (identities are bounded by
//! the mesh's workloads). Past that, identities not yet in the table share one overflow bucket
//! with the per-identity rate: they are still limited, only no longer apart from each other.
//!
//! Buckets live in the compiled config and are handed on from snapshot to snapshot: a Route
//! rule's bucket while the rule keeps its place, name and limit (a change of endpoints or
//! policy does not refill it; a full rebuild, on a MeshConfig change, does), an inbound
//! policy's buckets while the policy is unchanged.
use crate::error::{ProxyError, Reason};
use crate::metrics::{Metrics, RateLimitLabels};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_api::ratelimit::{RateLimit, RateLimitMode, RateLimitPolicySpec};

/// Most per-identity buckets one inbound policy keeps.
pub const MAX_IDENTITIES: usize = 10_000;

/// A token bucket: `burst` tokens when full, refilled at `rate` per second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// (tokens, when they were counted).
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            state: Mutex::new((burst, now)),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst);
        s.1 = now.max(s.1);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - s.0) / self.rate))
        }
    }
}

/// `retry-after` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

fn refused(scope: &str, what: &str, wait: Duration) -> ProxyError {
    let mut e = ProxyError::new(
        Reason::RateLimited,
        format!("over the {scope} rate limit of {what}"),
    );
    e.retry_after = Some(retry_after_secs(wait));
    e
}

fn count(
    metrics: &Metrics,
    direction: &'static str,
    service: &Arc<str>,
    route: &Arc<str>,
    scope: &'static str,
    mode: RateLimitMode,
    limited: bool,
) {
    metrics
        .rate_limited
        .get_or_create(&RateLimitLabels {
            direction,
            service: service.clone(),
            route: route.clone(),
            scope,
            mode: mode.as_str(),
            decision: if limited { "limited" } else { "admitted" },
        })
        .inc();
}

/// The bucket of one Route rule.
#[derive(Debug)]
pub struct RouteLimit {
    config: RateLimit,
    bucket: TokenBucket,
    mode: RateLimitMode,
}

impl RouteLimit {
    pub fn new(l: &RateLimit) -> Self {
        Self {
            config: *l,
            bucket: TokenBucket::new(l.requests_per_second, l.effective_burst(), Instant::now()),
            mode: l.mode,
        }
    }

    /// What the bucket was built from.
    pub fn config(&self) -> &RateLimit {
        &self.config
    }

    /// Admits a request to `service` by rule `route`, or refuses it (never in shadow mode).
    pub fn check(
        &self,
        metrics: &Metrics,
        service: &Arc<str>,
        route: &Arc<str>,
    ) -> Result<(), ProxyError> {
        let taken = self.bucket.try_take(Instant::now());
        count(
            metrics,
            "outbound",
            service,
            route,
            "route",
            self.mode,
            taken.is_err(),
        );
        match taken {
            Err(wait) if self.mode.is_enforce() => Err(refused(
                "route",
                &format!("{} req/s on route {route}", self.bucket.rate),
                wait,
            )),
            _ => Ok(()),
        }
    }
}

/// The limits of one `RateLimitPolicy` on the inbound side.
#[derive(Debug)]
pub struct InboundLimit {
    /// What it was built from, so an unchanged policy keeps its buckets across snapshots.
    pub spec: RateLimitPolicySpec,
    /// The policy's name, the `route` label of its counts.
    name: Arc<str>,
    total: Option<TokenBucket>,
    identities: Mutex<HashMap<Arc<str>, Arc<TokenBucket>>>,
    /// Callers without an mTLS identity, together.
    anonymous: Option<TokenBucket>,
    /// Identities past [`MAX_IDENTITIES`], together.
    overflow: Option<TokenBucket>,
}

impl InboundLimit {
    pub fn new(name: &str, spec: &RateLimitPolicySpec) -> Self {
        let now = Instant::now();
        let bucket = |b: &trellis_api::ratelimit::Bucket| {
            TokenBucket::new(b.requests_per_second, b.effective_burst(), now)
        };
        Self {
            spec: spec.clone(),
            name: Arc::from(name),
            total: spec.total.as_ref().map(bucket),
            identities: Mutex::new(HashMap::new()),
            anonymous: spec.identity.as_ref().map(bucket),
            overflow: spec.identity.as_ref().map(bucket),
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The identity's own rate and burst: its override, else `identity`; `None` when neither.
    fn share_of(&self, id: &str) -> Option<(u32, u32)> {
        if let Some(o) = self
            .spec
            .overrides
            .iter()
            .find(|o| o.identities.iter().any(|i| i == id))
        {
            return Some((
                o.requests_per_second,
                o.burst.unwrap_or(o.requests_per_second).max(1),
            ));
        }
        self.spec
            .identity
            .map(|b| (b.requests_per_second, b.effective_burst()))
    }

    /// Takes from the caller's own bucket; `Ok` when it has none.
    fn take_identity(&self, peer: Option<&Arc<str>>, now: Instant) -> Result<bool, Duration> {
        let Some(id) = peer else {
            return match &self.anonymous {
                Some(b) => b.try_take(now).map(|()| true),
                None => Ok(false),
            };
        };
        let bucket = {
            let mut table = self.identities.lock().unwrap_or_else(|e| e.into_inner());
            match table.get(id) {
                Some(b) => Some(b.clone()),
                None => match self.share_of(id) {
                    None => None,
                    Some((rate, burst)) if table.len() < MAX_IDENTITIES => {
                        let b = Arc::new(TokenBucket::new(rate, burst, now));
                        table.insert(id.clone(), b.clone());
                        Some(b)
                    }
                    Some(_) => {
                        drop(table);
                        return match &self.overflow {
                            Some(b) => b.try_take(now).map(|()| true),
                            None => Ok(false),
                        };
                    }
                },
            }
        };
        match bucket {
            Some(b) => b.try_take(now).map(|()| true),
            None => Ok(false),
        }
    }

    /// Admits a request from `peer` to `service`, or refuses it (never in shadow mode).
    pub fn check(
        &self,
        metrics: &Metrics,
        service: &Arc<str>,
        peer: Option<&Arc<str>>,
    ) -> Result<(), ProxyError> {
        let now = Instant::now();
        let mode = self.spec.mode;
        match self.take_identity(peer, now) {
            Ok(true) => count(
                metrics, "inbound", service, &self.name, "identity", mode, false,
            ),
            Ok(false) => {}
            Err(wait) => {
                count(
                    metrics, "inbound", service, &self.name, "identity", mode, true,
                );
                if mode.is_enforce() {
                    let who = peer.map_or("callers without an mTLS identity", |p| &**p);
                    return Err(refused("per-identity", who, wait));
                }
            }
        }
        if let Some(total) = &self.total {
            let taken = total.try_take(now);
            count(
                metrics,
                "inbound",
                service,
                &self.name,
                "total",
                mode,
                taken.is_err(),
            );
            if let Err(wait) = taken {
                if mode.is_enforce() {
                    return Err(refused("total", &format!("service {service}"), wait));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_admits_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // One second later: ten more, not more than the burst though.
        let t1 = t0 + Duration::from_secs(1);
        let admitted = (0..20).filter(|_| b.try_take(t1).is_ok()).count();
        assert_eq!(admitted, 5, "refill is capped at the burst");
        let t2 = t1 + Duration::from_millis(350);
        let admitted = (0..20).filter(|_| b.try_take(t2).is_ok()).count();
        assert_eq!(admitted, 3, "3.5 tokens in 350 ms");
    }

    #[test]
    fn over_a_run_the_rate_holds() {
        let t0 = Instant::now();
        let b = TokenBucket::new(20, 5, t0);
        // 1000 attempts over 3 s, every 3 ms.
        let admitted = (0..1000)
            .filter(|i| b.try_take(t0 + Duration::from_millis(3 * i)).is_ok())
            .count();
        // burst + rate × elapsed = 5 + 20 × 2.997
        assert!((64..=65).contains(&admitted), "{admitted}");
    }

    #[test]
    fn time_going_backwards_takes_nothing_away() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let b = TokenBucket::new(1, 1, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0 - Duration::from_secs(2)).is_err());
        assert!(b.try_take(t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    fn policy(text: &str) -> RateLimitPolicySpec {
        let set = trellis_api::parse_documents(
            "t",
            &format!("apiVersion: trellis.dev/v1\nkind: RateLimitPolicy\nmetadata: {{name: p}}\nspec: {text}\n"),
        )
        .expect("parses");
        let p = set.rate_limit_policies().next().unwrap().spec.clone();
        p
    }

    #[test]
    fn identities_have_their_own_buckets_and_the_total_is_shared() {
        let m = Metrics::new();
        let svc: Arc<str> = Arc::from("web");
        let l = InboundLimit::new(
            "p",
            &policy("{service: web, total: {requestsPerSecond: 1, burst: 3}, identity: {requestsPerSecond: 1, burst: 2}}"),
        );
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("spiffe://t/a"), Arc::from("spiffe://t/b"));
        assert!(l.check(&m, &svc, Some(&a)).is_ok());
        assert!(l.check(&m, &svc, Some(&a)).is_ok());
        let e = l
            .check(&m, &svc, Some(&a))
            .expect_err("a is over its share");
        assert_eq!(e.reason, Reason::RateLimited);
        assert_eq!(e.retry_after, Some(1));
        // a's refusal took nothing from the total: b still gets one of its three.
        assert!(l.check(&m, &svc, Some(&b)).is_ok());
        let e = l.check(&m, &svc, Some(&b)).expect_err("the total is spent");
        assert!(e.detail.contains("total"), "{}", e.detail);
    }

    #[test]
    fn overrides_and_shadow_mode() {
        let m = Metrics::new();
        let svc: Arc<str> = Arc::from("web");
        let l = InboundLimit::new(
            "p",
            &policy("{service: web, mode: Shadow, identity: {requestsPerSecond: 1}, overrides: [{identities: ['spiffe://t/big'], requestsPerSecond: 100}]}"),
        );
        let big: Arc<str> = Arc::from("spiffe://t/big");
        for _ in 0..50 {
            assert!(l.check(&m, &svc, Some(&big)).is_ok());
        }
        // Shadow: over its share, still admitted; counted as limited.
        for _ in 0..3 {
            assert!(l.check(&m, &svc, None).is_ok());
        }
        let text = m.encode();
        assert!(
            text.contains("decision=\"limited\"") && text.contains("mode=\"shadow\""),
            "{text}"
        );
    }
}
