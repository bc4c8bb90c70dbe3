//! The verbs behind the `trellis` binaries. `trellis` carries every role (proxy, control plane,
//! CLI, sample app, `up`); `trellis-proxy` carries the sidecar alone, so the code a sidecar maps
//! into memory is only the sidecar's (see [`process`] and `src/bin/trellis-proxy.rs`).
#![forbid(unsafe_code)]

pub mod ca_cmd;
pub mod control_cmd;
pub mod ctl;
pub mod demo_app;
pub mod gateway_cmd;
pub mod orphan;
pub mod process;
pub mod proxy_cmd;
pub mod up;
