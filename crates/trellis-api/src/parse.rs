//! Multi-document YAML to typed resources.
//!
//! Each document is read as a generic YAML value first (so syntax errors keep their line), then
//! dispatched on `kind` and deserialized with `serde_path_to_error` (so a type error names its
//! field path), then validated. Unknown fields are errors, not silently dropped.
use crate::address::ServiceAddress;
use crate::ca::{CertificateAuthority, TrustBundle};
use crate::error::{ConfigError, FieldError};
use crate::external::ExternalService;
use crate::gateway_api::{api_version_of, GRPCRoute, Gateway, HTTPRoute, TLSRoute};
use crate::limits::{
    prescan, written_back, yaml_limit, Exceeded, Limit, Limits, Measure, NodeBudget,
};
use crate::mesh::{Deployment, MeshConfig};
use crate::meta::{ObjectMeta, API_VERSION};
use crate::policy::DestinationPolicy;
use crate::ratelimit::RateLimitPolicy;
use crate::route::Route;
use crate::security::{AuthorizationPolicy, RequestAuthentication};
use crate::service::{Service, Workload};
use crate::validate;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

pub use crate::limits::MAX_SOURCE_BYTES;

/// Every kind Trellis knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Service(Service),
    Workload(Workload),
    Route(Route),
    /// Boxed, as MeshConfig: large kinds would size every resource held (a sidecar holds
    /// thousands of Workloads) to themselves.
    DestinationPolicy(Box<DestinationPolicy>),
    AuthorizationPolicy(AuthorizationPolicy),
    RequestAuthentication(RequestAuthentication),
    RateLimitPolicy(RateLimitPolicy),
    ExternalService(ExternalService),
    MeshConfig(Box<MeshConfig>),
    Deployment(Deployment),
    TrustBundle(TrustBundle),
    CertificateAuthority(CertificateAuthority),
    ServiceAddress(ServiceAddress),
    /// Gateway API kinds (`gateway.networking.k8s.io`), boxed for size.
    HTTPRoute(Box<HTTPRoute>),
    GRPCRoute(Box<GRPCRoute>),
    TLSRoute(Box<TLSRoute>),
    Gateway(Box<Gateway>),
}

/// The kinds, in the order `trellis get` lists them.
pub const KINDS: &[&str] = &[
    "MeshConfig",
    "Service",
    "Workload",
    "Route",
    "DestinationPolicy",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "RateLimitPolicy",
    "ExternalService",
    "Deployment",
    "TrustBundle",
    "CertificateAuthority",
    "ServiceAddress",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "Gateway",
];

/// Kinds only the control plane writes; the API refuses them from users.
pub const MANAGED_KINDS: &[&str] = &["TrustBundle", "CertificateAuthority", "ServiceAddress"];

