//! Header hygiene between hops: hop-by-hop headers are connection-scoped (RFC 9110 §7.6.1) and
//! must not be forwarded, except the pair that asks for a protocol upgrade.
use crate::error::{ProxyError, Reason};
use http::header::{self, HeaderMap, HeaderName};
use trellis_api::service::{permits_upgrade, DEFAULT_UPGRADES};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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

/// What becomes of a request that asks to upgrade, given the protocols its port permits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeVerdict {
    /// Upgrade to one of the permitted protocols left in the `Upgrade` header.
    Forward,
    /// Only `h2c` was asked for: the upgrade is stripped and the request served as plain
    /// HTTP/1.1 (Envoy's behaviour), so it can never become an unauthorized HTTP/2 pipe.
    Strip,
    /// Only protocols the port does not permit were asked for (named here).
    Refuse(String),
}

/// The protocols an `Upgrade` header names (`websocket`, `h2c`, `foo/2`), in order.
pub fn upgrade_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// An upgrade token's protocol name, without its `/version`, lower-cased.
fn protocol_name(token: &str) -> String {
    token
        .split('/')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Keeps in the `Upgrade` header only the protocols `permitted` accepts (matched on the name
/// before any `/version`) and says what to do with the request. Call only for upgrade requests.
pub fn vet_upgrade(headers: &mut HeaderMap, permitted: impl Fn(&str) -> bool) -> UpgradeVerdict {
    let tokens = upgrade_tokens(headers);
    let kept: Vec<&str> = tokens
        .iter()
        .map(String::as_str)
        .filter(|t| permitted(&protocol_name(t)))
        .collect();
    if !kept.is_empty() {
        let joined = kept.join(", ");
        return match http::HeaderValue::from_str(&joined) {
            Ok(v) => {
                headers.insert(header::UPGRADE, v);
                UpgradeVerdict::Forward
            }
            Err(_) => UpgradeVerdict::Refuse(joined),
        };
    }
    if tokens.iter().all(|t| protocol_name(t) == "h2c") {
        headers.remove(header::UPGRADE);
        headers.remove("http2-settings");
        return UpgradeVerdict::Strip;
    }
    UpgradeVerdict::Refuse(tokens.join(", "))
}

/// Vets an upgrade request against the protocols its port permits (`None`: the default set):
/// `Ok(true)` to upgrade, `Ok(false)` to serve it as a plain request (h2c stripped), `Err` to
/// refuse it.
pub fn admit_upgrade(
    headers: &mut HeaderMap,
    permitted: Option<&[String]>,
) -> Result<bool, ProxyError> {
    match vet_upgrade(headers, |t| permits_upgrade(permitted, t)) {
        UpgradeVerdict::Forward => Ok(true),
        UpgradeVerdict::Strip => Ok(false),
        UpgradeVerdict::Refuse(asked) => Err(ProxyError::new(
            Reason::UpgradeRefused,
            format!(
                "upgrade to {asked} is not permitted on this port (permitted: {}); \
                 list it in the Service's spec.ports[].upgrades",
                permitted
                    .map(|p| p.join(", "))
                    .unwrap_or_else(|| DEFAULT_UPGRADES.join(", "))
            ),
        )),
    }
}

/// Whether a `101` answer switched to one protocol the request offered (after vetting).
pub fn upgrade_answer_matches(offered: &[String], response: &HeaderMap) -> bool {
    match upgrade_tokens(response).as_slice() {
        [answered] => offered
            .iter()
            .any(|o| protocol_name(o) == protocol_name(answered)),
        _ => false,
    }
}

/// Removes hop-by-hop headers, and any header the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive so the next hop can upgrade too.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Nearly every message has one `Connection` header or none: its value is taken out (a
    // cheap clone) and its tokens removed by `&str`, which parses each name on the stack.
    // Several `Connection` headers are copied out first.
    let mut values = headers.get_all(header::CONNECTION).iter();
    match (values.next().cloned(), values.next()) {
        (None, _) => {}
        (Some(only), None) => remove_named(headers, &only, keep_upgrade),
        (Some(_), Some(_)) => {
            let all: Vec<_> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            for v in &all {
                remove_named(headers, v, keep_upgrade);
            }
        }
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
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

/// Removes the headers a `Connection` value names (a token that is no header name is skipped),
/// except `Upgrade` with `keep_upgrade`.
fn remove_named(headers: &mut HeaderMap, connection: &http::HeaderValue, keep_upgrade: bool) {
    let Ok(v) = connection.to_str() else {
        return;
    };
    for token in v.split(',').map(str::trim) {
        if keep_upgrade && token.eq_ignore_ascii_case("upgrade") {
            continue;
        }
        headers.remove(token);
    }
}

/// The request's `:authority` (its target's, HTTP/2's or an absolute HTTP/1 target's), or its
/// `Host` header.
pub fn authority<B>(req: &http::Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
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

    fn upgrade_headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "Upgrade, HTTP2-Settings".parse().unwrap(),
        );
        h.insert(header::UPGRADE, value.parse().unwrap());
        h.insert("http2-settings", "AAMAAABkAAQAAP__".parse().unwrap());
        h
    }

    fn websocket_only(t: &str) -> bool {
        t.eq_ignore_ascii_case("websocket")
    }

    #[test]
    fn h2c_upgrades_are_stripped_and_others_refused() {
        let mut h = upgrade_headers("h2c");
        assert_eq!(vet_upgrade(&mut h, websocket_only), UpgradeVerdict::Strip);
        assert!(!h.contains_key(header::UPGRADE));
        assert!(!h.contains_key("http2-settings"));

        let mut h = upgrade_headers("foo, h2c");
        assert_eq!(
            vet_upgrade(&mut h, websocket_only),
            UpgradeVerdict::Refuse("foo, h2c".into())
        );

        let mut h = upgrade_headers("h2c, WebSocket");
        assert_eq!(vet_upgrade(&mut h, websocket_only), UpgradeVerdict::Forward);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "WebSocket");
        assert!(upgrade_answer_matches(
            &upgrade_tokens(&h),
            &upgrade_headers("websocket")
        ));
        assert!(!upgrade_answer_matches(
            &upgrade_tokens(&h),
            &upgrade_headers("h2c")
        ));
    }

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

        // Several `Connection` headers, names in any case, empty and invalid tokens.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "X-One, , bad name".parse().unwrap());
        h.append(header::CONNECTION, "x-two,Upgrade".parse().unwrap());
        for name in ["x-one", "x-two", "x-three"] {
            h.insert(name, "1".parse().unwrap());
        }
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        assert!(!h.contains_key("x-one") && !h.contains_key("x-two"));
        assert!(h.contains_key("x-three"));
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get_all(header::CONNECTION).iter().count(), 1);
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
