//! Local rate limiting: a token bucket (`requestsPerSecond`, `burst`) on a Route rule, enforced
//! by each caller's sidecar on the outbound side, and `RateLimitPolicy`, enforced by a
//! service's own sidecars on the inbound side — a total bucket and a fair share per client
//! identity (Linkerd's `HTTPLocalRateLimitPolicy`).
//!
//! Every bucket is local to one sidecar, as Envoy's `local_ratelimit`: three callers each with
//! `requestsPerSecond: 100` may send 300 req/s between them, and a service with three replicas
//! admits three times its policy's rate. There is no global (shared-counter) limiter.
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Largest `requestsPerSecond` (and `burst`) a limit may name.
pub const MAX_RATE: u32 = 1_000_000;

/// A token bucket: `burst` tokens, refilled at `requestsPerSecond`; each request takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: u32,
    /// Tokens the bucket holds when full: how many requests may arrive at once after a quiet
    /// spell. Absent: `requestsPerSecond` (one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "RateLimitMode::is_enforce")]
    pub mode: RateLimitMode,
}

impl RateLimit {
    /// The bucket's size: `burst`, or one second's worth of requests.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second).max(1)
    }
}

/// What happens to a request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RateLimitMode {
    /// Refused: `429`, `trellis-error: rate-limited`, `retry-after`.
    #[default]
    Enforce,
    /// Let through, only counted (`trellis_rate_limited_total{mode="shadow"}`): to learn what
    /// a limit would refuse before enforcing it.
    Shadow,
}

impl RateLimitMode {
    pub fn is_enforce(&self) -> bool {
        *self == RateLimitMode::Enforce
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitMode::Enforce => "enforce",
            RateLimitMode::Shadow => "shadow",
        }
    }
}

/// `RateLimitPolicy`: how fast a service's own sidecars admit requests, on the inbound side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitPolicy {
    pub metadata: ObjectMeta,
    pub spec: RateLimitPolicySpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// The service whose inbound side enforces this policy.
    pub service: String,
    /// One bucket for every caller together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Bucket>,
    /// One bucket per client identity (the caller's mTLS SPIFFE ID; callers without one share
    /// a single bucket): a fair share, so one noisy caller cannot starve the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Bucket>,
    /// Per-identity rates for the identities listed, instead of `identity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<IdentityOverride>,
    #[serde(default, skip_serializing_if = "RateLimitMode::is_enforce")]
    pub mode: RateLimitMode,
}

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bucket {
    pub requests_per_second: u32,
    /// Absent: `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Bucket {
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second).max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityOverride {
    /// SPIFFE IDs, exact.
    pub identities: Vec<String>,
    pub requests_per_second: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}