/// Kinds that never leave the control plane (they hold private keys).
pub const SECRET_KINDS: &[&str] = &["CertificateAuthority"];

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::Workload(_) => "Workload",
            Resource::Route(_) => "Route",
            Resource::DestinationPolicy(_) => "DestinationPolicy",
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::RequestAuthentication(_) => "RequestAuthentication",
            Resource::RateLimitPolicy(_) => "RateLimitPolicy",
            Resource::ExternalService(_) => "ExternalService",
            Resource::MeshConfig(_) => "MeshConfig",
            Resource::Deployment(_) => "Deployment",
            Resource::TrustBundle(_) => "TrustBundle",
            Resource::CertificateAuthority(_) => "CertificateAuthority",
            Resource::ServiceAddress(_) => "ServiceAddress",
            Resource::HTTPRoute(_) => "HTTPRoute",
            Resource::GRPCRoute(_) => "GRPCRoute",
            Resource::TLSRoute(_) => "TLSRoute",
            Resource::Gateway(_) => "Gateway",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Service(r) => &r.metadata,
            Resource::Workload(r) => &r.metadata,
            Resource::Route(r) => &r.metadata,
            Resource::DestinationPolicy(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::RequestAuthentication(r) => &r.metadata,
            Resource::RateLimitPolicy(r) => &r.metadata,
            Resource::ExternalService(r) => &r.metadata,
            Resource::MeshConfig(r) => &r.metadata,
            Resource::Deployment(r) => &r.metadata,
            Resource::TrustBundle(r) => &r.metadata,
            Resource::CertificateAuthority(r) => &r.metadata,
            Resource::ServiceAddress(r) => &r.metadata,
            Resource::HTTPRoute(r) => &r.metadata,
            Resource::GRPCRoute(r) => &r.metadata,
            Resource::TLSRoute(r) => &r.metadata,
            Resource::Gateway(r) => &r.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::Service(r) => &mut r.metadata,
            Resource::Workload(r) => &mut r.metadata,
            Resource::Route(r) => &mut r.metadata,
            Resource::DestinationPolicy(r) => &mut r.metadata,
            Resource::AuthorizationPolicy(r) => &mut r.metadata,
            Resource::RequestAuthentication(r) => &mut r.metadata,
            Resource::RateLimitPolicy(r) => &mut r.metadata,
            Resource::ExternalService(r) => &mut r.metadata,
            Resource::MeshConfig(r) => &mut r.metadata,
            Resource::Deployment(r) => &mut r.metadata,
            Resource::TrustBundle(r) => &mut r.metadata,
            Resource::CertificateAuthority(r) => &mut r.metadata,
            Resource::ServiceAddress(r) => &mut r.metadata,
            Resource::HTTPRoute(r) => &mut r.metadata,
            Resource::GRPCRoute(r) => &mut r.metadata,
            Resource::TLSRoute(r) => &mut r.metadata,
            Resource::Gateway(r) => &mut r.metadata,
        }
    }

    /// `Kind/namespace/name`, unique within a set.
    pub fn key(&self) -> String {
        let m = self.metadata();
        format!("{}/{}/{}", self.kind(), m.namespace, m.name)
    }
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        macro_rules! env {
            ($r:expr) => {
                Envelope {
                    api_version: api_version_of(kind).unwrap_or(API_VERSION),
                    kind,
                    body: $r,
                }
                .serialize(s)
            };
        }
        match self {
            Resource::Service(r) => env!(r),
            Resource::Workload(r) => env!(r),
            Resource::Route(r) => env!(r),
            Resource::DestinationPolicy(r) => env!(r),
            Resource::AuthorizationPolicy(r) => env!(r),
            Resource::RequestAuthentication(r) => env!(r),
            Resource::RateLimitPolicy(r) => env!(r),
            Resource::ExternalService(r) => env!(r),
            Resource::MeshConfig(r) => env!(r),
            Resource::Deployment(r) => env!(r),
            Resource::TrustBundle(r) => env!(r),
            Resource::CertificateAuthority(r) => env!(r),
            Resource::ServiceAddress(r) => env!(r),
            Resource::HTTPRoute(r) => env!(r),
            Resource::GRPCRoute(r) => env!(r),
            Resource::TLSRoute(r) => env!(r),
            Resource::Gateway(r) => env!(r),
        }
    }
}

/// A validated, duplicate-free collection of resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ResourceSet {
    pub resources: Vec<Resource>,
}

macro_rules! accessor {
    ($fn:ident, $variant:ident, $ty:ty) => {
        pub fn $fn(&self) -> impl Iterator<Item = &$ty> + '_ {
            self.resources.iter().filter_map(|r| match r {
                Resource::$variant(x) => {
                    // Coerces a boxed kind to the kind.
                    let x: &$ty = x;
                    Some(x)
                }
                _ => None,
            })
        }
    };
}

impl ResourceSet {
    accessor!(services, Service, Service);
    accessor!(workloads, Workload, Workload);
    accessor!(routes, Route, Route);
    accessor!(destination_policies, DestinationPolicy, DestinationPolicy);
    accessor!(
        authorization_policies,
        AuthorizationPolicy,
        AuthorizationPolicy
    );
    accessor!(
        request_authentications,
        RequestAuthentication,
        RequestAuthentication
    );
    accessor!(rate_limit_policies, RateLimitPolicy, RateLimitPolicy);
    accessor!(external_services, ExternalService, ExternalService);
    accessor!(mesh_configs, MeshConfig, MeshConfig);
    accessor!(deployments, Deployment, Deployment);
    accessor!(trust_bundles, TrustBundle, TrustBundle);
    accessor!(service_addresses, ServiceAddress, ServiceAddress);
    accessor!(http_routes, HTTPRoute, HTTPRoute);
    accessor!(grpc_routes, GRPCRoute, GRPCRoute);
    accessor!(tls_routes, TLSRoute, TLSRoute);
    accessor!(gateways, Gateway, Gateway);

