//! The Trellis resource model: every kind a user writes, parsed from multi-document YAML and
//! validated, with errors that name the file, the document and the field path.
//!
//! This crate does no I/O beyond what the caller hands it (text and a file name), so the same
//! structs serve the proxy's static config, the control plane's store and, later, Kubernetes CRDs.
//! It must never panic on any input: every problem is a [`ConfigError`].
#![forbid(unsafe_code)]

pub mod access_log;
pub mod address;
pub mod ca;
pub mod duration;
pub mod error;
pub mod external;
pub mod gateway_api;
pub mod limits;
pub mod mesh;
pub mod meta;
pub mod notice;
pub mod parse;
pub mod policy;
pub mod ratelimit;
pub mod route;
pub mod security;
pub mod service;
pub mod telemetry;
pub mod validate;

pub use address::{Ipv4Cidr, ServiceAddress, ServiceAddressSpec};
pub use duration::Duration;
pub use error::{error_chain, ConfigError, FieldError};
pub use external::ExternalService;
pub use gateway_api::{GRPCRoute, Gateway, HTTPRoute, TLSRoute};
pub use limits::{Limit, Limits};
pub use mesh::{Deployment, DeploymentSpec, MeshConfig, MeshConfigSpec};
pub use meta::{ObjectMeta, API_VERSION};
pub use notice::{notices, Notice};
pub use parse::{parse_documents, parse_documents_with_limits, Resource, ResourceSet};
pub use policy::DestinationPolicy;
pub use ratelimit::RateLimitPolicy;
pub use route::Route;
pub use security::{AuthorizationPolicy, RequestAuthentication};
pub use service::{EgressError, EgressTarget, Service, Workload};
