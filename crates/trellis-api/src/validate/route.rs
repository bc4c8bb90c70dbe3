//! `Route`: matches, backends, timeouts, retries, faults, mirroring, header modifiers, rewrites.
use super::checks::rule_name;
use super::checks::{
    has_space_or_control, header_name_problem, header_value_problem, method_problem, regex_problem,
    service_ref_problem, Problems,
};
use super::{MAX_RETRY_ATTEMPTS, MAX_RETRY_BUFFER_BYTES, RETRY_ON};
use crate::duration::Duration;
use crate::route::{
    Backend, FaultPolicy, HeaderModifier, Mirror, PathMatch, PathMatchType, RetryPolicy,
    RouteMatch, RouteRule, RouteSpec, ValueMatch, ValueMatchType, MAX_BACKEND_WEIGHT,
};
use std::collections::HashMap;

pub(super) fn check(p: &mut Problems, spec: &RouteSpec) {
    p.check("spec.service", service_ref_problem(&spec.service));
    if spec.rules.is_empty() {
        p.add(
            "spec.rules",
            "a route needs at least one rule; a rule with only `backends` matches every request",
        );
    }
    let mut names = HashMap::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        rule_name(p, &mut names, &rp, i, rule.name.as_deref());
        self::rule(p, &rp, rule);
    }
}

fn rule(p: &mut Problems, rp: &str, rule: &RouteRule) {
    if let Some(l) = &rule.rate_limit {
        super::ratelimit::rate_limit(p, &format!("{rp}.rateLimit"), l);
    }
    for (m, mat) in rule.matches.iter().enumerate() {
        route_match(p, &format!("{rp}.matches[{m}]"), mat);
    }
    for (k, port) in rule.ports.iter().enumerate() {
        if *port == 0 {
            p.add(
                format!("{rp}.ports[{k}]"),
                "must be between 1 and 65535 (got 0)",
            );
        }
    }
    backends(p, rp, &rule.backends);
    if let Some(t) = rule.timeout {
        if t.is_zero() {
            p.add(
                format!("{rp}.timeout"),
                "must be greater than 0; omit the field for no timeout",
            );
        }
    }
    if let Some(r) = &rule.retries {
        retries(p, &format!("{rp}.retries"), r, rule.timeout);
    }
    if let Some(f) = &rule.fault {
        fault(p, &format!("{rp}.fault"), f);
    }
    if let Some(m) = &rule.mirror {
        mirror(p, &format!("{rp}.mirror"), m);
    }
    if let Some(h) = &rule.request_headers {
        header_modifier(p, &format!("{rp}.requestHeaders"), h, true);
    }
    if let Some(h) = &rule.response_headers {
        header_modifier(p, &format!("{rp}.responseHeaders"), h, false);
    }
    if let Some(r) = &rule.redirect {
        redirect(p, &format!("{rp}.redirect"), r, rule);
    }
    if let Some(d) = &rule.direct_response {
        if !(200..=599).contains(&d.status) {
            p.add(
                format!("{rp}.directResponse.status"),
                format!(
                    "must be an HTTP status code between 200 and 599 (got {})",
                    d.status
                ),
            );
        }
        if d.body.as_ref().is_some_and(|b| b.len() > 4096) {
            p.add(
                format!("{rp}.directResponse.body"),
                "must be at most 4096 bytes",
            );
        }
        match d.weight {
            Some(_) if rule.backends.is_empty() => p.add(
                format!("{rp}.directResponse.weight"),
                "is a share beside the rule's backends; without backends every request is answered, so omit it",
            ),
            Some(w) if w == 0 || w > 1_000_000 => p.add(
                format!("{rp}.directResponse.weight"),
                format!("must be between 1 and 1000000 (got {w})"),
            ),
            _ => {}
        }
    }
    if rule.redirect.is_some() && rule.direct_response.is_some() {
        p.add(
            format!("{rp}.directResponse"),
            "a rule answers with a redirect or a direct response, not both",
        );
    }
    if let Some(rw) = &rule.rewrite {
        if rw.path.is_some() && rw.full_path.is_some() {
            p.add(
                format!("{rp}.rewrite.fullPath"),
                "set at most one of path (replaces a PathPrefix match's prefix) and fullPath",
            );
        }
        if let Some(path) = &rw.full_path {
            if !path.starts_with('/') || has_space_or_control(path) {
                p.add(
                    format!("{rp}.rewrite.fullPath"),
                    format!(
                        "{path:?} must start with '/' and hold no whitespace or control characters"
                    ),
                );
            }
        }
        if let Some(path) = &rw.path {
            if !path.starts_with('/') {
                p.add(
                    format!("{rp}.rewrite.path"),
                    format!("{path:?} must start with '/'"),
                );
            } else if has_space_or_control(path) {
                p.add(
                    format!("{rp}.rewrite.path"),
                    format!("{path:?} must not contain whitespace or control characters"),
                );
            }
        }
        if let Some(host) = &rw.host {
            if host.is_empty() {
                p.add(
                    format!("{rp}.rewrite.host"),
                    "must not be empty; omit it to keep the original Host",
                );
            } else if has_space_or_control(host) || host.contains('/') {
                p.add(
                    format!("{rp}.rewrite.host"),
                    format!("{host:?} is not a host; use a host name, optionally with :port, e.g. \"reviews.internal:8080\""),
                );
            }
        }
    }
}

