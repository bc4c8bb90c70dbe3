//! `MeshConfig.spec.telemetry.accessLog`: whether sidecars write one JSON line per request and
//! per TCP connection, for which share of them, with which fields, and where.
//!
//! Off by default, as in Istio and Linkerd: a line per request costs CPU and disk a mesh should
//! choose to spend. `accessLog: true` (the short form) means every request, every field, to
//! standard output, which is where a container's or a systemd unit's logs are collected.
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where the lines go when `output` is not a file path.
pub const STDOUT: &str = "stdout";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Share of requests and connections logged, 0.0..=100.0 (each one drawn at random).
    #[serde(default = "all")]
    pub sample_percent: f64,
    /// The fields each line carries, in this order; empty means all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<AccessLogField>,
    /// `stdout`, or an absolute path of a file lines are appended to.
    #[serde(default = "stdout")]
    pub output: String,
}

fn all() -> f64 {
    100.0
}

fn stdout() -> String {
    STDOUT.into()
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sample_percent: all(),
            fields: Vec::new(),
            output: stdout(),
        }
    }
}

/// A field of an access-log line (its JSON key is the camelCase name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccessLogField {
    /// When the request (or connection) began, RFC 3339 in UTC.
    Time,
    /// `http` or `tcp`.
    Kind,
    /// `inbound` or `outbound`.
    Direction,
    /// The W3C `traceparent` or B3 trace id the request carried.
    TraceId,
    /// `x-request-id` (the sidecar makes one when a request has none).
    RequestId,
    /// The downstream peer's address.
    Source,
    /// The downstream peer's verified SPIFFE identity (mTLS).
    SourceIdentity,
    /// The service the request went to (`namespace/name`).
    Destination,
    /// The route rule that matched (outbound).
    Route,
    Method,
    /// The path without the query.
    Path,
    Authority,
    /// `HTTP/1.1`, `HTTP/2`.
    Protocol,
    Status,
    GrpcStatus,
    /// The `trellis-error` reason when the sidecar answered, else empty.
    Reason,
    /// Body bytes from the downstream peer.
    BytesReceived,
    /// Body bytes to the downstream peer.
    BytesSent,
    /// Milliseconds to the end of the response body (or the connection's lifetime).
    DurationMs,
    /// Milliseconds to the response headers.
    ResponseHeadersMs,
    /// Tries made upstream (1 without retries).
    Attempts,
}

impl AccessLogField {
    /// Every field, in the order a line lists them by default.
    pub const ALL: [AccessLogField; 21] = [
        Self::Time,
        Self::Kind,
        Self::Direction,
        Self::TraceId,
        Self::RequestId,
        Self::Source,
        Self::SourceIdentity,
        Self::Destination,
        Self::Route,
        Self::Method,
        Self::Path,
        Self::Authority,
        Self::Protocol,
        Self::Status,
        Self::GrpcStatus,
        Self::Reason,
        Self::BytesReceived,
        Self::BytesSent,
        Self::DurationMs,
        Self::ResponseHeadersMs,
        Self::Attempts,
    ];

    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Time => "time",
            Self::Kind => "kind",
            Self::Direction => "direction",
            Self::TraceId => "traceId",
            Self::RequestId => "requestId",
            Self::Source => "source",
            Self::SourceIdentity => "sourceIdentity",
            Self::Destination => "destination",
            Self::Route => "route",
            Self::Method => "method",
            Self::Path => "path",
            Self::Authority => "authority",
            Self::Protocol => "protocol",
            Self::Status => "status",
            Self::GrpcStatus => "grpcStatus",
            Self::Reason => "reason",
            Self::BytesReceived => "bytesReceived",
            Self::BytesSent => "bytesSent",
            Self::DurationMs => "durationMs",
            Self::ResponseHeadersMs => "responseHeadersMs",
            Self::Attempts => "attempts",
        }
    }
}

/// `true`/`false`, or the full form.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AccessLogConfig, D::Error> {
    struct ShortOrFull;
    impl<'de> Visitor<'de> for ShortOrFull {
        type Value = AccessLogConfig;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true, false, or {enabled, samplePercent, fields, output}")
        }

        fn visit_bool<E: de::Error>(self, enabled: bool) -> Result<AccessLogConfig, E> {
            Ok(AccessLogConfig {
                enabled,
                ..AccessLogConfig::default()
            })
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AccessLogConfig, A::Error> {
            AccessLogConfig::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(ShortOrFull)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AccessLogConfig, String> {
        #[derive(Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "deserialize")]
            v: AccessLogConfig,
        }
        serde_yaml_ng::from_str::<Holder>(yaml)
            .map(|h| h.v)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_short_form_and_the_full_form() {
        assert!(parse("v: true").unwrap().enabled);
        assert_eq!(parse("v: false").unwrap(), AccessLogConfig::default());
        let full =
            parse("v: {enabled: true, samplePercent: 5, fields: [time, traceId], output: /x.log}")
                .unwrap();
        assert_eq!(full.sample_percent, 5.0);
        assert_eq!(full.fields, [AccessLogField::Time, AccessLogField::TraceId]);
        assert_eq!(full.output, "/x.log");
    }

    #[test]
    fn unknown_fields_and_keys_are_named() {
        let e = parse("v: {enabled: true, fields: [tiem]}").unwrap_err();
        assert!(e.contains("tiem"), "{e}");
        let e = parse("v: {enabeld: true}").unwrap_err();
        assert!(e.contains("enabeld"), "{e}");
        let e = parse("v: yes please").unwrap_err();
        assert!(e.contains("true, false, or"), "{e}");
    }

    #[test]
    fn every_field_has_its_own_key() {
        let keys: std::collections::BTreeSet<_> =
            AccessLogField::ALL.iter().map(|f| f.key()).collect();
        assert_eq!(keys.len(), AccessLogField::ALL.len());
        for f in AccessLogField::ALL {
            assert_eq!(serde_json::to_value(f).unwrap(), f.key());
        }
    }
}
