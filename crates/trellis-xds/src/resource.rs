//! `trellis.v1` resources on the wire: a compact envelope (`trellis.v1.Resource`: kind, namespace,
//! name, labels, annotations and the spec as JSON) inside a `google.protobuf.Any` whose type URL
//! names the kind (`type.googleapis.com/trellis.v1.Route`).
//!
//! Why JSON inside protobuf: the schema of every kind already lives in `trellis-api` (serde
//! structs with field-path errors and validation). Carrying the spec as JSON keeps one schema and
//! one validator for YAML files and for pushed config, while the envelope, the type URL and the
//! transport stay plain xDS. Decoding never trusts the wire: every resource is deserialized with
//! unknown fields refused and validated by `trellis_api::validate::resource`; a bad one is a
//! [`DecodeError`] naming the type URL, the resource and the field, never a panic.
//!
//! `metadata.resourceVersion` (the store revision) is deliberately not carried: the proxy has no
//! use for it, and leaving it out keeps a resource's bytes — and so its xDS version — unchanged
//! by writes that change nothing, so such writes push nothing.
use crate::pb::trellis::v1::Resource as Envelope;
use prost::Message;
use prost_types::Any;
use serde::de::DeserializeOwned;
use trellis_api::ca::TrustBundle;
use trellis_api::meta::{ObjectMeta, DEFAULT_NAMESPACE};
use trellis_api::ServiceAddress;
use trellis_api::{
    AuthorizationPolicy, Deployment, DestinationPolicy, ExternalService, MeshConfig,
    RateLimitPolicy, RequestAuthentication, Resource, Route, Service, Workload,
};
use trellis_api::{GRPCRoute, Gateway, HTTPRoute, TLSRoute};

/// Every Trellis type URL is this prefix followed by the kind.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/trellis.v1.";
pub const MESH_CONFIG: &str = "type.googleapis.com/trellis.v1.MeshConfig";
pub const SERVICE: &str = "type.googleapis.com/trellis.v1.Service";
pub const WORKLOAD: &str = "type.googleapis.com/trellis.v1.Workload";
pub const DESTINATION_POLICY: &str = "type.googleapis.com/trellis.v1.DestinationPolicy";
pub const ROUTE: &str = "type.googleapis.com/trellis.v1.Route";
pub const AUTHORIZATION_POLICY: &str = "type.googleapis.com/trellis.v1.AuthorizationPolicy";
pub const REQUEST_AUTHENTICATION: &str = "type.googleapis.com/trellis.v1.RequestAuthentication";
pub const RATE_LIMIT_POLICY: &str = "type.googleapis.com/trellis.v1.RateLimitPolicy";
pub const EXTERNAL_SERVICE: &str = "type.googleapis.com/trellis.v1.ExternalService";
pub const TRUST_BUNDLE: &str = "type.googleapis.com/trellis.v1.TrustBundle";
pub const SERVICE_ADDRESS: &str = "type.googleapis.com/trellis.v1.ServiceAddress";
/// Gateway API kinds: sent to every proxy (mesh-wide, like ExternalService), since a route's
/// parent service and backends are resolved by the proxy that compiles it.
pub const HTTP_ROUTE: &str = "type.googleapis.com/trellis.v1.HTTPRoute";
pub const GRPC_ROUTE: &str = "type.googleapis.com/trellis.v1.GRPCRoute";
pub const TLS_ROUTE: &str = "type.googleapis.com/trellis.v1.TLSRoute";
pub const GATEWAY: &str = "type.googleapis.com/trellis.v1.Gateway";

/// The types a Trellis proxy subscribes to, in the order the server sends them when several
/// change at once: what others refer to comes first (a Route's subsets are declared in its
/// service's DestinationPolicy, so the policy goes out before the route).
pub const TYPE_URLS: [&str; 15] = [
    MESH_CONFIG,
    TRUST_BUNDLE,
    SERVICE,
    SERVICE_ADDRESS,
    WORKLOAD,
    DESTINATION_POLICY,
    ROUTE,
    AUTHORIZATION_POLICY,
    REQUEST_AUTHENTICATION,
    RATE_LIMIT_POLICY,
    EXTERNAL_SERVICE,
    HTTP_ROUTE,
    GRPC_ROUTE,
    TLS_ROUTE,
    GATEWAY,
];

/// Why a received resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown type URL {type_url:?}: expected {TYPE_URL_PREFIX}<Kind>")]
    UnknownType { type_url: String },
    #[error("{type_url}: resource {name:?} is not a trellis.v1.Resource: {message}")]
    Protobuf {
        type_url: String,
        name: String,
        message: String,
    },
    #[error("{type_url}: resource {name:?} says kind {kind:?}, but its type URL means {expected}")]
    KindMismatch {
        type_url: String,
        name: String,
        kind: String,
        expected: String,
    },
    #[error("{type_url}: resource {name:?} arrived under the name {wire_name:?}")]
    NameMismatch {
        type_url: String,
        name: String,
        wire_name: String,
    },
    #[error("{type_url}: resource {name:?}: {problems}")]
    Invalid {
        type_url: String,
        name: String,
        /// `path: message` pairs joined by "; ".
        problems: String,
    },
}

