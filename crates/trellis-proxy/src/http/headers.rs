//! Header hygiene between hops: hop-by-hop headers are connection-scoped (RFC 9110 §7.6.1) and
//! must not be forwarded, except the pair that asks for a protocol upgrade.
use http::header::{self, HeaderMap, HeaderName};

const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a request asks for an HTTP/1.1 upgrade (WebSocket, h2c, ...).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, and any header the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive so the next hop can upgrade too.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // `te: trailers` is how gRPC clients say they accept trailers; anything else is hop-by-hop.
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
}

/// Rewrites the path: replaces the matched prefix when the rule matched on a prefix, the whole
/// path otherwise; the query string is kept.
pub fn rewrite_path(uri: &http::Uri, matched_prefix: Option<&str>, replacement: &str) -> String {
    let path = uri.path();
    let new_path = match matched_prefix {
        Some(prefix) => {
            let prefix = prefix.trim_end_matches('/');
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let joined = format!("{}{}", replacement.trim_end_matches('/'), rest);
            if joined.is_empty() {
                "/".to_string()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
        None => replacement.to_string(),
    };
    match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    }
}

/// Replaces the path and query of `uri` (scheme and authority kept).
pub fn set_path_and_query(
    uri: &mut http::Uri,
    path_and_query: http::uri::PathAndQuery,
) -> Result<(), http::uri::InvalidUriParts> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    *uri = http::Uri::from_parts(parts)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        h.insert(header::TE, "trailers, deflate".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key(header::CONNECTION));
        assert!(h.contains_key("x-kept"));
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn path_rewrites() {
        let uri: http::Uri = "/api/v1/items?x=1".parse().unwrap();
        assert_eq!(rewrite_path(&uri, Some("/api"), "/"), "/v1/items?x=1");
        assert_eq!(rewrite_path(&uri, Some("/api/v1"), "/v2"), "/v2/items?x=1");
        assert_eq!(rewrite_path(&uri, None, "/fixed"), "/fixed?x=1");
    }
}
