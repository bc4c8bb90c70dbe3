//! The Trellis control plane.
//!
//! - [`store`]: where the mesh's resources live (an embedded redb file, or etcd shared by several
//!   replicas), with resource versions, optimistic concurrency, leases for self-registered
//!   workloads, and a watch that lets every replica follow every change in order.
//! - [`model`]: each replica's in-memory copy of the store, kept by list-then-watch.
//! - [`view`]: what each proxy is sent (only what it may call, plus its own inbound policy);
//!   [`egress`]: the narrower scope of a Service that lists what its proxies call.
//! - [`api`]: the HTTP JSON API for the CLI and for sidecar registration; [`ca_api`]: its
//!   certificate and CA routes.
//! - [`ca`]: the mesh certificate authority, kept in the store and followed by every replica.
//! - [`auth`]: the join token every API call and xDS stream must present.
//! - [`dashboard`]: the browser dashboard under `/dashboard/` (topology, services, live).
//! - [`server`]: `trellis control`, tying them together with the xDS transport.
#![forbid(unsafe_code)]

pub mod api;
pub mod apply;
pub mod auth;
pub mod ca;
pub mod ca_api;
pub mod compaction;
pub mod dashboard;
pub mod egress;
pub mod live_api;
pub mod mesh_status;
pub mod model;
pub mod registry;
pub mod server;
pub mod store;
pub mod view;
pub mod views;
pub mod vip;

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod test_support;

pub use store::{
    open, validate, Batch, BatchPut, Committed, EmbeddedOptions, EmbeddedStore, EtcdOptions,
    EtcdStore, Expect, Lapsed, Lease, LeaseId, Listing, Receipt, ResourceKey, Revision, Store,
    StoreError, StoreSpec, Stored, WatchEvent, WatchStream,
};
