//! Gateway API kinds: field-level checks, with paths in the spec's own spelling
//! (`spec.rules[0].filters[1].requestRedirect.statusCode`).
use super::checks::{
    dns_label_problem, has_space_or_control, header_name_problem, header_value_problem,
    method_problem, regex_problem, Problems,
};
use crate::gateway_api::gateway::{GatewaySpec, ListenerProtocol, TLSModeType};
use crate::gateway_api::grpc_route::{GRPCRouteFilterType, GRPCRouteSpec};
use crate::gateway_api::http_route::{
    HTTPPathModifier, HTTPPathModifierType, HTTPRouteFilter, HTTPRouteFilterType, HTTPRouteSpec,
};
use crate::gateway_api::tls_route::TLSRouteSpec;
use crate::gateway_api::{
    BackendRef, HTTPHeaderFilter, HTTPRequestMirrorFilter, HeaderMatch, ParentReference,
    StringMatchType, MAX_WEIGHT,
};
use crate::route::PathMatchType;
use std::collections::HashSet;

/// A host name as Gateway API allows it: DNS labels, optionally `*.` first; no port, no IP.
fn hostname_problem(h: &str) -> Option<String> {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    if rest.is_empty() || h.len() > 253 {
        return Some(format!(
            "{h:?} is not a host name (e.g. example.com or *.example.com)"
        ));
    }
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!("{h:?} is an IP address; a host name is required"));
    }
    rest.split('.').find_map(dns_label_problem).map(|m| {
        format!("{h:?} is not a host name (e.g. example.com or *.example.com; no port): {m}")
    })
}

fn hostnames(p: &mut Problems, list: &[String]) {
    for (i, h) in list.iter().enumerate() {
        p.check(format!("spec.hostnames[{i}]"), hostname_problem(h));
    }
}

fn parent_refs(p: &mut Problems, refs: &[ParentReference]) {
    if refs.len() > 32 {
        p.add("spec.parentRefs", "at most 32 parentRefs");
    }
    for (i, r) in refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        p.check(format!("{at}.name"), dns_label_problem(&r.name));
        if let Some(ns) = &r.namespace {
            p.check(format!("{at}.namespace"), dns_label_problem(ns));
        }
        if r.port == Some(0) {
            p.add(format!("{at}.port"), "must be between 1 and 65535 (got 0)");
        }
        if r.kind() == "Service" && r.group() != "" {
            p.add(
                format!("{at}.group"),
                format!(
                    "a Service parent is in the core group: write group: \"\" (got {:?})",
                    r.group()
                ),
            );
        }
        if r.is_service() && r.section_name.is_some() {
            p.add(
                format!("{at}.sectionName"),
                "a Service parent has no sections; name a port with `port`",
            );
        }
    }
}

fn backend_ref(p: &mut Problems, at: &str, b: &BackendRef, mirror: bool) {
    p.check(format!("{at}.name"), dns_label_problem(&b.name));
    if let Some(ns) = &b.namespace {
        p.check(format!("{at}.namespace"), dns_label_problem(ns));
    }
    if b.is_service() && b.port.is_none() {
        p.add(
            format!("{at}.port"),
            "is required when referring to a Service",
        );
    }
    if b.port == Some(0) {
        p.add(format!("{at}.port"), "must be between 1 and 65535 (got 0)");
    }
    if let Some(w) = b.weight {
        if mirror {
            p.add(
                format!("{at}.weight"),
                "a mirror's backendRef has no weight",
            );
        } else if w > MAX_WEIGHT {
            p.add(
                format!("{at}.weight"),
                format!("must be between 0 and {MAX_WEIGHT} (got {w})"),
            );
        }
    }
    if !b.filters.is_empty() {
        p.add(
            format!("{at}.filters"),
            "filters on a backendRef are not supported; put them on the rule",
        );
    }
}

fn backend_refs(p: &mut Problems, rp: &str, refs: &[BackendRef]) {
    for (j, b) in refs.iter().enumerate() {
        backend_ref(p, &format!("{rp}.backendRefs[{j}]"), b, false);
    }
}