/// The type URL of a kind (`Route` → `type.googleapis.com/trellis.v1.Route`).
pub fn type_url(kind: &str) -> String {
    format!("{TYPE_URL_PREFIX}{kind}")
}

/// The kind a Trellis type URL names, if it names one.
pub fn kind_of(type_url: &str) -> Option<&'static str> {
    let kind = type_url.strip_prefix(TYPE_URL_PREFIX)?;
    trellis_api::parse::KINDS
        .iter()
        .copied()
        .find(|k| *k == kind)
}

/// The xDS resource name of a Trellis resource: `namespace/name` (the kind is in the type URL).
pub fn resource_name(r: &Resource) -> String {
    let m = r.metadata();
    format!("{}/{}", m.namespace, m.name)
}

/// Wraps a resource for the wire.
pub fn encode(r: &Resource) -> Any {
    let m = r.metadata();
    // Serializing plain data structs with string map keys cannot fail; an empty spec would be
    // refused by the receiver's validation rather than applied.
    let spec_json = match r {
        Resource::Service(x) => serde_json::to_vec(&x.spec),
        Resource::Workload(x) => serde_json::to_vec(&x.spec),
        Resource::Route(x) => serde_json::to_vec(&x.spec),
        Resource::DestinationPolicy(x) => serde_json::to_vec(&x.spec),
        Resource::AuthorizationPolicy(x) => serde_json::to_vec(&x.spec),
        Resource::RequestAuthentication(x) => serde_json::to_vec(&x.spec),
        Resource::RateLimitPolicy(x) => serde_json::to_vec(&x.spec),
        Resource::ExternalService(x) => serde_json::to_vec(&x.spec),
        Resource::MeshConfig(x) => serde_json::to_vec(&x.spec),
        Resource::Deployment(x) => serde_json::to_vec(&x.spec),
        Resource::TrustBundle(x) => serde_json::to_vec(&x.spec),
        Resource::ServiceAddress(x) => serde_json::to_vec(&x.spec),
        Resource::HTTPRoute(x) => serde_json::to_vec(&x.spec),
        Resource::GRPCRoute(x) => serde_json::to_vec(&x.spec),
        Resource::TLSRoute(x) => serde_json::to_vec(&x.spec),
        Resource::Gateway(x) => serde_json::to_vec(&x.spec),
        // Holds private keys: never put on the wire, whatever asks for it.
        Resource::CertificateAuthority(_) => Ok(Vec::new()),
    }
    .unwrap_or_default();
    let envelope = Envelope {
        kind: r.kind().to_string(),
        namespace: m.namespace.clone(),
        name: m.name.clone(),
        spec_json,
        labels: m.labels.clone(),
        annotations: m.annotations.clone(),
    };
    Any {
        type_url: type_url(r.kind()),
        value: envelope.encode_to_vec(),
    }
}

/// Unwraps and validates a resource received from the wire.
pub fn decode(any: &Any) -> Result<Resource, DecodeError> {
    decode_named(any, None)
}

/// Like [`decode`], and checks that the resource is the one the delta response named.
pub fn decode_named(any: &Any, wire_name: Option<&str>) -> Result<Resource, DecodeError> {
    let type_url = any.type_url.as_str();
    let expected = kind_of(type_url).ok_or_else(|| DecodeError::UnknownType {
        type_url: type_url.to_string(),
    })?;
    let env = Envelope::decode(any.value.as_slice()).map_err(|e| DecodeError::Protobuf {
        type_url: type_url.to_string(),
        name: wire_name.unwrap_or_default().to_string(),
        message: e.to_string(),
    })?;
    let namespace = if env.namespace.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        env.namespace.clone()
    };
    let name = format!("{namespace}/{}", env.name);
    if env.kind != expected {
        return Err(DecodeError::KindMismatch {
            type_url: type_url.to_string(),
            name,
            kind: env.kind,
            expected: expected.to_string(),
        });
    }
    if let Some(wire) = wire_name.filter(|w| *w != name) {
        return Err(DecodeError::NameMismatch {
            type_url: type_url.to_string(),
            name,
            wire_name: wire.to_string(),
        });
    }
    let invalid = |problems: String| DecodeError::Invalid {
        type_url: type_url.to_string(),
        name: name.clone(),
        problems,
    };
    let mut metadata = ObjectMeta::new(env.name.clone());
    metadata.namespace = namespace.clone();
    metadata.labels = env.labels;
    metadata.annotations = env.annotations;
    let s = env.spec_json.as_slice();
    // Every kind is its metadata plus a spec read from the envelope's JSON.
    macro_rules! typed {
        ($kind:ident) => {
            Resource::$kind(
                $kind {
                    metadata,
                    spec: spec(s).map_err(invalid)?,
                }
                .into(),
            )
        };
    }
    let resource = match expected {
        "Service" => typed!(Service),
        "Workload" => typed!(Workload),
        "Route" => typed!(Route),
        "DestinationPolicy" => typed!(DestinationPolicy),
        "AuthorizationPolicy" => typed!(AuthorizationPolicy),
        "RequestAuthentication" => typed!(RequestAuthentication),
        "RateLimitPolicy" => typed!(RateLimitPolicy),
        "ExternalService" => typed!(ExternalService),
        "MeshConfig" => typed!(MeshConfig),
        "TrustBundle" => typed!(TrustBundle),
        "ServiceAddress" => typed!(ServiceAddress),
        "Deployment" => typed!(Deployment),
        // Status is computed when read, never carried.
        "HTTPRoute" => Resource::HTTPRoute(Box::new(HTTPRoute {
            metadata,
            spec: spec(s).map_err(invalid)?,
            status: None,
        })),
        "GRPCRoute" => Resource::GRPCRoute(Box::new(GRPCRoute {
            metadata,
            spec: spec(s).map_err(invalid)?,
            status: None,
        })),
        "TLSRoute" => Resource::TLSRoute(Box::new(TLSRoute {
            metadata,
            spec: spec(s).map_err(invalid)?,
            status: None,
        })),
        "Gateway" => Resource::Gateway(Box::new(Gateway {
            metadata,
            spec: spec(s).map_err(invalid)?,
            status: None,
        })),
        other => {
            return Err(invalid(format!(
                "kind {other} is kept by the control plane and never sent"
            )))
        }
    };
    let problems = trellis_api::validate::resource(&resource);
    if !problems.is_empty() {
        let text: Vec<String> = problems
            .into_iter()
            .map(|(path, message)| {
                if path.is_empty() {
                    message
                } else {
                    format!("{path}: {message}")
                }
            })
            .collect();
        return Err(invalid(text.join("; ")));
    }
    Ok(resource)
}

