//! Generated protobuf messages and gRPC stubs (see `build.rs`).
#![allow(clippy::all, missing_docs)]
include!(concat!(env!("OUT_DIR"), "/_includes.rs"));