fn header_matches(p: &mut Problems, lp: &str, list: &[HeaderMatch]) {
    let mut seen = HashSet::new();
    for (k, h) in list.iter().enumerate() {
        let at = format!("{lp}[{k}]");
        p.check(format!("{at}.name"), header_name_problem(&h.name));
        match h.kind {
            StringMatchType::Exact => {
                p.check(format!("{at}.value"), header_value_problem(&h.value))
            }
            StringMatchType::RegularExpression => {
                p.check(format!("{at}.value"), regex_problem(&h.value))
            }
        }
        if !seen.insert(h.name.to_ascii_lowercase()) {
            p.add(
                format!("{at}.name"),
                format!("header {:?} is matched twice in one match", h.name),
            );
        }
    }
}

fn header_filter(p: &mut Problems, at: &str, f: &HTTPHeaderFilter) {
    let mut seen = HashSet::new();
    for (op, list) in [("set", &f.set), ("add", &f.add)] {
        for (k, h) in list.iter().enumerate() {
            let hp = format!("{at}.{op}[{k}]");
            p.check(format!("{hp}.name"), header_name_problem(&h.name));
            p.check(format!("{hp}.value"), header_value_problem(&h.value));
            if h.name.eq_ignore_ascii_case("host") {
                p.add(
                    format!("{hp}.name"),
                    "the Host header cannot be modified here; use a URLRewrite filter's hostname",
                );
            }
            if !seen.insert(h.name.to_ascii_lowercase()) {
                p.add(
                    format!("{hp}.name"),
                    format!("header {:?} is modified more than once", h.name),
                );
            }
        }
    }
    for (k, name) in f.remove.iter().enumerate() {
        let hp = format!("{at}.remove[{k}]");
        p.check(hp.as_str(), header_name_problem(name));
        if !seen.insert(name.to_ascii_lowercase()) {
            p.add(hp, format!("header {name:?} is modified more than once"));
        }
    }
    if f.set.is_empty() && f.add.is_empty() && f.remove.is_empty() {
        p.add(at, "must set, add or remove at least one header");
    }
}

fn mirror(p: &mut Problems, at: &str, m: &HTTPRequestMirrorFilter) {
    backend_ref(p, &format!("{at}.backendRef"), &m.backend_ref, true);
    if m.percent.is_some() && m.fraction.is_some() {
        p.add(at, "set at most one of percent and fraction");
    }
    if let Some(pc) = m.percent {
        p.percent_u32(format!("{at}.percent"), pc);
    }
    if let Some(f) = &m.fraction {
        if f.denominator() == 0 {
            p.add(format!("{at}.fraction.denominator"), "must be at least 1");
        } else if f.numerator > f.denominator() {
            p.add(
                format!("{at}.fraction.numerator"),
                format!("must be at most the denominator ({})", f.denominator()),
            );
        }
    }
}

fn path_value(p: &mut Problems, at: &str, v: &str) {
    if !v.starts_with('/') {
        p.add(at, format!("{v:?} must start with '/'"));
    } else if has_space_or_control(v) || v.contains(['?', '#']) {
        p.add(
            at,
            format!("{v:?} must not contain whitespace, control characters, '?' or '#'"),
        );
    }
}

fn path_modifier(p: &mut Problems, at: &str, m: &HTTPPathModifier, prefix_ok: bool) {
    match m.kind {
        HTTPPathModifierType::ReplaceFullPath => {
            if m.replace_prefix_match.is_some() {
                p.add(
                    format!("{at}.replacePrefixMatch"),
                    "must not be set with type ReplaceFullPath",
                );
            }
            match &m.replace_full_path {
                Some(v) => path_value(p, &format!("{at}.replaceFullPath"), v),
                None => p.add(
                    format!("{at}.replaceFullPath"),
                    "is required with type ReplaceFullPath",
                ),
            }
        }
        HTTPPathModifierType::ReplacePrefixMatch => {
            if m.replace_full_path.is_some() {
                p.add(
                    format!("{at}.replaceFullPath"),
                    "must not be set with type ReplacePrefixMatch",
                );
            }
            match &m.replace_prefix_match {
                Some(v) => path_value(p, &format!("{at}.replacePrefixMatch"), v),
                None => p.add(
                    format!("{at}.replacePrefixMatch"),
                    "is required with type ReplacePrefixMatch",
                ),
            }
            if !prefix_ok {
                p.add(
                    format!("{at}.type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix path match",
                );
            }
        }
    }
}

/// Checks that `filter.type` names the one field set.
fn one_of(p: &mut Problems, at: &str, kind: &str, set: &[(&str, bool)]) {
    let want = set
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(kind) || (kind == "URLRewrite" && *n == "urlRewrite"))
        .map(|(n, _)| *n);
    for (name, present) in set {
        if *present && Some(*name) != want {
            p.add(
                format!("{at}.{name}"),
                format!("must not be set with type {kind}"),
            );
        }
        if !*present && Some(*name) == want {
            p.add(
                format!("{at}.{name}"),
                format!("is required with type {kind}"),
            );
        }
    }
}

