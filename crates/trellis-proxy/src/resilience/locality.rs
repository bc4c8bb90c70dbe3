//! Locality preference and failover: callers prefer endpoints in their own zone and move to the
//! next zone in the configured order (then any zone) when too few endpoints are available where
//! they are. Keeps traffic local (cheaper, faster) without stranding it when a zone degrades.
use super::Tracked;

/// Istio's default: fail over once fewer than ~70% of a zone's endpoints are available
/// (Envoy's overprovisioning factor of 1.4).
const DEFAULT_MIN_HEALTHY_PERCENT: u32 = 70;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locality {
    /// The caller's own zone.
    pub zone: String,
    /// Zones to try next, in order.
    pub failover: Vec<String>,
    pub min_healthy_percent: u32,
}

impl Locality {
    pub fn new(zone: String, policy: Option<&trellis_api::policy::LocalityPolicy>) -> Self {
        Self {
            zone,
            failover: policy.map(|p| p.failover.clone()).unwrap_or_default(),
            min_healthy_percent: policy
                .and_then(|p| p.min_healthy_percent)
                .unwrap_or(DEFAULT_MIN_HEALTHY_PERCENT)
                .min(100),
        }
    }

    /// The zone whose endpoints should serve now: the first of (own zone, failover zones...) with
    /// enough available endpoints; `None` means any zone.
    pub fn choose<'a, E: Tracked>(
        &'a self,
        endpoints: &[E],
        available: impl Fn(usize) -> bool,
    ) -> Option<&'a str> {
        let zones = std::iter::once(&self.zone).chain(self.failover.iter());
        for zone in zones {
            let (mut total, mut up) = (0usize, 0usize);
            for (i, e) in endpoints.iter().enumerate() {
                if e.zone() == Some(zone.as_str()) {
                    total += 1;
                    if available(i) {
                        up += 1;
                    }
                }
            }
            if up > 0 && up * 100 >= total * self.min_healthy_percent as usize {
                return Some(zone.as_str());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::tests::Ep;

    fn ep(zone: &str) -> Ep {
        Ep {
            zone: Some(zone.into()),
            ..Ep::default()
        }
    }

    #[test]
    fn prefers_own_zone_then_fails_over_in_order() {
        let eps = vec![ep("a"), ep("a"), ep("b"), ep("c")];
        let l = Locality {
            zone: "a".into(),
            failover: vec!["c".into(), "b".into()],
            min_healthy_percent: 70,
        };
        assert_eq!(l.choose(&eps, |_| true), Some("a"));
        // One of two in zone a is down: 50% < 70%, fail over to c (the configured order).
        assert_eq!(l.choose(&eps, |i| i != 0), Some("c"));
        assert_eq!(l.choose(&eps, |i| i >= 2 && i != 3), Some("b"));
        assert_eq!(l.choose(&eps, |_| false), None);
    }

    #[test]
    fn unknown_zone_means_any() {
        let eps = vec![ep("a")];
        let l = Locality::new("z".into(), None);
        assert_eq!(l.choose(&eps, |_| true), None);
    }
}
