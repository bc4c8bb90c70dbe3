//! `DestinationPolicy`: balancer, connection pool, outlier detection, health checks, locality and
//! subsets.
use super::checks::{
    dns_label_problem, header_name_problem, is_http_token, labels, service_ref_problem,
    zone_problem, Problems,
};
use crate::policy::{
    ConnectionPool, DestinationPolicySpec, HealthCheck, LbAlgorithm, LoadBalancer, LocalityPolicy,
    OutlierDetection,
};
use std::collections::HashMap;

pub(super) fn check(p: &mut Problems, spec: &DestinationPolicySpec) {
    p.check("spec.service", service_ref_problem(&spec.service));
    if let Some(lb) = &spec.load_balancer {
        load_balancer(p, "spec.loadBalancer", lb);
    }
    if let Some(cp) = &spec.connection_pool {
        connection_pool(p, "spec.connectionPool", cp);
    }
    if let Some(od) = &spec.outlier_detection {
        outlier_detection(p, "spec.outlierDetection", od);
    }
    if let Some(hc) = &spec.health_check {
        health_check(p, "spec.healthCheck", hc);
    }
    if let Some(l) = &spec.locality {
        locality(p, "spec.locality", l);
    }
    let mut names = HashMap::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let sp = format!("spec.subsets[{i}]");
        if let Some(m) = dns_label_problem(&s.name) {
            p.add(format!("{sp}.name"), m);
        } else if let Some(first) = names.insert(s.name.as_str(), i) {
            p.add(
                format!("{sp}.name"),
                format!(
                    "subset {:?} is declared twice (also spec.subsets[{first}]); subset names must be unique",
                    s.name
                ),
            );
        }
        if s.labels.is_empty() {
            p.add(
                format!("{sp}.labels"),
                "a subset must select endpoints by at least one label, e.g. `version: v2`",
            );
        }
        labels(p, &format!("{sp}.labels"), &s.labels);
        if let Some(lb) = &s.load_balancer {
            load_balancer(p, &format!("{sp}.loadBalancer"), lb);
        }
    }
}

fn load_balancer(p: &mut Problems, lp: &str, lb: &LoadBalancer) {
    let hp = format!("{lp}.hashOn");
    match (lb.algorithm, &lb.hash_on) {
        (LbAlgorithm::RingHash | LbAlgorithm::Maglev, None) => p.add(
            hp,
            format!(
                "is required with algorithm {:?}: set exactly one of header, cookie and sourceIp",
                lb.algorithm
            ),
        ),
        (LbAlgorithm::RingHash | LbAlgorithm::Maglev, Some(h)) => {
            let set = usize::from(h.header.is_some())
                + usize::from(h.cookie.is_some())
                + usize::from(h.source_ip);
            if set != 1 {
                p.add(
                    hp.as_str(),
                    format!("must set exactly one of header, cookie and sourceIp ({set} are set)"),
                );
            }
            if let Some(name) = &h.header {
                p.check(format!("{hp}.header"), header_name_problem(name));
            }
            if let Some(name) = &h.cookie {
                if !is_http_token(name) {
                    p.add(
                        format!("{hp}.cookie"),
                        format!("{name:?} is not a valid cookie name; use a non-empty token of letters, digits and !#$%&'*+-.^_`|~"),
                    );
                }
            }
        }
        (algorithm, Some(_)) => p.add(
            hp,
            format!(
                "is only used by RingHash and Maglev; remove it or change the algorithm (it is {algorithm:?})"
            ),
        ),
        (_, None) => {}
    }
}

