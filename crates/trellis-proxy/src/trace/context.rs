//! Trace context on the wire: W3C `traceparent`/`tracestate`, and B3 in its single-header
//! (`b3`) and multi-header (`x-b3-*`) forms, read from a request and written for the next hop.
//!
//! A hop writes the style the request came with, so a B3-only client keeps its trace through the
//! mesh (its app reads B3, not W3C); a request that came with none gets W3C. Anything malformed
//! (wrong lengths, not hex, all-zero ids, an unknown version) is treated as no context at all,
//! never as an error: the request goes on, in a new trace when it is sampled.
use http::{HeaderMap, HeaderValue};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    W3c,
    B3Single,
    B3Multi,
}

/// What a request said about its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: TraceId,
    /// The caller's span: the parent of the spans this hop makes.
    pub parent: SpanId,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
    pub style: Style,
    /// A B3 trace id of 64 bits is written back as 64 bits.
    pub short_b3: bool,
}

const TRACEPARENT: &str = "traceparent";
const B3: &str = "b3";
const B3_TRACE: &str = "x-b3-traceid";
const B3_SPAN: &str = "x-b3-spanid";
const B3_PARENT: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

fn hex_into(s: &str, out: &mut [u8]) -> bool {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
            Ok(v) => *byte = v,
            Err(_) => return false,
        }
    }
    out.iter().any(|b| *b != 0)
}

/// A trace id of 32 hex digits, or (B3) 16, right-aligned.
fn trace_id(s: &str, b3: bool) -> Option<(TraceId, bool)> {
    let mut id = [0u8; 16];
    if s.len() == 16 && b3 {
        return hex_into(s, &mut id[8..]).then_some((id, true));
    }
    hex_into(s, &mut id).then_some((id, false))
}

