//! `MeshConfig` and `Deployment`.
use super::checks::{dns_label_problem, labels, zone_problem, Problems};
use super::{MAX_CERTIFICATE_LIFETIME, MAX_REPLICAS, MIN_CERTIFICATE_LIFETIME};
use crate::address::{Ipv4Cidr, ServiceAddressSpec, MAX_RANGE_PREFIX, MIN_RANGE_PREFIX};
use crate::ca::{CertificateAuthoritySpec, TrustBundleSpec};
use crate::mesh::{DeploymentSpec, MeshConfigSpec};
use crate::meta::ObjectMeta;
use std::net::Ipv4Addr;

pub(super) fn mesh_config(p: &mut Problems, spec: &MeshConfigSpec) {
    trust_domain(p, &spec.trust_domain);
    let life = spec.certificate_lifetime;
    if life < MIN_CERTIFICATE_LIFETIME || life > MAX_CERTIFICATE_LIFETIME {
        p.add(
            "spec.certificateLifetime",
            format!(
                "must be between {MIN_CERTIFICATE_LIFETIME} and {MAX_CERTIFICATE_LIFETIME} (90 days) (got {life})"
            ),
        );
    }
    p.percent(
        "spec.telemetry.tracingSamplePercent",
        spec.telemetry.tracing_sample_percent,
    );
    access_log(p, &spec.telemetry.access_log);
    if let Some(endpoint) = &spec.telemetry.otlp_endpoint {
        otlp_endpoint(p, endpoint);
    }
    service_address_range(p, &spec.service_address_range);
    dns_domain(p, &spec.dns_domain);
}

/// An OTLP/gRPC collector: `http://`, a host and a port. (Sidecars speak plaintext gRPC to it;
/// a collector beside the sidecar or inside the host's network is the expected setup.)
fn otlp_endpoint(p: &mut Problems, endpoint: &str) {
    let ok = endpoint
        .strip_prefix("http://")
        .and_then(|rest| rest.trim_end_matches('/').rsplit_once(':'))
        .is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if !ok {
        p.add(
            "spec.telemetry.otlpEndpoint",
            format!(
                "must be an OTLP/gRPC collector as http://HOST:PORT (TLS to the collector is not supported) (got {endpoint:?})"
            ),
        );
    }
}

fn access_log(p: &mut Problems, log: &crate::access_log::AccessLogConfig) {
    p.percent("spec.telemetry.accessLog.samplePercent", log.sample_percent);
    let output = &log.output;
    if output != crate::access_log::STDOUT && !output.starts_with('/') {
        p.add(
            "spec.telemetry.accessLog.output",
            format!("must be \"stdout\" or an absolute file path (got {output:?})"),
        );
    }
    for (i, f) in log.fields.iter().enumerate() {
        if log.fields[..i].contains(f) {
            p.add(
                format!("spec.telemetry.accessLog.fields[{i}]"),
                format!("{} is listed twice", f.key()),
            );
        }
    }
}

fn service_address_range(p: &mut Problems, text: &str) {
    let path = "spec.serviceAddressRange";
    match text.parse::<Ipv4Cidr>() {
        Err(e) => p.add(path, e.to_string()),
        Ok(c) if !(MIN_RANGE_PREFIX..=MAX_RANGE_PREFIX).contains(&c.prefix()) => p.add(
            path,
            format!(
                "prefix must be between /{MIN_RANGE_PREFIX} and /{MAX_RANGE_PREFIX} (got /{})",
                c.prefix()
            ),
        ),
        Ok(_) => {}
    }
}

/// A DNS name of labels: the sidecar answers names under it.
fn dns_domain(p: &mut Problems, domain: &str) {
    let path = "spec.dnsDomain";
    if domain.is_empty() || domain.len() > 253 {
        p.add(
            path,
            "must be a DNS name of 1 to 253 characters, such as \"cluster.local\"",
        );
        return;
    }
    if let Some(bad) = domain.split('.').find(|l| dns_label_problem(l).is_some()) {
        p.add(
            path,
            format!("label {bad:?} is not a DNS label (lowercase letters, digits and '-', 1 to 63 characters)"),
        );
    }
}

pub(super) fn service_address(p: &mut Problems, spec: &ServiceAddressSpec) {
    if spec.address.parse::<Ipv4Addr>().is_err() {
        p.add(
            "spec.address",
            format!("{:?} is not an IPv4 address", spec.address),
        );
    }
}

pub(super) fn trust_bundle(p: &mut Problems, spec: &TrustBundleSpec) {
    trust_domain(p, &spec.trust_domain);
    if spec.roots.is_empty() {
        p.add("spec.roots", "must hold at least one root certificate");
    }
    for (i, root) in spec.roots.iter().enumerate() {
        if !root.contains("-----BEGIN CERTIFICATE-----") {
            p.add(format!("spec.roots[{i}]"), "is not a PEM certificate");
        }
    }
}

pub(super) fn certificate_authority(p: &mut Problems, spec: &CertificateAuthoritySpec) {
    trust_domain(p, &spec.trust_domain);
    if !spec.signers.iter().any(|s| s.id == spec.active) {
        p.add(
            "spec.active",
            format!("{:?} names no signer of spec.signers", spec.active),
        );
    }
}

fn trust_domain(p: &mut Problems, td: &str) {
    if td.is_empty() {
        p.add(
            "spec.trustDomain",
            "must not be empty; use a DNS name such as \"cluster.local\"",
        );
    } else if td.len() > 255
        || !td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
    {
        p.add(
            "spec.trustDomain",
            format!(
                "{td:?} is not a valid trust domain; use a DNS name of lowercase letters, digits, '.', '-' and '_' (no scheme, '/', ':' or spaces), e.g. \"cluster.local\""
            ),
        );
    }
}

pub(super) fn deployment(p: &mut Problems, meta: &ObjectMeta, spec: &DeploymentSpec) {
    // Instances are named `<name>-<index>` and must still be valid names.
    let longest = format!("{}-{}", meta.name, MAX_REPLICAS.saturating_sub(1));
    if !meta.name.is_empty() && meta.name.len() <= 63 && longest.len() > 63 {
        p.add(
            "metadata.name",
            format!(
                "is {} characters long; a Deployment's name may have at most {} so that its instances (\"{}-<index>\") are valid names",
                meta.name.len(),
                63 - (longest.len() - meta.name.len()),
                meta.name
            ),
        );
    }
    // Names a Service of the manifest, so a plain name, not a dotted reference.
    p.check("spec.service", dns_label_problem(&spec.service));
    if !(1..=MAX_REPLICAS).contains(&spec.replicas) {
        p.add(
            "spec.replicas",
            format!(
                "must be between 1 and {MAX_REPLICAS} (got {})",
                spec.replicas
            ),
        );
    }
    labels(p, "spec.labels", &spec.labels);
    if let Some(zone) = &spec.zone {
        p.check("spec.zone", zone_problem(zone));
    }
    if let Some(v) = &spec.demo_app.version {
        if v.is_empty() {
            p.add(
                "spec.demoApp.version",
                "must not be empty; omit it to use the `version` label",
            );
        }
    }
    let rate = spec.demo_app.error_rate;
    if !(0.0..=1.0).contains(&rate) {
        p.add(
            "spec.demoApp.errorRate",
            format!("must be a fraction between 0.0 and 1.0, e.g. 0.05 for 5% (got {rate})"),
        );
    }
}
