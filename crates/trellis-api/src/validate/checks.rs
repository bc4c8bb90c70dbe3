//! Small reusable checks. Each `*_problem` function returns `None` when the value is fine and
//! otherwise a message saying what is wrong and what is allowed; `Problems` collects them under
//! field paths.
use crate::duration::Duration;

/// Collected `(field path, message)` pairs for one resource.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<(String, String)>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push((path.into(), message.into()));
    }

    /// Adds `message` under `path` when there is one.
    pub(crate) fn check(&mut self, path: impl Into<String>, message: Option<String>) {
        if let Some(m) = message {
            self.add(path, m);
        }
    }

    pub(crate) fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }

    /// A duration that must be greater than zero.
    pub(crate) fn positive_duration(&mut self, path: impl Into<String>, d: Duration) {
        if d.is_zero() {
            self.add(path, "must be greater than 0 (e.g. \"250ms\" or \"2s\")");
        }
    }

    /// A percentage: finite, 0..=100.
    pub(crate) fn percent(&mut self, path: impl Into<String>, v: f64) {
        if !(0.0..=100.0).contains(&v) {
            self.add(
                path,
                format!("must be a percentage between 0 and 100 (got {v})"),
            );
        }
    }

    /// A whole-number percentage, 0..=100.
    pub(crate) fn percent_u32(&mut self, path: impl Into<String>, v: u32) {
        if v > 100 {
            self.add(
                path,
                format!("must be a percentage between 0 and 100 (got {v})"),
            );
        }
    }

    /// A count that, when set, must be at least 1.
    pub(crate) fn at_least_one(&mut self, path: impl Into<String>, v: u32, hint: &str) {
        if v == 0 {
            self.add(path, format!("must be at least 1 (got 0){hint}"));
        }
    }
}

const DNS_LABEL_RULE: &str = "lowercase letters, digits and '-', at most 63 characters, \
                              starting and ending with a letter or digit";

/// True when `s` is a DNS-1123 label: 1..=63 lowercase letters, digits and `-`, starting and
/// ending with a letter or digit (`reviews`, `v2`, `us-east-1a`).
pub fn is_dns_label(s: &str) -> bool {
    dns_label_problem(s).is_none()
}

