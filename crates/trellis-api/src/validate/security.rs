//! `AuthorizationPolicy` and `RequestAuthentication`.
use super::checks::rule_name;
use super::checks::{
    dns_label_problem, has_space_or_control, header_name_problem, header_value_problem,
    method_problem, service_ref_problem, Problems,
};
use crate::security::{
    AuthorizationPolicySpec, AuthzOperation, AuthzSource, JwksSource, JwtRule,
    RequestAuthenticationSpec,
};
use std::collections::HashMap;

pub(super) fn authorization(p: &mut Problems, spec: &AuthorizationPolicySpec) {
    p.check("spec.service", service_ref_problem(&spec.service));
    let mut names = HashMap::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let rp = format!("spec.rules[{i}]");
        rule_name(p, &mut names, &rp, i, rule.name.as_deref());
        if let Some(from) = &rule.from {
            source(p, &format!("{rp}.from"), from);
        }
        if let Some(to) = &rule.to {
            operation(p, &format!("{rp}.to"), to);
        }
        for (k, cond) in rule.when.iter().enumerate() {
            let wp = format!("{rp}.when[{k}]");
            if cond.claim.is_empty() {
                p.add(
                    format!("{wp}.claim"),
                    "must name a JWT claim, e.g. \"groups\" or \"sub\"",
                );
            }
            if cond.values.is_empty() {
                p.add(
                    format!("{wp}.values"),
                    "must list at least one accepted value",
                );
            }
            for (v, value) in cond.values.iter().enumerate() {
                if value.is_empty() {
                    p.add(format!("{wp}.values[{v}]"), "must not be empty");
                }
            }
        }
    }
}

/// `*`, a SPIFFE ID, or a prefix ending in `*`.
fn principal_problem(s: &str) -> Option<String> {
    const RULE: &str = "use a SPIFFE ID such as \"spiffe://cluster.local/ns/default/sa/web\", \
                        a prefix ending in '*' or '*' alone";
    if s == "*" {
        return None;
    }
    if s.is_empty() {
        return Some(format!("must not be empty; {RULE}"));
    }
    if has_space_or_control(s) {
        return Some(format!(
            "{s:?} must not contain whitespace or control characters"
        ));
    }
    match s.find('*') {
        Some(pos) if pos + 1 != s.len() => Some(format!(
            "{s:?}: '*' is only allowed as the last character; {RULE}"
        )),
        Some(_) => None,
        None if s.len() > "spiffe://".len() && s.starts_with("spiffe://") => None,
        None => Some(format!("{s:?} is not a SPIFFE ID; {RULE}")),
    }
}

/// `*`, a prefix ending in `*`, or a namespace name.
fn namespace_problem(s: &str) -> Option<String> {
    if s == "*" {
        return None;
    }
    match s.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') && !has_space_or_control(prefix) => None,
        _ => dns_label_problem(s)
            .map(|m| format!("{m}; or use a prefix ending in '*', or '*' alone")),
    }
}

fn source(p: &mut Problems, sp: &str, s: &AuthzSource) {
    for (k, principal) in s.principals.iter().enumerate() {
        p.check(
            format!("{sp}.principals[{k}]"),
            principal_problem(principal),
        );
    }
    for (k, ns) in s.namespaces.iter().enumerate() {
        p.check(format!("{sp}.namespaces[{k}]"), namespace_problem(ns));
    }
    for (k, rp) in s.request_principals.iter().enumerate() {
        if rp.is_empty() || has_space_or_control(rp) {
            p.add(
                format!("{sp}.requestPrincipals[{k}]"),
                format!("{rp:?} is not a request principal; use \"<issuer>/<subject>\", a prefix ending in '*' or '*'"),
            );
        }
    }
}

