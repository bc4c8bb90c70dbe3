//! Telling apart requests a web browser could have sent on a web page's behalf, so that
//! state-changing endpoints can refuse them.
//!
//! Why: a page the operator opens in a browser can make the browser send requests to
//! `127.0.0.1` (or, by DNS rebinding, to a name of its own that resolves there). The requests a
//! page can send *without a CORS preflight* are "simple" ones: GET, HEAD or POST with no custom
//! headers and a body of type `application/x-www-form-urlencoded`, `multipart/form-data` or
//! `text/plain` (an HTML form, `fetch(..., {mode: "no-cors"})`, `navigator.sendBeacon`). The
//! server never gets to say no to those before they act. So a state-changing endpoint refuses a
//! request that:
//!
//! - carries `Origin`, `Sec-Fetch-Site` or `Sec-Fetch-Mode`: browsers add these to cross-origin
//!   and to non-GET requests; command-line clients (`curl`, the Trellis CLI) never send them;
//! - has one of the three "simple" form content types: a real client of a Trellis endpoint
//!   sends no body or JSON;
//! - (where [`check_host`] applies, on loopback ports) names a `Host` that is neither an IP
//!   literal nor `localhost`: after DNS rebinding the browser still sends the attacker's name.
//!
//! Plain `curl -X POST http://127.0.0.1:15000/shutdown` passes every check.
use http::header::{HeaderMap, CONTENT_TYPE, HOST};
use http::Uri;
use std::net::IpAddr;

/// Why a request was refused; `Display` is the one-line reason for the 403 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserRefusal {
    /// The named header is one only browsers send.
    BrowserHeader(&'static str),
    /// A content type an HTML form or a no-CORS fetch can send.
    FormContentType(String),
    /// A `Host` that is not an IP literal or `localhost` (DNS rebinding).
    Host(String),
}

impl std::fmt::Display for BrowserRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrowserRefusal::BrowserHeader(h) => write!(
                f,
                "refused: the request carries `{h}`, which browsers send on a web page's behalf; send it from a command-line client"
            ),
            BrowserRefusal::FormContentType(t) => write!(
                f,
                "refused: content type `{t}` is one a web page can send cross-origin; send no body (curl -X POST) or JSON"
            ),
            BrowserRefusal::Host(h) => write!(
                f,
                "refused: Host `{h}` is not an IP address or localhost (DNS rebinding guard); call this port by its IP address"
            ),
        }
    }
}

const BROWSER_HEADERS: [&str; 3] = ["origin", "sec-fetch-site", "sec-fetch-mode"];
const FORM_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// Refuses requests a browser could have sent without a CORS preflight (see the module docs).
/// Checks `Host` (and an absolute request target's authority) only when `check_host` is set.
pub fn refuse_browser_request(
    headers: &HeaderMap,
    uri: &Uri,
    check_host: bool,
) -> Result<(), BrowserRefusal> {
    if let Some(h) = BROWSER_HEADERS.iter().find(|h| headers.contains_key(**h)) {
        return Err(BrowserRefusal::BrowserHeader(h));
    }
    for value in headers.get_all(CONTENT_TYPE) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let media = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if FORM_TYPES.contains(&media.as_str()) {
            return Err(BrowserRefusal::FormContentType(media));
        }
    }
    if check_host {
        let hosts = headers
            .get_all(HOST)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .chain(uri.authority().map(|a| a.as_str().to_string()));
        for host in hosts {
            if !is_local_host(&host) {
                return Err(BrowserRefusal::Host(host));
            }
        }
    }
    Ok(())
}

/// Whether a `Host` value (with or without a port) is an IP literal or `localhost`.
pub fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || is_port(tail) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// `:` followed by 1 to 5 digits.
fn is_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pairs: &[(&str, &str)], host_rule: bool) -> Result<(), BrowserRefusal> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        refuse_browser_request(&h, &Uri::from_static("/shutdown"), host_rule)
    }

    #[test]
    fn curl_passes() {
        assert_eq!(check(&[("host", "127.0.0.1:15000")], true), Ok(()));
        assert_eq!(check(&[("host", "localhost:15000")], true), Ok(()));
        assert_eq!(check(&[("host", "[::1]:15000")], true), Ok(()));
        assert_eq!(check(&[("host", "10.0.0.7")], true), Ok(()));
        assert_eq!(check(&[], true), Ok(()));
        assert_eq!(check(&[("content-type", "application/json")], true), Ok(()));
        // Without the host rule any name is fine (the control plane is called by DNS name).
        assert_eq!(
            check(&[("host", "control.mesh.internal:15010")], false),
            Ok(())
        );
    }

    #[test]
    fn browser_requests_are_refused() {
        assert_eq!(
            check(&[("origin", "http://evil.example")], false),
            Err(BrowserRefusal::BrowserHeader("origin"))
        );
        assert_eq!(
            check(&[("sec-fetch-site", "cross-site")], false),
            Err(BrowserRefusal::BrowserHeader("sec-fetch-site"))
        );
        assert_eq!(
            check(&[("sec-fetch-mode", "no-cors")], false),
            Err(BrowserRefusal::BrowserHeader("sec-fetch-mode"))
        );
        for t in [
            "application/x-www-form-urlencoded",
            "Multipart/Form-Data; boundary=x",
            "text/plain;charset=UTF-8",
        ] {
            let r = check(&[("content-type", t)], false);
            assert!(matches!(r, Err(BrowserRefusal::FormContentType(_))), "{t}");
        }
        for h in [
            "evil.example",
            "evil.example:15000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1]x",
            "127.0.0.1:port",
        ] {
            let r = check(&[("host", h)], true);
            assert_eq!(r, Err(BrowserRefusal::Host(h.into())), "{h}");
        }
        let line = check(&[("host", "evil.example")], true)
            .unwrap_err()
            .to_string();
        assert!(
            line.contains("DNS rebinding") && !line.contains('\n'),
            "{line}"
        );
    }

    #[test]
    fn absolute_targets_are_checked_too() {
        let h = HeaderMap::new();
        let uri = Uri::from_static("http://evil.example/shutdown");
        assert!(refuse_browser_request(&h, &uri, true).is_err());
        let uri = Uri::from_static("http://127.0.0.1:15000/shutdown");
        assert!(refuse_browser_request(&h, &uri, true).is_ok());
    }
}