    /// The mesh-wide settings: the first MeshConfig, or defaults.
    pub fn mesh_config(&self) -> crate::mesh::MeshConfigSpec {
        self.mesh_configs()
            .next()
            .map(|m| m.spec.clone())
            .unwrap_or_default()
    }

    /// What the set does that its author may not expect (see [`crate::notice`]).
    pub fn notices(&self) -> Vec<crate::notice::Notice> {
        crate::notice::notices(&self.resources)
    }

    /// Serializes the set back to multi-document YAML.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for r in &self.resources {
            out.push_str("---\n");
            // Serializing plain data structs to a string cannot fail.
            out.push_str(&serde_yaml_ng::to_string(r).unwrap_or_default());
        }
        out
    }
}

/// Parses and validates every document of `text`; `file` names the source in errors.
/// All documents are checked and every problem reported; any problem rejects the whole source.
/// A source past one of the default [`Limits`] is refused with that limit named.
pub fn parse_documents(file: &str, text: &str) -> Result<ResourceSet, ConfigError> {
    parse_documents_with_limits(file, text, &Limits::default())
}

/// [`parse_documents`] with other limits (see [`crate::limits`]).
pub fn parse_documents_with_limits(
    file: &str,
    text: &str,
    limits: &Limits,
) -> Result<ResourceSet, ConfigError> {
    let refuse = |e: Exceeded| ConfigError::single(e.into_error(file, limits));
    // Linear, before the YAML parser sees anything: size, documents, nesting.
    prescan(text, limits).map_err(refuse)?;
    let budget = NodeBudget::new(limits);
    let mut resources = Vec::new();
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = index + 1;
        if document > limits.max_documents {
            // The pre-scan counts documents as libyaml does; this is the backstop.
            return Err(refuse(Exceeded::text(Limit::Documents, document, None)));
        }
        let value = match budget.document(doc) {
            Ok(v) => v,
            Err(e) => {
                if let Some(limit) = budget.take_hit().or_else(|| yaml_limit(&e)) {
                    return Err(refuse(Exceeded {
                        limit,
                        measure: Measure::Expanded,
                        document,
                        line: e.location().map(|l| l.line()),
                    }));
                }
                errors.push(yaml_error(file, document, &e));
                // A syntax error leaves the rest of the stream unreadable.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match parse_one(file, document, value) {
            Ok(r) => {
                let problems = validate::resource(&r);
                if problems.is_empty() {
                    if let Err(limit) = written_back(&r, limits) {
                        return Err(refuse(Exceeded {
                            limit,
                            measure: Measure::WrittenBack,
                            document,
                            line: None,
                        }));
                    }
                    resources.push(r);
                    documents.push(document);
                } else {
                    let (kind, name) = (r.kind(), r.metadata().name.clone());
                    errors.extend(problems.into_iter().map(|(path, message)| FieldError {
                        file: file.to_string(),
                        document,
                        kind: Some(kind.to_string()),
                        name: Some(name.clone()),
                        path,
                        line: None,
                        message,
                        limit: None,
                    }));
                }
            }
            Err(e) => errors.push(*e),
        }
    }
    for (i, path, message) in validate::set(&resources) {
        let r = &resources[i];
        errors.push(FieldError {
            file: file.to_string(),
            document: documents[i],
            kind: Some(r.kind().to_string()),
            name: Some(r.metadata().name.clone()),
            path,
            line: None,
            message,
            limit: None,
        });
    }
    if errors.is_empty() {
        Ok(ResourceSet { resources })
    } else {
        Err(ConfigError { errors })
    }
}

fn yaml_error(file: &str, document: usize, e: &serde_yaml_ng::Error) -> FieldError {
    FieldError {
        file: file.to_string(),
        document,
        kind: None,
        name: None,
        path: String::new(),
        line: e.location().map(|l| l.line()),
        message: format!("invalid YAML: {e}"),
        limit: None,
    }
}