pub(crate) fn dns_label_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some(format!("must not be empty; use {DNS_LABEL_RULE}"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "{s:?} contains {c:?}; use {DNS_LABEL_RULE}{}",
            if c.is_ascii_uppercase() {
                " (uppercase is not allowed)"
            } else {
                ""
            }
        ));
    }
    if s.len() > 63 {
        return Some(format!(
            "{s:?} is {} characters long; at most 63 are allowed",
            s.len()
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some(format!(
            "{s:?} must start and end with a lowercase letter or digit"
        ));
    }
    None
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (`reviews`,
/// `reviews.prod.svc.cluster.local`).
pub(crate) fn dns_subdomain_problem(s: &str) -> Option<String> {
    const RULE: &str = "dot-separated labels of lowercase letters, digits and '-', \
                        each starting and ending with a letter or digit";
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 253 {
        return Some(format!(
            "is {} characters long; at most 253 are allowed",
            s.len()
        ));
    }
    if s.split('.').all(is_dns_label) {
        None
    } else {
        Some(format!("{s:?} is not a valid DNS name; use {RULE}"))
    }
}

/// A reference to a service by name (`reviews`, or a dotted name such as `reviews.prod`).
pub(crate) fn service_ref_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must name a service".into());
    }
    dns_subdomain_problem(s)
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// Kubernetes' "qualified name" for label and annotation keys: an optional DNS-subdomain prefix
/// and `/`, then 1..=63 letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit.
pub(crate) fn label_key_problem(key: &str) -> Option<String> {
    const RULE: &str = "an optional DNS prefix and '/', then at most 63 letters, digits, \
                        '-', '_' or '.', starting and ending with a letter or digit \
                        (e.g. \"version\" or \"app.kubernetes.io/name\")";
    if key.is_empty() {
        return Some(format!("keys must not be empty; use {RULE}"));
    }
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if dns_subdomain_problem(p).is_some() {
            return Some(format!(
                "key {key:?} has an invalid prefix {p:?}; the prefix must be a lowercase DNS name"
            ));
        }
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
        && name.starts_with(is_alnum)
        && name.ends_with(is_alnum);
    if ok {
        None
    } else {
        Some(format!("key {key:?} is invalid; use {RULE}"))
    }
}

/// Label values: empty, or at most 63 letters, digits, `-`, `_`, `.`, starting and ending with a
/// letter or digit.
pub(crate) fn label_value_problem(key: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
        && value.starts_with(is_alnum)
        && value.ends_with(is_alnum);
    if ok {
        None
    } else {
        Some(format!(
            "value {value:?} of label {key:?} is invalid; use at most 63 letters, digits, '-', \
             '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// Checks every key and value of a label map under `path`.
pub(crate) fn labels(
    p: &mut Problems,
    path: &str,
    labels: &std::collections::BTreeMap<String, String>,
) {
    for (k, v) in labels {
        p.check(path, label_key_problem(k));
        p.check(path, label_value_problem(k, v));
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True when `s` is an RFC 9110 token (the syntax of header names and methods).
pub fn is_http_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// True when `s` can be an HTTP header name. Names compare case-insensitively; Trellis sends
/// them lowercase.
pub fn is_header_name(s: &str) -> bool {
    is_http_token(s)
}

pub(crate) fn header_name_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        Some("header names must not be empty".into())
    } else if !is_header_name(s) {
        Some(format!(
            "{s:?} is not a valid HTTP header name; use letters, digits and !#$%&'*+-.^_`|~ \
             (pseudo-headers such as \":authority\" cannot be used)"
        ))
    } else {
        None
    }
}

pub(crate) fn header_value_problem(v: &str) -> Option<String> {
    if v.contains(['\r', '\n', '\0']) {
        Some(format!(
            "header value {v:?} must not contain CR, LF or NUL characters"
        ))
    } else {
        None
    }
}

/// True when `s` is an uppercase HTTP method token (`GET`, `POST`, `PURGE`).
pub fn is_http_method(s: &str) -> bool {
    is_http_token(s) && !s.bytes().any(|b| b.is_ascii_lowercase())
}

pub(crate) fn method_problem(s: &str) -> Option<String> {
    if is_http_method(s) {
        None
    } else if is_http_token(s) {
        Some(format!(
            "{s:?} is not an uppercase HTTP method; methods are case-sensitive, write {:?}",
            s.to_ascii_uppercase()
        ))
    } else {
        Some(format!(
            "{s:?} is not an HTTP method; use an uppercase token such as GET, POST or DELETE"
        ))
    }
}

/// Compiles `pattern` with the same engine the proxy uses and reports the engine's error text.
pub(crate) fn regex_problem(pattern: &str) -> Option<String> {
    match regex::Regex::new(pattern) {
        Ok(_) => None,
        Err(e) => Some(format!("invalid regular expression {pattern:?}: {e}")),
    }
}

/// True when `s` contains whitespace or control characters.
pub(crate) fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A locality zone name: non-empty, no whitespace (`us-east-1a`).
pub(crate) fn zone_problem(zone: &str) -> Option<String> {
    if zone.is_empty() || has_space_or_control(zone) {
        Some(format!(
            "{zone:?} is not a zone name; use a non-empty name without spaces, e.g. \"us-east-1a\""
        ))
    } else {
        None
    }
}

/// A rule's optional name: not empty, and unique among the rules seen so far (`names` maps each
/// name to the index that used it first).
pub(crate) fn rule_name<'a>(
    p: &mut Problems,
    names: &mut std::collections::HashMap<&'a str, usize>,
    rp: &str,
    index: usize,
    name: Option<&'a str>,
) {
    let Some(name) = name else {
        return;
    };
    if name.is_empty() {
        p.add(
            format!("{rp}.name"),
            "must not be empty; omit it for an unnamed rule",
        );
    } else if let Some(first) = names.insert(name, index) {
        p.add(
            format!("{rp}.name"),
            format!(
                "rule name {name:?} is used twice (also spec.rules[{first}]); rule names must be unique"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "reviews", "v2", "us-east-1a", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        assert!(dns_subdomain_problem("reviews.prod.svc.cluster.local").is_none());
        assert!(dns_subdomain_problem("reviews..prod").is_some());
        assert!(dns_subdomain_problem(".reviews").is_some());
        assert!(dns_subdomain_problem(&"a.".repeat(200)).is_some());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key_problem("version").is_none());
        assert!(label_key_problem("app.kubernetes.io/name").is_none());
        assert!(label_key_problem("").is_some());
        assert!(label_key_problem("/name").is_some());
        assert!(label_key_problem("Bad Prefix/name").is_some());
        assert!(label_key_problem("a/").is_some());
        assert!(label_key_problem("-x").is_some());
        assert!(label_value_problem("k", "").is_none());
        assert!(label_value_problem("k", "v1.2_3-beta").is_none());
        assert!(label_value_problem("k", "has space").is_some());
        assert!(label_value_problem("k", "ends-").is_some());
    }

    #[test]
    fn tokens_methods_headers() {
        assert!(is_http_method("GET"));
        assert!(is_http_method("PURGE"));
        assert!(!is_http_method("get"));
        assert!(!is_http_method(""));
        assert!(!is_http_method("GE T"));
        assert!(method_problem("get").unwrap().contains("\"GET\""));
        assert!(is_header_name("x-request-id"));
        assert!(is_header_name("X-B3-TraceId"));
        assert!(!is_header_name(":authority"));
        assert!(!is_header_name("bad header"));
        assert!(!is_header_name(""));
        assert!(header_value_problem("ok value").is_none());
        assert!(header_value_problem("a\r\nb").is_some());
    }

    #[test]
    fn regexes() {
        assert!(regex_problem("^/api/v[0-9]+/").is_none());
        let msg = regex_problem("(unclosed").unwrap();
        assert!(msg.contains("unclosed"), "{msg}");
    }
}
