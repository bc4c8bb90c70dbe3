//! `rateLimit` on a Route rule and `RateLimitPolicy`.
use super::checks::{service_ref_problem, Problems};
use crate::ratelimit::{RateLimit, RateLimitPolicySpec, MAX_RATE};

/// `requestsPerSecond` in 1..=MAX_RATE, `burst` (when written) in 1..=MAX_RATE.
fn bucket(p: &mut Problems, at: &str, rate: u32, burst: Option<u32>) {
    if rate == 0 || rate > MAX_RATE {
        p.add(
            format!("{at}.requestsPerSecond"),
            format!("must be 1..={MAX_RATE}; to stop limiting, remove the limit"),
        );
    }
    if let Some(b) = burst {
        if b == 0 || b > MAX_RATE {
            p.add(
                format!("{at}.burst"),
                format!("must be 1..={MAX_RATE} (absent: requestsPerSecond)"),
            );
        }
    }
}

pub(super) fn rate_limit(p: &mut Problems, at: &str, l: &RateLimit) {
    bucket(p, at, l.requests_per_second, l.burst);
}

pub(super) fn policy(p: &mut Problems, spec: &RateLimitPolicySpec) {
    p.check("spec.service", service_ref_problem(&spec.service));
    if spec.total.is_none() && spec.identity.is_none() && spec.overrides.is_empty() {
        p.add(
            "spec",
            "a RateLimitPolicy needs `total`, `identity` or `overrides`",
        );
    }
    if let Some(t) = &spec.total {
        bucket(p, "spec.total", t.requests_per_second, t.burst);
    }
    if let Some(i) = &spec.identity {
        bucket(p, "spec.identity", i.requests_per_second, i.burst);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, o) in spec.overrides.iter().enumerate() {
        let at = format!("spec.overrides[{i}]");
        bucket(p, &at, o.requests_per_second, o.burst);
        if o.identities.is_empty() {
            p.add(
                format!("{at}.identities"),
                "must list at least one identity",
            );
        }
        for (j, id) in o.identities.iter().enumerate() {
            if !id.starts_with("spiffe://") {
                p.add(
                    format!("{at}.identities[{j}]"),
                    format!("{id:?} is not a SPIFFE ID (spiffe://<trust domain>/...)"),
                );
            } else if !seen.insert(id.as_str()) {
                p.add(
                    format!("{at}.identities[{j}]"),
                    format!("{id:?} is listed in another override already"),
                );
            }
        }
    }
}