/// The filter fields HTTPRoute and GRPCRoute share: header modifiers and a mirror.
fn shared_filter_fields(
    p: &mut Problems,
    at: &str,
    request_headers: Option<&HTTPHeaderFilter>,
    response_headers: Option<&HTTPHeaderFilter>,
    request_mirror: Option<&HTTPRequestMirrorFilter>,
) {
    if let Some(h) = request_headers {
        header_filter(p, &format!("{at}.requestHeaderModifier"), h);
    }
    if let Some(h) = response_headers {
        header_filter(p, &format!("{at}.responseHeaderModifier"), h);
    }
    if let Some(m) = request_mirror {
        mirror(p, &format!("{at}.requestMirror"), m);
    }
}

fn http_filter(p: &mut Problems, at: &str, f: &HTTPRouteFilter, prefix_ok: bool) {
    let kind = format!("{:?}", f.kind);
    one_of(
        p,
        at,
        &kind,
        &[
            ("requestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("requestMirror", f.request_mirror.is_some()),
            ("requestRedirect", f.request_redirect.is_some()),
            ("urlRewrite", f.url_rewrite.is_some()),
            ("extensionRef", f.extension_ref.is_some()),
        ],
    );
    shared_filter_fields(
        p,
        at,
        f.request_header_modifier.as_ref(),
        f.response_header_modifier.as_ref(),
        f.request_mirror.as_ref(),
    );
    if let Some(r) = &f.request_redirect {
        let rp = format!("{at}.requestRedirect");
        if let Some(s) = &r.scheme {
            if s != "http" && s != "https" {
                p.add(
                    format!("{rp}.scheme"),
                    format!("must be http or https (got {s:?})"),
                );
            }
        }
        if let Some(h) = &r.hostname {
            p.check(format!("{rp}.hostname"), hostname_problem(h));
        }
        if r.port == Some(0) {
            p.add(format!("{rp}.port"), "must be between 1 and 65535 (got 0)");
        }
        if let Some(code) = r.status_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                p.add(
                    format!("{rp}.statusCode"),
                    format!("must be 301, 302, 303, 307 or 308 (got {code})"),
                );
            }
        }
        if let Some(m) = &r.path {
            path_modifier(p, &format!("{rp}.path"), m, prefix_ok);
        }
    }
    if let Some(r) = &f.url_rewrite {
        let rp = format!("{at}.urlRewrite");
        if let Some(h) = &r.hostname {
            p.check(format!("{rp}.hostname"), hostname_problem(h));
        }
        if let Some(m) = &r.path {
            path_modifier(p, &format!("{rp}.path"), m, prefix_ok);
        }
    }
    if f.kind == HTTPRouteFilterType::ExtensionRef {
        p.add(
            format!("{at}.type"),
            "ExtensionRef filters are not supported by Trellis",
        );
    }
}

