//! The Trellis control plane.
//!
//! - [`store`]: where the mesh's resources live (an embedded redb file, or etcd shared by several
//!   replicas), with resource versions, optimistic concurrency, leases for self-registered
//!   workloads, and a watch that lets every replica follow every change in order.
//! - [`model`]: each replica's in-memory copy of the store, kept by list-then-watch.
//! - [`view`]: what each proxy is sent (only what it may call, plus its own inbound policy).
//! - [`api`]: the HTTP JSON API for the CLI and for sidecar registration.
//! - [`server`]: `trellis control`, tying them together with the xDS transport.
#![forbid(unsafe_code)]

pub mod api;
pub mod model;
pub mod server;
pub mod store;
pub mod view;
pub mod views;

pub use store::{
    open, validate, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Lease, LeaseId,
    Listing, ResourceKey, Revision, Store, StoreError, StoreSpec, Stored, WatchEvent, WatchStream,
};