fn route_match(p: &mut Problems, mp: &str, m: &RouteMatch) {
    if let Some(path) = &m.path {
        path_match(p, &format!("{mp}.path.value"), path);
    }
    if let Some(method) = &m.method {
        p.check(format!("{mp}.method"), method_problem(method));
    }
    value_matches(p, &format!("{mp}.headers"), &m.headers, true);
    value_matches(p, &format!("{mp}.queryParams"), &m.query_params, false);
}

fn path_match(p: &mut Problems, vp: &str, m: &PathMatch) {
    let v = &m.value;
    match m.kind {
        PathMatchType::Exact | PathMatchType::PathPrefix => {
            if !v.starts_with('/') {
                p.add(
                    vp,
                    format!(
                        "{v:?} must start with '/' for type {:?} (e.g. \"/api\")",
                        m.kind
                    ),
                );
            } else if v.contains(['?', '#']) {
                p.add(
                    vp,
                    format!("{v:?} must not contain '?' or '#'; match query parameters with queryParams"),
                );
            } else if has_space_or_control(v) {
                p.add(
                    vp,
                    format!("{v:?} must not contain whitespace or control characters"),
                );
            }
        }
        PathMatchType::RegularExpression => p.check(vp, regex_problem(v)),
    }
}

/// Header (`is_header`) or query-parameter conditions.
fn value_matches(p: &mut Problems, lp: &str, list: &[ValueMatch], is_header: bool) {
    let mut seen = HashMap::new();
    for (k, vm) in list.iter().enumerate() {
        let path = format!("{lp}[{k}]");
        value_match(p, &path, vm, is_header);
        if vm.name.is_empty() {
            continue;
        }
        // Header names compare case-insensitively, query parameter names exactly.
        let key = if is_header {
            vm.name.to_ascii_lowercase()
        } else {
            vm.name.clone()
        };
        if let Some(first) = seen.insert(key, k) {
            p.add(
                format!("{path}.name"),
                format!(
                    "{:?} is matched twice in the same match (also {lp}[{first}]); all conditions of a match must hold, so combine them into one",
                    vm.name
                ),
            );
        }
    }
}

fn value_match(p: &mut Problems, path: &str, vm: &ValueMatch, is_header: bool) {
    let name_path = format!("{path}.name");
    if is_header {
        p.check(name_path, header_name_problem(&vm.name));
    } else if vm.name.is_empty() {
        p.add(name_path, "query parameter names must not be empty");
    }
    let value_path = format!("{path}.value");
    match (vm.kind, &vm.value) {
        (ValueMatchType::Present, Some(_)) => p.add(
            value_path,
            "must not be set with type Present; use type Exact or RegularExpression to match a value",
        ),
        (ValueMatchType::Present, None) => {}
        (kind, None) => p.add(
            value_path,
            format!("is required with type {kind:?}; only type Present matches without a value"),
        ),
        (ValueMatchType::RegularExpression, Some(v)) => p.check(value_path, regex_problem(v)),
        (ValueMatchType::Exact, Some(v)) => {
            if is_header {
                p.check(value_path, header_value_problem(v));
            }
        }
    }
}

