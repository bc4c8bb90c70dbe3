//! The Trellis control plane.
//!
//! For now this crate holds the config store ([`store`]): where the mesh's resources live, with
//! resource versions, optimistic concurrency, leases for self-registered workloads, and a watch
//! that lets several control-plane replicas (and the snapshot builder) follow every change in
//! order. The registry, snapshot builder, xDS transport and HTTP API build on top of it.
#![forbid(unsafe_code)]

pub mod api;
pub mod model;
pub mod server;
pub mod store;
pub mod view;

pub use store::{
    open, validate, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Lease, LeaseId,
    Listing, ResourceKey, Revision, Store, StoreError, StoreSpec, Stored, WatchEvent, WatchStream,
};
