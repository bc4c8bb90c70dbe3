//! The xDS transport: how Trellis pushes config from the control plane to its proxies.
//!
//! The wire protocol is Envoy's aggregated discovery service (ADS,
//! `envoy.service.discovery.v3.AggregatedDiscoveryService`), both flavours: state of the world
//! (`StreamAggregatedResources`) and delta (`DeltaAggregatedResources`), with per-type versions,
//! nonces, ACK and NACK. Trellis proxies receive compact `trellis.v1` resources ([`resource`]);
//! because the transport only ever sees `google.protobuf.Any`, the same server can later carry
//! Envoy's own resources (Listener, Cluster, ...) to an unmodified Envoy.
//!
//! - [`server`]: the control plane's side. It serves each node the view a [`server::ViewSource`]
//!   computes, pushes only differences, remembers per stream what was sent, acknowledged and
//!   rejected ([`server::Registry`]), and is bounded everywhere (queues, message sizes, types
//!   and names per stream, time to the first request).
//! - [`client`]: the proxy's side. [`client::AdsClient`] hands the proxy the complete resource
//!   set after each change (shared and persistent: cheap to clone, nothing decoded twice) with
//!   the names that changed, and ACKs or NACKs what the proxy says; it keeps the last good
//!   config while the control plane is away, reconnects with jittered backoff, fails over
//!   between replicas and resyncs by stating what it holds.
//! - [`debounce`]: coalesces bursts of store changes without delaying a lone change.
//!
//! # Why vendored protos compiled by `protox`
//!
//! A fresh machine has no `protoc`. Two ways to get Envoy's messages without it were measured
//! on the project's 2-core machine (cold builds, other builds running alongside):
//!
//! | | dev build | `cargo check` (clippy) | release build |
//! |---|---|---|---|
//! | `envoy-types` 0.7 (89k lines of generated code, all of Envoy's API) | +39 s | +35 s | +88 s |
//! | `protox` + `tonic-prost-build` (build dependencies) | +45 s | shared with dev | +45 s |
//!
//! The vendored route costs half in release and nothing extra under clippy (build scripts are
//! built once and shared), and it pins nothing: `envoy-types` ties tonic and prost to its own
//! release cadence. `proto/` holds only the discovery messages (with Envoy's package, message
//! names and field numbers, checked against `envoy-types`' generated code; fields Trellis does
//! not use are left out and skipped as unknown on decode), `google.rpc.Status`, and the
//! `trellis.v1` envelope. When Envoy's resource types are needed, `envoy-types` can be added
//! where they are built (it uses the same prost and tonic versions) and its messages packed into
//! `Any` for this transport; the transport itself does not change.
//!
//! # What this crate must never do
//!
//! Panic on anything from the network, buffer without bound for a slow peer, apply half of a
//! change, or decide policy: which resources a node may see is the view source's business.
#![forbid(unsafe_code)]

pub mod client;
pub mod debounce;
pub mod node;
pub mod pb;
pub mod resource;
pub mod server;
pub mod telemetry;

pub use client::{
    AdsClient, Backoff, ClientConfig, ClientStatus, Discovery, Feed, Resolution, Resources,
    TypeChange, Update,
};
pub use debounce::{DebounceTrigger, Debouncer};
pub use node::NodeInfo;
pub use resource::{decode, encode, resource_name, type_url, DecodeError, TYPE_URLS};
pub use server::{AdsServer, Mode, Registry, ServerConfig, SharedViews, View, ViewSource};