fn backends(p: &mut Problems, rp: &str, backends: &[Backend]) {
    for (j, b) in backends.iter().enumerate() {
        let bp = format!("{rp}.backends[{j}]");
        p.check(format!("{bp}.service"), service_ref_problem(&b.service));
        if b.subset.as_deref() == Some("") {
            p.add(
                format!("{bp}.subset"),
                "must not be empty; omit it to use every endpoint of the service",
            );
        }
        if b.weight > MAX_BACKEND_WEIGHT {
            p.add(
                format!("{bp}.weight"),
                format!(
                    "must be between 0 and {MAX_BACKEND_WEIGHT} (got {}); weights are relative, so scale them down",
                    b.weight
                ),
            );
        }
        if b.port == Some(0) {
            p.add(format!("{bp}.port"), "must be between 1 and 65535 (got 0)");
        }
    }
    if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
        p.add(
            format!("{rp}.backends"),
            "every backend has weight 0, so no request could be routed; give at least one backend a weight above 0",
        );
    }
}

fn retries(p: &mut Problems, rp: &str, r: &RetryPolicy, timeout: Option<Duration>) {
    if !(1..=MAX_RETRY_ATTEMPTS).contains(&r.attempts) {
        p.add(
            format!("{rp}.attempts"),
            format!(
                "must be between 1 and {MAX_RETRY_ATTEMPTS} (got {}); attempts counts the first try, so 1 disables retries",
                r.attempts
            ),
        );
    }
    if let Some(per_try) = r.per_try_timeout {
        if per_try.is_zero() {
            p.add(
                format!("{rp}.perTryTimeout"),
                "must be greater than 0; omit the field to bound tries only by the rule's timeout",
            );
        } else if let Some(t) = timeout.filter(|t| per_try > *t) {
            p.add(
                format!("{rp}.perTryTimeout"),
                format!("{per_try} must not exceed the rule's timeout ({t})"),
            );
        }
    }
    let mut seen = HashMap::new();
    for (k, cond) in r.retry_on.iter().enumerate() {
        if !RETRY_ON.contains(&cond.as_str()) {
            p.add(
                format!("{rp}.retryOn[{k}]"),
                format!(
                    "unknown retry condition {cond:?}; allowed: {}",
                    RETRY_ON.join(", ")
                ),
            );
        } else if let Some(first) = seen.insert(cond.as_str(), k) {
            p.add(
                format!("{rp}.retryOn[{k}]"),
                format!("{cond:?} is listed twice (also retryOn[{first}])"),
            );
        }
    }
    let wants_codes = r.retry_on.iter().any(|c| c == "retriable-status-codes");
    if wants_codes && r.retriable_status_codes.is_empty() {
        p.add(
            format!("{rp}.retriableStatusCodes"),
            "must list at least one status code when retryOn includes retriable-status-codes",
        );
    }
    if !wants_codes && !r.retriable_status_codes.is_empty() {
        p.add(
            format!("{rp}.retryOn"),
            "must include retriable-status-codes when retriableStatusCodes is set; otherwise the codes are ignored",
        );
    }
    for (k, code) in r.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            p.add(
                format!("{rp}.retriableStatusCodes[{k}]"),
                format!("must be an HTTP status code between 100 and 599 (got {code})"),
            );
        }
    }
    if let Some(b) = &r.backoff {
        p.positive_duration(format!("{rp}.backoff.baseInterval"), b.base_interval);
        if let Some(max) = b.max_interval {
            if max < b.base_interval {
                p.add(
                    format!("{rp}.backoff.maxInterval"),
                    format!("{max} must be at least baseInterval ({})", b.base_interval),
                );
            }
        }
    }
    if let Some(b) = &r.budget {
        if !(0.0..=1.0).contains(&b.ratio) {
            p.add(
                format!("{rp}.budget.ratio"),
                format!(
                    "must be a fraction between 0.0 and 1.0, e.g. 0.2 for retries up to 20% of requests (got {})",
                    b.ratio
                ),
            );
        }
        if let Some(ttl) = b.ttl {
            p.positive_duration(format!("{rp}.budget.ttl"), ttl);
        }
    }
    if let Some(n) = r.max_buffer_bytes {
        if n > MAX_RETRY_BUFFER_BYTES {
            p.add(
                format!("{rp}.maxBufferBytes"),
                format!("must be at most {MAX_RETRY_BUFFER_BYTES} (64 MiB) (got {n})"),
            );
        }
    }
}