pub(super) fn http_route(p: &mut Problems, spec: &HTTPRouteSpec) {
    parent_refs(p, &spec.parent_refs);
    hostnames(p, &spec.hostnames);
    let mut names = HashSet::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        if let Some(n) = &rule.name {
            p.check(format!("{rp}.name"), dns_label_problem(n));
            if !names.insert(n.as_str()) {
                p.add(
                    format!("{rp}.name"),
                    format!("rule name {n:?} is used twice"),
                );
            }
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let mp = format!("{rp}.matches[{j}]");
            if let Some(path) = &m.path {
                let vp = format!("{mp}.path.value");
                match path.kind {
                    PathMatchType::RegularExpression => p.check(vp, regex_problem(&path.value)),
                    _ => path_value(p, &vp, &path.value),
                }
            }
            if let Some(method) = &m.method {
                p.check(format!("{mp}.method"), method_problem(method));
            }
            header_matches(p, &format!("{mp}.headers"), &m.headers);
            let mut seen = HashSet::new();
            for (k, q) in m.query_params.iter().enumerate() {
                let qp = format!("{mp}.queryParams[{k}]");
                if q.name.is_empty() {
                    p.add(format!("{qp}.name"), "must not be empty");
                } else if !seen.insert(q.name.as_str()) {
                    p.add(
                        format!("{qp}.name"),
                        format!("query parameter {:?} is matched twice in one match", q.name),
                    );
                }
                if q.kind == StringMatchType::RegularExpression {
                    p.check(format!("{qp}.value"), regex_problem(&q.value));
                }
            }
        }
        let prefix_ok = !rule.matches.is_empty()
            && rule.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
            })
            || rule.matches.is_empty();
        let mut kinds = HashSet::new();
        for (k, f) in rule.filters.iter().enumerate() {
            let fp = format!("{rp}.filters[{k}]");
            http_filter(p, &fp, f, prefix_ok);
            if f.kind != HTTPRouteFilterType::RequestMirror && !kinds.insert(f.kind) {
                p.add(
                    format!("{fp}.type"),
                    format!("{:?} is set twice in one rule", f.kind),
                );
            }
        }
        if kinds.contains(&HTTPRouteFilterType::RequestRedirect)
            && kinds.contains(&HTTPRouteFilterType::URLRewrite)
        {
            p.add(
                format!("{rp}.filters"),
                "RequestRedirect and URLRewrite cannot be used together",
            );
        }
        if kinds.contains(&HTTPRouteFilterType::RequestRedirect) && !rule.backend_refs.is_empty() {
            p.add(
                format!("{rp}.backendRefs"),
                "a rule with a RequestRedirect filter answers itself; it must not have backendRefs",
            );
        }
        backend_refs(p, &rp, &rule.backend_refs);
        if let Some(t) = &rule.timeouts {
            if let (Some(req), Some(be)) = (t.request, t.backend_request) {
                if !req.is_zero() && (be.is_zero() || be > req) {
                    p.add(
                        format!("{rp}.timeouts.backendRequest"),
                        format!("{be} must not exceed timeouts.request ({req})"),
                    );
                }
            }
        }
    }
}

