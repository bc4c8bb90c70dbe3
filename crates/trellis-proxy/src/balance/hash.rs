//! Stable hashing for consistent-hash balancing: the request's hash key and the ring positions.
//!
//! Ring-hash and Maglev only keep a client on the same endpoint if every proxy, of every build,
//! hashes the same key to the same number. `std`'s `DefaultHasher` makes no such promise across
//! Rust versions, so this module spells out its own: FNV-1a 64 over the bytes, followed by the
//! murmur3 64-bit finalizer, because FNV alone spreads short, similar inputs (ports, counters)
//! poorly over the high bits that ring lookups depend on.
use http::HeaderMap;
use std::net::IpAddr;
use trellis_api::policy::HashOn;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`, continuing from `state` (start with [`fnv1a`] for a fresh hash).
pub(crate) fn fnv1a_extend(mut state: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        state ^= u64::from(*b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// FNV-1a 64 of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(FNV_OFFSET, bytes)
}

/// The murmur3 `fmix64` finalizer: every input bit affects every output bit.
pub(crate) fn mix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash key of a request for ring-hash / Maglev balancing, or `None` when the request does
/// not carry what `hash_on` names (the balancer then picks at random).
///
/// Only the first field set in `hash_on` is used (validation allows exactly one): a header's
/// value (all values, in order, when repeated), a cookie's value from the `Cookie` header(s), or
/// the peer's IP address (an IPv4-mapped IPv6 address hashes as the IPv4 address).
pub fn hash_key(hash_on: &HashOn, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<u64> {
    if let Some(name) = &hash_on.header {
        return header_hash(headers, name);
    }
    if let Some(name) = &hash_on.cookie {
        return cookie_value(headers, name).map(|v| mix64(fnv1a(v)));
    }
    if hash_on.source_ip {
        return peer.map(ip_hash);
    }
    None
}

fn header_hash(headers: &HeaderMap, name: &str) -> Option<u64> {
    // An invalid header name simply finds nothing.
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let state = values.fold(FNV_OFFSET, |state, v| {
        // A separator byte that cannot occur in a header value keeps ["ab"] and ["a","b"] apart.
        fnv1a_extend(fnv1a_extend(state, v.as_bytes()), &[0])
    });
    Some(mix64(state))
}

/// The value of cookie `name` in the request's `Cookie` headers (`a=b; c=d`), quotes removed.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (key, rest) = pair.split_at(eq);
            if key.trim_ascii() != name.as_bytes() {
                return None;
            }
            let value = rest.get(1..).unwrap_or_default().trim_ascii();
            Some(strip_quotes(value))
        })
}

fn strip_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(a) => mix64(fnv1a(&a.octets())),
        IpAddr::V6(a) => mix64(fnv1a(&a.octets())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn on_header(name: &str) -> HashOn {
        HashOn {
            header: Some(name.into()),
            ..HashOn::default()
        }
    }

    fn on_cookie(name: &str) -> HashOn {
        HashOn {
            cookie: Some(name.into()),
            ..HashOn::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn header_value_is_hashed() {
        let on = on_header("x-user");
        let a = hash_key(&on, &headers(&[("x-user", "alice")]), None);
        let a2 = hash_key(&on, &headers(&[("X-User", "alice")]), None);
        let b = hash_key(&on, &headers(&[("x-user", "bob")]), None);
        assert!(a.is_some());
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(hash_key(&on, &headers(&[("other", "alice")]), None), None);
        // Repeated values all count, and do not collide with a concatenation.
        let ab = hash_key(&on, &headers(&[("x-user", "a"), ("x-user", "b")]), None);
        let joined = hash_key(&on, &headers(&[("x-user", "ab")]), None);
        assert_ne!(ab, joined);
        // An invalid header name finds nothing instead of panicking.
        assert_eq!(
            hash_key(&on_header("bad name"), &HeaderMap::new(), None),
            None
        );
    }

    #[test]
    fn cookie_value_is_found_in_any_cookie_header() {
        let on = on_cookie("session");
        let one = headers(&[("cookie", "a=1; session=abc; b=2")]);
        let split = headers(&[("cookie", "a=1"), ("cookie", "b=2;session = \"abc\"")]);
        let other = headers(&[("cookie", "session=xyz")]);
        let expected = Some(mix64(fnv1a(b"abc")));
        assert_eq!(hash_key(&on, &one, None), expected);
        assert_eq!(hash_key(&on, &split, None), expected);
        assert_ne!(hash_key(&on, &other, None), expected);
        assert_eq!(
            hash_key(&on, &headers(&[("cookie", "sessionid=abc; x")]), None),
            None
        );
        assert_eq!(hash_key(&on, &HeaderMap::new(), None), None);
    }

    #[test]
    fn source_ip_is_hashed() {
        let on = HashOn {
            source_ip: true,
            ..HashOn::default()
        };
        let none = HeaderMap::new();
        let v4 = IpAddr::from([10, 0, 0, 1]);
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let other = IpAddr::from([10, 0, 0, 2]);
        assert!(hash_key(&on, &none, Some(v4)).is_some());
        assert_eq!(
            hash_key(&on, &none, Some(v4)),
            hash_key(&on, &none, Some(mapped))
        );
        assert_ne!(
            hash_key(&on, &none, Some(v4)),
            hash_key(&on, &none, Some(other))
        );
        assert_eq!(hash_key(&on, &none, None), None);
        assert_eq!(hash_key(&HashOn::default(), &none, Some(v4)), None);
    }
}
