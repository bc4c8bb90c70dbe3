//! `Service` and `Workload`.
use super::checks::{
    dns_label_problem, has_space_or_control, labels, service_ref_problem, zone_problem, Problems,
};
use crate::meta::ObjectMeta;
use crate::service::{EgressTarget, ServiceSpec, WorkloadSpec};
use std::collections::HashMap;

pub(super) fn service(p: &mut Problems, spec: &ServiceSpec) {
    if spec.ports.is_empty() {
        p.add(
            "spec.ports",
            "a service needs at least one port, e.g. `- port: 8080`",
        );
    }
    let mut numbers = HashMap::new();
    let mut names = HashMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        if port.port == 0 {
            p.add(
                format!("{path}.port"),
                "must be between 1 and 65535 (got 0)",
            );
        } else if let Some(first) = numbers.insert(port.port, i) {
            p.add(
                format!("{path}.port"),
                format!(
                    "port {} is declared twice (also spec.ports[{first}]); port numbers must be unique",
                    port.port
                ),
            );
        }
        if !port.name.is_empty() {
            if let Some(m) = dns_label_problem(&port.name) {
                p.add(format!("{path}.name"), m);
            } else if let Some(first) = names.insert(port.name.as_str(), i) {
                p.add(
                    format!("{path}.name"),
                    format!(
                        "port name {:?} is used twice (also spec.ports[{first}]); port names must be unique",
                        port.name
                    ),
                );
            }
        }
        for (j, token) in port.upgrades.iter().flatten().enumerate() {
            let at = format!("{path}.upgrades[{j}]");
            if token.eq_ignore_ascii_case("h2c") {
                p.add(
                    at,
                    "h2c cannot be permitted: an h2c upgrade would carry HTTP/2 requests past the \
                     sidecar's authorization; use `protocol: http2` for HTTP/2 without TLS",
                );
            } else if token.is_empty()
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
            {
                p.add(
                    at,
                    format!("{token:?} is not an HTTP upgrade token, e.g. `websocket`"),
                );
            }
        }
    }
    labels(p, "spec.selector", &spec.selector);
    egress(p, spec.egress.as_deref().unwrap_or_default());
}

/// Every entry must read as an [`EgressTarget`]; the problem names the entry.
fn egress(p: &mut Problems, entries: &[String]) {
    for (i, entry) in entries.iter().enumerate() {
        if let Err(e) = entry.parse::<EgressTarget>() {
            p.add(format!("spec.egress[{i}]"), e.to_string());
        }
    }
}

pub(super) fn workload(p: &mut Problems, meta: &ObjectMeta, spec: &WorkloadSpec) {
    match &spec.service {
        Some(s) => p.check("spec.service", service_ref_problem(s)),
        None if meta.labels.is_empty() => p.add(
            "spec.service",
            "a workload needs spec.service or metadata.labels; without either no service can select it",
        ),
        None => {}
    }
    if spec.address.parse::<std::net::IpAddr>().is_err() {
        p.add(
            "spec.address",
            format!(
                "{:?} is not an IP address; use an IPv4 or IPv6 literal such as \"10.0.0.7\" or \"fd00::7\" (no port, no host name)",
                spec.address
            ),
        );
    }
    if spec.port == 0 {
        p.add("spec.port", "must be between 1 and 65535 (got 0)");
    }
    if spec.app_port == Some(0) {
        p.add("spec.appPort", "must be between 1 and 65535 (got 0)");
    }
    if let Some(zone) = &spec.zone {
        p.check("spec.zone", zone_problem(zone));
    }
    if let Some(id) = &spec.identity {
        if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() || has_space_or_control(id)
        {
            p.add(
                "spec.identity",
                format!("{id:?} is not a SPIFFE ID; use spiffe://<trust domain>/<path>, e.g. \"spiffe://cluster.local/ns/default/sa/web\""),
            );
        }
    }
    if spec.weight == Some(0) {
        p.add(
            "spec.weight",
            "must be at least 1 (got 0); mark the workload Unhealthy or remove it to take it out of rotation",
        );
    }
}
