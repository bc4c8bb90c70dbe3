//! Hostnames as the Gateway API matches them: a listener's `hostname` intersected with each
//! attached route's `hostnames`, and a request's `Host` (or a connection's SNI) looked up among
//! the results, the most specific first (an exact name, then the longest wildcard suffix, then a
//! catch-all).
//!
//! A wildcard `*.example.com` matches one or more labels in front of `example.com`
//! (`a.example.com`, `a.b.example.com`) and never `example.com` itself, as the spec says.
//! Everything here is pure and total: any string from the network is looked up, nothing panics.
use std::collections::HashMap;

/// `host` lowercased, without a port and without a trailing dot.
pub fn normalize(host: &str) -> String {
    let (name, _) = crate::config::split_host_port(host);
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `pattern` (exact, `*.suffix`, or `*`) matches the name `host` (normalized).
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        // `*.example.com`: `.example.com` must end a longer name.
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The hostnames a route attached to a listener serves: the spec's intersection of the
/// listener's `hostname` (`None`: any) and the route's `hostnames` (empty: any). `["*"]` when
/// both allow anything; empty when they share no name (the route does not attach).
pub fn intersect(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let listener = listener.map(|l| l.to_ascii_lowercase());
    let route: Vec<String> = route.iter().map(|r| r.to_ascii_lowercase()).collect();
    match (listener, route.is_empty()) {
        (None, true) => vec!["*".to_string()],
        (None, false) => route,
        (Some(l), true) => vec![l],
        (Some(l), false) => {
            let mut out = Vec::new();
            for r in route {
                let name = if r == l
                    || (l.starts_with('*')
                        && matches(&l, r.trim_start_matches("*."))
                        && (!r.starts_with('*') || r.len() >= l.len()))
                {
                    // The route's name is as specific as the listener's, or more.
                    Some(r)
                } else if r.starts_with('*') && matches(&r, l.trim_start_matches("*.")) {
                    // The route's wildcard covers the listener's name: the listener's is used.
                    Some(l.clone())
                } else {
                    None
                };
                if let Some(n) = name {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
            }
            out
        }
    }
}

/// Values by hostname pattern, looked up by a request's name (see the module docs).
#[derive(Debug, Clone)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    /// `(".example.com", value)`, longest suffix first.
    wildcard: Vec<(String, T)>,
    any: Option<T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: None,
        }
    }
}

impl<T> HostTable<T> {
    /// Adds `value` under `pattern`; the first value added under a pattern stays.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let pattern = pattern.to_ascii_lowercase();
        if pattern == "*" {
            if self.any.is_none() {
                self.any = Some(value);
            }
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            if !self.wildcard.iter().any(|(s, _)| s == suffix) {
                self.wildcard.push((suffix.to_string(), value));
                self.wildcard
                    .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
            }
        } else {
            self.exact.entry(pattern).or_insert(value);
        }
    }

    /// The most specific value whose pattern matches `host` (normalized: see [`normalize`]).
    pub fn lookup(&self, host: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, v)| v)
            .or(self.any.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact
            .values()
            .chain(self.wildcard.iter().map(|(_, v)| v))
            .chain(self.any.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn wildcards_match_one_or_more_labels() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "aexample.com"));
        assert!(matches("*", ""));
        assert!(matches("a.example.com", "a.example.com"));
    }

    #[test]
    fn normalizes_ports_case_and_dots() {
        assert_eq!(normalize("A.Example.COM:8443"), "a.example.com");
        assert_eq!(normalize("a.example.com."), "a.example.com");
        assert_eq!(normalize("[::1]:80"), "::1");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn intersection_follows_the_spec() {
        assert_eq!(intersect(None, &[]), s(&["*"]));
        assert_eq!(intersect(None, &s(&["a.x"])), s(&["a.x"]));
        assert_eq!(intersect(Some("a.x"), &[]), s(&["a.x"]));
        assert_eq!(intersect(Some("a.x"), &s(&["a.x", "b.x"])), s(&["a.x"]));
        // A wildcard listener keeps the route's more specific names.
        assert_eq!(
            intersect(Some("*.x"), &s(&["a.x", "b.y", "*.a.x"])),
            s(&["a.x", "*.a.x"])
        );
        // A route wildcard covering the listener's name gives the listener's name.
        assert_eq!(intersect(Some("a.x"), &s(&["*.x"])), s(&["a.x"]));
        assert!(intersect(Some("a.x"), &s(&["b.x"])).is_empty());
        assert!(intersect(Some("*.x"), &s(&["x"])).is_empty());
    }

    #[test]
    fn lookup_prefers_exact_then_longest_wildcard_then_any() {
        let mut t = HostTable::default();
        t.insert("*", 0);
        t.insert("*.example.com", 1);
        t.insert("*.api.example.com", 2);
        t.insert("www.example.com", 3);
        assert_eq!(t.lookup("www.example.com"), Some(&3));
        assert_eq!(t.lookup("v1.api.example.com"), Some(&2));
        assert_eq!(t.lookup("shop.example.com"), Some(&1));
        assert_eq!(t.lookup("other.org"), Some(&0));
        let mut t = HostTable::default();
        t.insert("a.x", 1);
        assert_eq!(t.lookup("b.x"), None);
        assert_eq!(t.lookup("\u{0}\u{ffff}"), None);
    }
}