fn operation(p: &mut Problems, op: &str, o: &AuthzOperation) {
    for (k, m) in o.methods.iter().enumerate() {
        p.check(format!("{op}.methods[{k}]"), method_problem(m));
    }
    for (k, path) in o.paths.iter().enumerate() {
        let at = format!("{op}.paths[{k}]");
        if path == "*" {
            continue;
        }
        if !path.starts_with('/') {
            p.add(
                at,
                format!("{path:?} must start with '/' (or be '*' alone)"),
            );
        } else if path.find('*').is_some_and(|pos| pos + 1 != path.len()) {
            p.add(
                at,
                format!("{path:?}: '*' is only allowed as the last character, e.g. \"/api/*\""),
            );
        } else if has_space_or_control(path) {
            p.add(
                at,
                format!("{path:?} must not contain whitespace or control characters"),
            );
        }
    }
    for (k, port) in o.ports.iter().enumerate() {
        if *port == 0 {
            p.add(
                format!("{op}.ports[{k}]"),
                "must be between 1 and 65535 (got 0)",
            );
        }
    }
}

pub(super) fn authentication(p: &mut Problems, spec: &RequestAuthenticationSpec) {
    p.check("spec.service", service_ref_problem(&spec.service));
    if spec.jwt_rules.is_empty() {
        p.add(
            "spec.jwtRules",
            "must list at least one JWT rule (issuer and jwks)",
        );
    }
    let mut issuers = HashMap::new();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let rp = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            p.add(
                format!("{rp}.issuer"),
                "must not be empty; use the token's `iss` claim, e.g. \"https://auth.example.com\"",
            );
        } else if let Some(first) = issuers.insert(rule.issuer.as_str(), i) {
            p.add(
                format!("{rp}.issuer"),
                format!(
                    "issuer {:?} has two rules (also spec.jwtRules[{first}]); a token's issuer must select one rule",
                    rule.issuer
                ),
            );
        }
        jwt_rule(p, &rp, rule);
    }
}

fn jwt_rule(p: &mut Problems, rp: &str, rule: &JwtRule) {
    for (k, aud) in rule.audiences.iter().enumerate() {
        if aud.is_empty() {
            p.add(format!("{rp}.audiences[{k}]"), "must not be empty");
        }
    }
    jwks(p, &format!("{rp}.jwks"), &rule.jwks);
    for (k, h) in rule.from_headers.iter().enumerate() {
        let hp = format!("{rp}.fromHeaders[{k}]");
        p.check(format!("{hp}.name"), header_name_problem(&h.name));
        if let Some(prefix) = &h.prefix {
            p.check(format!("{hp}.prefix"), header_value_problem(prefix));
        }
    }
    for (k, param) in rule.from_params.iter().enumerate() {
        if param.is_empty() {
            p.add(
                format!("{rp}.fromParams[{k}]"),
                "must name a query parameter, e.g. \"access_token\"",
            );
        }
    }
}

fn jwks(p: &mut Problems, jp: &str, j: &JwksSource) {
    let set = usize::from(j.inline.is_some())
        + usize::from(j.file.is_some())
        + usize::from(j.uri.is_some());
    if set != 1 {
        p.add(
            jp,
            format!("must set exactly one of inline, file and uri ({set} are set)"),
        );
    }
    if let Some(inline) = &j.inline {
        match serde_json::from_str::<serde_json::Value>(inline) {
            Err(e) => p.add(
                format!("{jp}.inline"),
                format!("is not valid JSON: {e}; expected a JSON Web Key Set such as {{\"keys\": [...]}}"),
            ),
            Ok(v) if !v.get("keys").is_some_and(serde_json::Value::is_array) => p.add(
                format!("{jp}.inline"),
                "must be a JSON Web Key Set: a JSON object with a \"keys\" array",
            ),
            Ok(_) => {}
        }
    }
    if let Some(file) = &j.file {
        if file.is_empty() {
            p.add(
                format!("{jp}.file"),
                "must name a file holding a JSON Web Key Set",
            );
        }
    }
    if let Some(uri) = &j.uri {
        let rest = uri
            .strip_prefix("https://")
            .or_else(|| uri.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !has_space_or_control(uri) => {}
            _ => p.add(
                format!("{jp}.uri"),
                format!("{uri:?} is not an http:// or https:// URL, e.g. \"https://auth.example.com/.well-known/jwks.json\""),
            ),
        }
    }
}