fn connection_pool(p: &mut Problems, cp: &str, c: &ConnectionPool) {
    const HINT: &str = "; omit the field for no limit";
    for (field, v) in [
        ("maxConnections", c.max_connections),
        ("maxPendingRequests", c.max_pending_requests),
        ("maxRequests", c.max_requests),
        ("maxRetries", c.max_retries),
    ] {
        if let Some(v) = v {
            p.at_least_one(format!("{cp}.{field}"), v, HINT);
        }
    }
    if let Some(d) = c.connect_timeout {
        p.positive_duration(format!("{cp}.connectTimeout"), d);
    }
    if let Some(d) = c.idle_timeout {
        p.positive_duration(format!("{cp}.idleTimeout"), d);
    }
}

fn outlier_detection(p: &mut Problems, op: &str, o: &OutlierDetection) {
    const HINT: &str = "; omit the field to disable this trigger";
    for (field, v) in [
        ("consecutive5xxErrors", o.consecutive_5xx_errors),
        ("consecutiveGatewayErrors", o.consecutive_gateway_errors),
        ("consecutiveConnectErrors", o.consecutive_connect_errors),
    ] {
        if let Some(v) = v {
            p.at_least_one(format!("{op}.{field}"), v, HINT);
        }
    }
    for (field, d) in [
        ("interval", o.interval),
        ("baseEjectionTime", o.base_ejection_time),
        ("maxEjectionTime", o.max_ejection_time),
    ] {
        if let Some(d) = d {
            p.positive_duration(format!("{op}.{field}"), d);
        }
    }
    if let (Some(base), Some(max)) = (o.base_ejection_time, o.max_ejection_time) {
        if max < base {
            p.add(
                format!("{op}.maxEjectionTime"),
                format!("{max} must be at least baseEjectionTime ({base})"),
            );
        }
    }
    if let Some(v) = o.max_ejection_percent {
        p.percent_u32(format!("{op}.maxEjectionPercent"), v);
    }
    if let Some(v) = o.min_health_percent {
        p.percent_u32(format!("{op}.minHealthPercent"), v);
    }
}

fn health_check(p: &mut Problems, hp: &str, h: &HealthCheck) {
    let set = usize::from(h.http.is_some())
        + usize::from(h.tcp.is_some())
        + usize::from(h.grpc.is_some());
    if set != 1 {
        p.add(
            hp,
            format!("must set exactly one of http, tcp and grpc ({set} are set)"),
        );
    }
    p.positive_duration(format!("{hp}.interval"), h.interval);
    p.positive_duration(format!("{hp}.timeout"), h.timeout);
    if !h.timeout.is_zero() && !h.interval.is_zero() && h.timeout > h.interval {
        p.add(
            format!("{hp}.timeout"),
            format!("{} must not exceed interval ({})", h.timeout, h.interval),
        );
    }
    p.at_least_one(format!("{hp}.healthyThreshold"), h.healthy_threshold, "");
    p.at_least_one(
        format!("{hp}.unhealthyThreshold"),
        h.unhealthy_threshold,
        "",
    );
    if let Some(http) = &h.http {
        if !http.path.starts_with('/') {
            p.add(
                format!("{hp}.http.path"),
                format!("{:?} must start with '/', e.g. \"/healthz\"", http.path),
            );
        }
        for (k, code) in http.expected_statuses.iter().enumerate() {
            if !(100..=599).contains(code) {
                p.add(
                    format!("{hp}.http.expectedStatuses[{k}]"),
                    format!("must be an HTTP status code between 100 and 599 (got {code})"),
                );
            }
        }
    }
}

fn locality(p: &mut Problems, lp: &str, l: &LocalityPolicy) {
    let mut seen = HashMap::new();
    for (k, zone) in l.failover.iter().enumerate() {
        let path = format!("{lp}.failover[{k}]");
        if let Some(m) = zone_problem(zone) {
            p.add(path, m);
        } else if let Some(first) = seen.insert(zone.as_str(), k) {
            p.add(
                path,
                format!("zone {zone:?} is listed twice (also failover[{first}])"),
            );
        }
    }
    if let Some(v) = l.min_healthy_percent {
        p.percent_u32(format!("{lp}.minHealthyPercent"), v);
    }
}