fn span_id(s: &str) -> Option<SpanId> {
    let mut id = [0u8; 8];
    hex_into(s, &mut id).then_some(id)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The trace context `h` carries: W3C first, then B3 single, then B3 multi.
pub fn extract(h: &HeaderMap) -> Option<Incoming> {
    w3c(h).or_else(|| b3_single(h)).or_else(|| b3_multi(h))
}

/// The trace id alone, in hex as logs show it: from `traceparent`, else `b3`, else
/// `x-b3-traceid` (a 64-bit B3 id stays 16 digits). Looser than [`extract`], which also needs
/// the caller's span to continue the trace: a log names the trace whatever else is missing.
pub fn trace_id_text(h: &HeaderMap) -> Option<String> {
    let w3c = header(h, TRACEPARENT)
        .and_then(|tp| tp.split('-').nth(1))
        .and_then(|id| trace_id(id, false));
    let (id, short) = w3c.or_else(|| {
        header(h, B3)
            .and_then(|v| v.split('-').next())
            .or_else(|| header(h, B3_TRACE))
            .and_then(|id| trace_id(id, true))
    })?;
    Some(if short { hex(&id[8..]) } else { hex(&id) })
}

fn w3c(h: &HeaderMap) -> Option<Incoming> {
    let mut parts = header(h, TRACEPARENT)?.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may append more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let (trace_id, _) = trace_id(trace, false)?;
    let parent = span_id(parent)?;
    if !(flags.len() == 2 && flags.bytes().all(|b| b.is_ascii_hexdigit())) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Incoming {
        trace_id,
        parent,
        sampled: Some(flags & 1 == 1),
        style: Style::W3c,
        short_b3: false,
    })
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn b3_single(h: &HeaderMap) -> Option<Incoming> {
    let mut parts = header(h, B3)?.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let (trace_id, short_b3) = trace_id(trace, true)?;
    Some(Incoming {
        trace_id,
        parent: span_id(span)?,
        sampled: parts.next().and_then(b3_sampled),
        style: Style::B3Single,
        short_b3,
    })
}

fn b3_multi(h: &HeaderMap) -> Option<Incoming> {
    let (trace_id, short_b3) = trace_id(header(h, B3_TRACE)?, true)?;
    let sampled = if header(h, B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        header(h, B3_SAMPLED).and_then(b3_sampled)
    };
    Some(Incoming {
        trace_id,
        parent: span_id(header(h, B3_SPAN)?)?,
        sampled,
        style: Style::B3Multi,
        short_b3,
    })
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Writes the context for the next hop: `trace_id`, with `span` (this hop's span) as the parent,
/// in `style` (dropping other styles' headers, so the next hop never reads a stale parent).
pub fn inject(h: &mut HeaderMap, trace_id: &TraceId, span: &SpanId, style: Style, short_b3: bool) {
    let trace = if short_b3 {
        hex(&trace_id[8..])
    } else {
        hex(trace_id)
    };
    let span = hex(span);
    for name in [
        TRACEPARENT,
        B3,
        B3_TRACE,
        B3_SPAN,
        B3_PARENT,
        B3_SAMPLED,
        B3_FLAGS,
    ] {
        h.remove(name);
    }
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    match style {
        Style::W3c => put(TRACEPARENT, format!("00-{trace}-{span}-01")),
        Style::B3Single => put(B3, format!("{trace}-{span}-1")),
        Style::B3Multi => {
            put(B3_TRACE, trace);
            put(B3_SPAN, span);
            put(B3_SAMPLED, "1".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn w3c_is_read_and_written_back_with_the_new_parent() {
        let mut h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let c = extract(&h).unwrap();
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&c.parent), "00f067aa0ba902b7");
        assert_eq!((c.sampled, c.style), (Some(true), Style::W3c));
        inject(
            &mut h,
            &c.trace_id,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            c.style,
            c.short_b3,
        );
        assert_eq!(
            h["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        let unsampled = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        assert_eq!(extract(&unsampled).unwrap().sampled, Some(false));
    }

    #[test]
    fn b3_single_and_multi_keep_their_style_and_id_length() {
        let mut h = headers(&[("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1")]);
        let c = extract(&h).unwrap();
        assert_eq!(
            (c.style, c.short_b3, c.sampled),
            (Style::B3Single, true, Some(true))
        );
        inject(&mut h, &c.trace_id, &[0xab; 8], c.style, c.short_b3);
        assert_eq!(h["b3"], "80f198ee56343ba8-abababababababab-1");
        assert!(h.get("traceparent").is_none(), "a B3 client gets B3 back");

        let mut h = headers(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "0"),
        ]);
        let c = extract(&h).unwrap();
        assert_eq!(
            (c.style, c.short_b3, c.sampled),
            (Style::B3Multi, false, Some(false))
        );
        inject(&mut h, &c.trace_id, &[0xcd; 8], c.style, c.short_b3);
        assert_eq!(h["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(h["x-b3-spanid"], "cdcdcdcdcdcdcdcd");
        assert!(h.get("x-b3-parentspanid").is_none(), "no stale parent");
    }

    #[test]
    fn malformed_context_is_no_context() {
        for (name, value) in [
            (
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ),
            (
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            ),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            ),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            ),
            ("traceparent", "garbage"),
            ("b3", "xyz-e457b5a2e4d86bd1-1"),
            ("b3", "80f198ee56343ba8"),
            ("x-b3-traceid", "80f198ee56343ba8"),
        ] {
            assert_eq!(extract(&headers(&[(name, value)])), None, "{name}: {value}");
        }
        assert_eq!(extract(&HeaderMap::new()), None);
    }

    #[test]
    fn trace_ids_from_w3c_then_b3_only_when_well_formed() {
        let w3c = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_text(&headers(&[("traceparent", w3c)])).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
        assert_eq!(
            trace_id_text(&headers(&[("b3", b3)])).as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        assert_eq!(
            trace_id_text(&headers(&[("x-b3-traceid", "463ac35c9f6413ad")])).as_deref(),
            Some("463ac35c9f6413ad")
        );
        // Bad traceparent ids (all zeros, wrong length, not hex) fall through to B3 or nothing.
        let zeros = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(trace_id_text(&headers(&[("traceparent", zeros)])), None);
        assert_eq!(
            trace_id_text(&headers(&[("traceparent", "00-abc-def-01")])),
            None
        );
        assert_eq!(
            trace_id_text(&headers(&[
                ("traceparent", "garbage"),
                ("x-b3-traceid", "463ac35c9f6413ad")
            ]))
            .as_deref(),
            Some("463ac35c9f6413ad")
        );
        assert_eq!(trace_id_text(&headers(&[("b3", "zz-yy")])), None);
        assert_eq!(trace_id_text(&HeaderMap::new()), None);
    }
}
