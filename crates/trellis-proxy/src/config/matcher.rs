//! Request matching for routes: path (exact, prefix by path element, full-match regex), method,
//! headers and query parameters, all compiled ahead of time.
use regex::Regex;
use trellis_api::route::{PathMatchType, RouteMatch, ValueMatch, ValueMatchType};

#[derive(Debug)]
pub enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatcher {
    /// The matched prefix length for prefix matches (used by prefix rewrites).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Prefix(p) => prefix_matches(p, path),
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

/// Gateway API semantics: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[derive(Debug)]
pub enum ValueCheck {
    Exact(String),
    Regex(Regex),
    Present,
}

#[derive(Debug)]
pub struct ValueMatcher {
    pub name: String,
    pub check: ValueCheck,
}

impl ValueMatcher {
    /// A header condition: header names compare case-insensitively, so the name is lowercased
    /// as `HeaderMap` keeps it.
    pub fn header(m: &ValueMatch) -> Result<Self, regex::Error> {
        Self::compile(m, m.name.to_ascii_lowercase())
    }

    /// A query parameter condition: names compare exactly (Gateway API: `ANIMAL` is not
    /// `animal`).
    pub fn query(m: &ValueMatch) -> Result<Self, regex::Error> {
        Self::compile(m, m.name.clone())
    }

    fn compile(m: &ValueMatch, name: String) -> Result<Self, regex::Error> {
        let value = m.value.clone().unwrap_or_default();
        let check = match m.kind {
            ValueMatchType::Exact => ValueCheck::Exact(value),
            ValueMatchType::RegularExpression => ValueCheck::Regex(full_match(&value)?),
            ValueMatchType::Present => ValueCheck::Present,
        };
        Ok(Self { name, check })
    }

    fn accepts(&self, value: Option<&str>) -> bool {
        match (&self.check, value) {
            (_, None) => false,
            (ValueCheck::Present, Some(_)) => true,
            (ValueCheck::Exact(want), Some(v)) => v == want,
            (ValueCheck::Regex(r), Some(v)) => r.is_match(v),
        }
    }

    pub fn matches_headers(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get_all(self.name.as_str())
            .iter()
            .any(|v| self.accepts(v.to_str().ok()))
    }

    pub fn matches_query(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        query.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            k == self.name && self.accepts(Some(v))
        })
    }
}

/// Anchors a user's regex so it must match the whole value, as Envoy does.
pub fn full_match(re: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
}

#[derive(Debug)]
pub struct RouteMatcher {
    pub path: Option<PathMatcher>,
    pub method: Option<http::Method>,
    pub headers: Vec<ValueMatcher>,
    pub query: Vec<ValueMatcher>,
}

impl RouteMatcher {
    pub fn compile(m: &RouteMatch) -> Result<Self, String> {
        let path = match &m.path {
            None => None,
            Some(p) => Some(match p.kind {
                PathMatchType::Exact => PathMatcher::Exact(p.value.clone()),
                PathMatchType::PathPrefix => PathMatcher::Prefix(p.value.clone()),
                PathMatchType::RegularExpression => PathMatcher::Regex(
                    full_match(&p.value).map_err(|e| format!("path regex: {e}"))?,
                ),
            }),
        };
        let method = match &m.method {
            None => None,
            Some(s) => Some(
                http::Method::from_bytes(s.as_bytes())
                    .map_err(|_| format!("invalid method {s:?}"))?,
            ),
        };
        type Compile = fn(&ValueMatch) -> Result<ValueMatcher, regex::Error>;
        let compile_all = |list: &[ValueMatch], compile: Compile, what: &str| {
            list.iter()
                .map(|v| compile(v).map_err(|e| format!("{what} {:?}: {e}", v.name)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            path,
            method,
            headers: compile_all(&m.headers, ValueMatcher::header, "header")?,
            query: compile_all(&m.query_params, ValueMatcher::query, "query parameter")?,
        })
    }

    pub fn matches<B>(&self, req: &http::Request<B>) -> bool {
        if let Some(p) = &self.path {
            if !p.matches(req.uri().path()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if req.method() != m {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|h| h.matches_headers(req.headers()))
            && self
                .query
                .iter()
                .all(|q| q.matches_query(req.uri().query()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_by_path_element() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(prefix_matches("/foo/", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn regex_is_anchored() {
        let r = full_match("/v[0-9]+").unwrap();
        assert!(r.is_match("/v12"));
        assert!(!r.is_match("/v12/x"));
    }

    #[test]
    fn query_and_headers() {
        let q = ValueMatcher::query(&ValueMatch {
            name: "user".into(),
            kind: ValueMatchType::Exact,
            value: Some("jason".into()),
        })
        .unwrap();
        assert!(q.matches_query(Some("a=1&user=jason")));
        assert!(!q.matches_query(Some("user=bob")));
        assert!(!q.matches_query(None));
        let h = ValueMatcher::header(&ValueMatch {
            name: "X-Canary".into(),
            kind: ValueMatchType::Present,
            value: None,
        })
        .unwrap();
        let mut headers = http::HeaderMap::new();
        assert!(!h.matches_headers(&headers));
        headers.insert("x-canary", http::HeaderValue::from_static("1"));
        assert!(h.matches_headers(&headers));
    }
}