/// Deserializes a spec, naming the field path (`spec.rules[0].timeout`) on error.
fn spec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        format!("{path}: {}", e.into_inner())
    })?;
    de.end().map_err(|e| format!("spec: {e}"))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {team: books}}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: reviews}
spec:
  service: reviews
  rules:
    - backends: [{service: reviews}]
      timeout: 2s
---
apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {name: mesh}
spec: {}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: t}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 500ms}
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews, port: 8080}, percent: 5}}]
    backendRefs: [{name: reviews, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: t}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: reviews, port: 8443}]}]
"#;

    #[test]
    fn round_trip_keeps_every_field_but_the_store_revision() {
        let set = trellis_api::parse_documents("mesh.yaml", MESH).expect("valid");
        for r in &set.resources {
            let any = encode(r);
            assert_eq!(any.type_url, type_url(r.kind()));
            let back = decode_named(&any, Some(&resource_name(r))).expect("decodes");
            assert_eq!(&back, r);
        }
        let mut written = set.resources[0].clone();
        if let Resource::Service(s) = &mut written {
            s.metadata.resource_version = Some("42".into());
        }
        assert_eq!(encode(&written), encode(&set.resources[0]));
    }

    #[test]
    fn bad_input_is_an_error_naming_type_and_resource() {
        let garbage = Any {
            type_url: ROUTE.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        let e = decode(&garbage).unwrap_err().to_string();
        assert!(e.contains(ROUTE), "{e}");

        let unknown = Any {
            type_url: "type.googleapis.com/trellis.v1.Nope".into(),
            value: vec![],
        };
        assert!(matches!(
            decode(&unknown),
            Err(DecodeError::UnknownType { .. })
        ));

        let env = Envelope {
            kind: "Route".into(),
            namespace: "shop".into(),
            name: "reviews".into(),
            spec_json: br#"{"service":"reviews","rules":[{"backends":[{"service":"reviews","weight":"x"}]}]}"#.to_vec(),
            ..Default::default()
        };
        let any = Any {
            type_url: ROUTE.into(),
            value: env.encode_to_vec(),
        };
        let e = decode(&any).unwrap_err().to_string();
        assert!(e.contains("shop/reviews"), "{e}");
        assert!(e.contains("spec.rules[0].backends[0].weight"), "{e}");

        let wrong_kind = Any {
            type_url: SERVICE.into(),
            value: env.encode_to_vec(),
        };
        assert!(matches!(
            decode(&wrong_kind),
            Err(DecodeError::KindMismatch { .. })
        ));

        let set = trellis_api::parse_documents("mesh.yaml", MESH).expect("valid");
        let any = encode(&set.resources[0]);
        assert!(matches!(
            decode_named(&any, Some("shop/other")),
            Err(DecodeError::NameMismatch { .. })
        ));
    }

    #[test]
    fn validation_runs_on_decode() {
        let env = Envelope {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: "Not A DNS Label".into(),
            spec_json: br#"{"ports":[{"port":80}]}"#.to_vec(),
            ..Default::default()
        };
        let any = Any {
            type_url: SERVICE.into(),
            value: env.encode_to_vec(),
        };
        let e = decode(&any).unwrap_err();
        assert!(matches!(e, DecodeError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("metadata.name"), "{e}");
    }
}
