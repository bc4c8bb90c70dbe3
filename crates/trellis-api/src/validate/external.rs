//! `ExternalService`.
use super::checks::{dns_label_problem, Problems};
use crate::external::{ExternalServiceSpec, Resolution};

/// A DNS name of one or more labels, lowercase (`api.example.com`), at most 253 characters.
fn dns_name_problem(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some(format!(
            "{s:?} is not a DNS name (1..=253 characters, e.g. api.example.com)"
        ));
    }
    s.split('.').find_map(dns_label_problem).map(|m| {
        format!("{s:?} is not a DNS name (e.g. api.example.com; no wildcards or ports): {m}")
    })
}

pub(super) fn check(p: &mut Problems, spec: &ExternalServiceSpec) {
    if spec.hosts.is_empty() {
        p.add("spec.hosts", "must list at least one host name");
    }
    let mut seen = std::collections::HashSet::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let at = format!("spec.hosts[{i}]");
        if let Some(m) = dns_name_problem(h) {
            p.add(at, m);
        } else if !seen.insert(h.as_str()) {
            p.add(at, format!("{h:?} is listed twice"));
        }
    }
    if spec.ports.is_empty() {
        p.add("spec.ports", "must list at least one port");
    }
    let mut ports = std::collections::HashSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}].port");
        if port.port == 0 {
            p.add(at, "must be 1..=65535 (got 0)");
        } else if !ports.insert(port.port) {
            p.add(at, format!("{} is listed twice", port.port));
        }
    }
    match spec.resolution {
        Resolution::Static if spec.addresses.is_empty() => p.add(
            "spec.addresses",
            "resolution Static needs at least one IP address to connect to",
        ),
        Resolution::Dns if !spec.addresses.is_empty() => p.add(
            "spec.addresses",
            "resolution DNS resolves the host name; addresses are for resolution Static",
        ),
        _ => {}
    }
    if let Some(tls) = &spec.tls {
        if let Some(f) = &tls.ca_file {
            if f.is_empty() {
                p.add("spec.tls.caFile", "must be a path to PEM roots, or absent");
            }
        }
        if let Some(sni) = &tls.sni {
            p.check("spec.tls.sni", dns_name_problem(sni));
        }
    }
}