fn fault(p: &mut Problems, fp: &str, f: &FaultPolicy) {
    if f.delay.is_none() && f.abort.is_none() {
        p.add(fp, "must set delay, abort or both");
    }
    if let Some(d) = &f.delay {
        p.positive_duration(format!("{fp}.delay.fixedDelay"), d.fixed_delay);
        p.percent(format!("{fp}.delay.percent"), d.percent);
    }
    if let Some(a) = &f.abort {
        let ap = format!("{fp}.abort");
        match (a.http_status, a.grpc_status) {
            (Some(_), Some(_)) | (None, None) => p.add(
                ap.as_str(),
                "must set exactly one of httpStatus and grpcStatus",
            ),
            (Some(code), None) if !(200..=599).contains(&code) => p.add(
                format!("{ap}.httpStatus"),
                format!("must be an HTTP status code between 200 and 599 (got {code})"),
            ),
            (None, Some(code)) if !(1..=16).contains(&code) => p.add(
                format!("{ap}.grpcStatus"),
                format!(
                    "must be a gRPC status code between 1 and 16 (got {code}); 0 (OK) is not a fault"
                ),
            ),
            _ => {}
        }
        p.percent(format!("{ap}.percent"), a.percent);
    }
    value_matches(p, &format!("{fp}.headers"), &f.headers, true);
}

fn mirror(p: &mut Problems, mp: &str, m: &Mirror) {
    p.check(format!("{mp}.service"), service_ref_problem(&m.service));
    if m.subset.as_deref() == Some("") {
        p.add(
            format!("{mp}.subset"),
            "must not be empty; omit it to use every endpoint of the service",
        );
    }
    p.percent(format!("{mp}.percent"), m.percent);
}

fn header_modifier(p: &mut Problems, hp: &str, h: &HeaderModifier, request: bool) {
    // Lowercased name -> where it was first seen, to catch one header in two operations.
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut note = |p: &mut Problems, name: &str, at: String| {
        if name.is_empty() || !super::checks::is_header_name(name) {
            return;
        }
        if request && name.eq_ignore_ascii_case("host") {
            p.add(
                at.as_str(),
                "the Host header cannot be modified here; use rewrite.host",
            );
        }
        if let Some(first) = seen.insert(name.to_ascii_lowercase(), at.clone()) {
            p.add(
                at,
                format!(
                    "header {name:?} is modified more than once (also at {first}); header names compare case-insensitively"
                ),
            );
        }
    };
    for (op, map) in [("set", &h.set), ("add", &h.add)] {
        for (name, value) in map {
            let op_path = format!("{hp}.{op}");
            if let Some(m) = header_name_problem(name) {
                p.add(op_path, m);
                continue;
            }
            let at = format!("{op_path}.{name}");
            p.check(at.as_str(), header_value_problem(value));
            note(p, name, at);
        }
    }
    for (k, name) in h.remove.iter().enumerate() {
        let at = format!("{hp}.remove[{k}]");
        p.check(at.as_str(), header_name_problem(name));
        note(p, name, at);
    }
}

fn redirect(p: &mut Problems, rp: &str, r: &crate::route::Redirect, rule: &RouteRule) {
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            p.add(
                format!("{rp}.scheme"),
                format!("must be http or https (got {s:?})"),
            );
        }
    }
    if let Some(h) = &r.hostname {
        if h.is_empty() || has_space_or_control(h) || h.contains(['/', ':']) {
            p.add(
                format!("{rp}.hostname"),
                format!("{h:?} is not a host name (no port: set port)"),
            );
        }
    }
    if r.port == Some(0) {
        p.add(format!("{rp}.port"), "must be between 1 and 65535 (got 0)");
    }
    if ![301, 302, 303, 307, 308].contains(&r.status_code) {
        p.add(
            format!("{rp}.statusCode"),
            format!("must be 301, 302, 303, 307 or 308 (got {})", r.status_code),
        );
    }
    if r.full_path.is_some() && r.prefix_path.is_some() {
        p.add(
            format!("{rp}.prefixPath"),
            "set at most one of fullPath and prefixPath",
        );
    }
    for (field, v) in [("fullPath", &r.full_path), ("prefixPath", &r.prefix_path)] {
        if let Some(v) = v {
            if !v.starts_with('/') || has_space_or_control(v) {
                p.add(
                    format!("{rp}.{field}"),
                    format!(
                        "{v:?} must start with '/' and hold no whitespace or control characters"
                    ),
                );
            }
        }
    }
    if r.prefix_path.is_some()
        && rule.matches.iter().any(|m| {
            m.path
                .as_ref()
                .is_some_and(|p| p.kind != PathMatchType::PathPrefix)
        })
    {
        p.add(
            format!("{rp}.prefixPath"),
            "replaces the prefix a PathPrefix match matched; every match of the rule must be a PathPrefix path match",
        );
    }
}