fn parse_one(file: &str, document: usize, value: Value) -> Result<Resource, Box<FieldError>> {
    let err = |kind: Option<&str>, name: Option<String>, path: &str, message: String| {
        Box::new(FieldError {
            file: file.to_string(),
            document,
            kind: kind.map(str::to_string),
            name,
            path: path.to_string(),
            line: None,
            message,
            limit: None,
        })
    };
    let Value::Mapping(mut map) = value else {
        return Err(err(
            None,
            None,
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let kind = match map.remove("kind") {
        Some(Value::String(k)) => k,
        Some(_) => return Err(err(None, name, "kind", "must be a string".into())),
        None => return Err(err(None, name, "kind", "missing field".into())),
    };
    let Some(kind) = KINDS.iter().copied().find(|k| *k == kind) else {
        return Err(err(
            None,
            name,
            "kind",
            format!(
                "unknown kind {kind:?}; expected one of {}",
                KINDS.join(", ")
            ),
        ));
    };
    let expected = api_version_of(kind).unwrap_or(API_VERSION);
    match map.remove("apiVersion") {
        Some(Value::String(v)) if v == expected => {}
        Some(Value::String(v)) => {
            let why = if api_version_of(kind).is_some() {
                format!("kind {kind} is a Gateway API kind, served at {expected:?}")
            } else if v.starts_with(crate::gateway_api::GROUP) {
                format!("kind {kind} is a Trellis kind, served at {expected:?}")
            } else {
                format!("expected {expected:?}")
            };
            return Err(err(
                Some(kind),
                name,
                "apiVersion",
                format!("unsupported apiVersion {v:?} for kind {kind}; {why}"),
            ));
        }
        Some(_) => {
            return Err(err(
                Some(kind),
                name,
                "apiVersion",
                "must be a string".into(),
            ))
        }
        None => return Err(err(Some(kind), name, "apiVersion", "missing field".into())),
    }
    let value = Value::Mapping(map);
    fn typed<T: for<'de> Deserialize<'de>>(
        value: Value,
    ) -> Result<T, serde_path_to_error::Error<serde_yaml_ng::Error>> {
        serde_path_to_error::deserialize(value)
    }
    let result = match kind {
        "Service" => typed(value).map(Resource::Service),
        "Workload" => typed(value).map(Resource::Workload),
        "Route" => typed(value).map(Resource::Route),
        "DestinationPolicy" => typed(value).map(|p| Resource::DestinationPolicy(Box::new(p))),
        "AuthorizationPolicy" => typed(value).map(Resource::AuthorizationPolicy),
        "RequestAuthentication" => typed(value).map(Resource::RequestAuthentication),
        "RateLimitPolicy" => typed(value).map(Resource::RateLimitPolicy),
        "ExternalService" => typed(value).map(Resource::ExternalService),
        "MeshConfig" => typed(value).map(|m| Resource::MeshConfig(Box::new(m))),
        "TrustBundle" => typed(value).map(Resource::TrustBundle),
        "Deployment" => typed(value).map(Resource::Deployment),
        "ServiceAddress" => typed(value).map(Resource::ServiceAddress),
        // Status is the implementation's to write: dropped from what users send.
        "HTTPRoute" => typed(value)
            .map(|r: HTTPRoute| Resource::HTTPRoute(Box::new(HTTPRoute { status: None, ..r }))),
        "GRPCRoute" => typed(value)
            .map(|r: GRPCRoute| Resource::GRPCRoute(Box::new(GRPCRoute { status: None, ..r }))),
        "TLSRoute" => typed(value)
            .map(|r: TLSRoute| Resource::TLSRoute(Box::new(TLSRoute { status: None, ..r }))),
        "Gateway" => typed(value)
            .map(|g: Gateway| Resource::Gateway(Box::new(Gateway { status: None, ..g }))),
        _ => typed(value).map(Resource::CertificateAuthority),
    };
    result.map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        err(Some(kind), name, &path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod resource_size {
    /// A sidecar holds one `Resource` per Workload of every service it may call, so the enum's
    /// size (its largest unboxed kind) is paid tens of thousands of times: a kind that grows
    /// past this belongs in a box, as DestinationPolicy is.
    #[test]
    fn a_resource_is_no_bigger_than_its_common_kinds() {
        let size = std::mem::size_of::<super::Resource>();
        assert!(size <= 256, "Resource is {size} bytes");
    }
}