pub(super) fn grpc_route(p: &mut Problems, spec: &GRPCRouteSpec) {
    parent_refs(p, &spec.parent_refs);
    hostnames(p, &spec.hostnames);
    let mut names = HashSet::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        if let Some(n) = &rule.name {
            p.check(format!("{rp}.name"), dns_label_problem(n));
            if !names.insert(n.as_str()) {
                p.add(
                    format!("{rp}.name"),
                    format!("rule name {n:?} is used twice"),
                );
            }
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let mp = format!("{rp}.matches[{j}]");
            if let Some(method) = &m.method {
                if method.service.is_none() && method.method.is_none() {
                    p.add(format!("{mp}.method"), "set service, method or both");
                }
                for (field, v) in [("service", &method.service), ("method", &method.method)] {
                    let Some(v) = v else { continue };
                    let at = format!("{mp}.method.{field}");
                    match method.kind {
                        StringMatchType::RegularExpression => p.check(at, regex_problem(v)),
                        StringMatchType::Exact => {
                            let ok = !v.is_empty()
                                && v.chars().all(|c| {
                                    c.is_ascii_alphanumeric()
                                        || c == '_'
                                        || (field == "service" && c == '.')
                                });
                            if !ok {
                                p.add(
                                    at,
                                    format!(
                                        "{v:?} is not a gRPC {field} name (letters, digits, '_'{})",
                                        if field == "service" { " and '.'" } else { "" }
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            header_matches(p, &format!("{mp}.headers"), &m.headers);
        }
        let mut kinds = HashSet::new();
        for (k, f) in rule.filters.iter().enumerate() {
            let fp = format!("{rp}.filters[{k}]");
            let kind = format!("{:?}", f.kind);
            one_of(
                p,
                &fp,
                &kind,
                &[
                    ("requestHeaderModifier", f.request_header_modifier.is_some()),
                    (
                        "responseHeaderModifier",
                        f.response_header_modifier.is_some(),
                    ),
                    ("requestMirror", f.request_mirror.is_some()),
                    ("extensionRef", f.extension_ref.is_some()),
                ],
            );
            shared_filter_fields(
                p,
                &fp,
                f.request_header_modifier.as_ref(),
                f.response_header_modifier.as_ref(),
                f.request_mirror.as_ref(),
            );
            if f.kind == GRPCRouteFilterType::ExtensionRef {
                p.add(
                    format!("{fp}.type"),
                    "ExtensionRef filters are not supported by Trellis",
                );
            }
            if f.kind != GRPCRouteFilterType::RequestMirror && !kinds.insert(f.kind) {
                p.add(
                    format!("{fp}.type"),
                    format!("{kind} is set twice in one rule"),
                );
            }
        }
        backend_refs(p, &rp, &rule.backend_refs);
    }
}

pub(super) fn tls_route(p: &mut Problems, spec: &TLSRouteSpec) {
    parent_refs(p, &spec.parent_refs);
    hostnames(p, &spec.hostnames);
    if spec.rules.is_empty() {
        p.add("spec.rules", "a TLSRoute needs at least one rule");
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        if rule.backend_refs.is_empty() {
            p.add(
                format!("{rp}.backendRefs"),
                "a TLSRoute rule needs at least one backendRef",
            );
        }
        backend_refs(p, &rp, &rule.backend_refs);
    }
}

pub(super) fn gateway(p: &mut Problems, spec: &GatewaySpec) {
    if spec.gateway_class_name.is_empty() {
        p.add("spec.gatewayClassName", "must not be empty");
    }
    if spec.listeners.is_empty() {
        p.add("spec.listeners", "a Gateway needs at least one listener");
    }
    let mut names = HashSet::new();
    let mut bound = HashSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let lp = format!("spec.listeners[{i}]");
        p.check(format!("{lp}.name"), dns_label_problem(&l.name));
        if !names.insert(l.name.as_str()) {
            p.add(
                format!("{lp}.name"),
                format!("listener name {:?} is used twice", l.name),
            );
        }
        if l.port == 0 {
            p.add(format!("{lp}.port"), "must be between 1 and 65535 (got 0)");
        }
        if let Some(h) = &l.hostname {
            p.check(format!("{lp}.hostname"), hostname_problem(h));
        }
        if !bound.insert((l.port, l.hostname.clone())) {
            p.add(
                format!("{lp}.hostname"),
                format!(
                    "another listener already serves port {} with the same hostname",
                    l.port
                ),
            );
        }
        match (l.protocol, &l.tls) {
            (ListenerProtocol::HTTP, Some(_)) => {
                p.add(format!("{lp}.tls"), "must not be set for protocol HTTP")
            }
            (ListenerProtocol::HTTPS, None) => p.add(
                format!("{lp}.tls"),
                "is required for protocol HTTPS (mode Terminate with certificateRefs)",
            ),
            (ListenerProtocol::HTTPS, Some(t)) if t.mode() == TLSModeType::Passthrough => p.add(
                format!("{lp}.tls.mode"),
                "protocol HTTPS terminates TLS; use protocol TLS for Passthrough",
            ),
            (ListenerProtocol::TLS, None) => p.add(
                format!("{lp}.tls"),
                "is required for protocol TLS (mode Passthrough or Terminate)",
            ),
            _ => {}
        }
        if let Some(t) = &l.tls {
            if t.mode() == TLSModeType::Terminate && t.certificate_refs.is_empty() {
                p.add(
                    format!("{lp}.tls.certificateRefs"),
                    "mode Terminate needs at least one certificateRef",
                );
            }
            for (k, c) in t.certificate_refs.iter().enumerate() {
                p.check(
                    format!("{lp}.tls.certificateRefs[{k}].name"),
                    dns_label_problem(&c.name),
                );
            }
        }
    }
}
