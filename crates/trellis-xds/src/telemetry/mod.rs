//! The telemetry link: how a control-plane replica asks the proxies connected to it for live
//! numbers (`trellis stat`) and live requests (`trellis tap`, `trellis top`).
//!
//! Why a stream the proxy opens, beside its xDS stream, rather than the control plane pulling
//! each proxy's admin port: the admin port listens on loopback (it can stop the proxy), proxies
//! may sit behind NAT or in namespaces the control plane cannot route into, and a proxy already
//! knows its replicas and the join token. Why questions rather than proxies pushing summaries
//! every few seconds: nothing flows while nobody asks, so a thousand idle proxies cost the
//! control plane nothing, and the numbers come from each proxy's own recent history, exact over
//! the window asked for.
//!
//! - [`server::TelemetryHub`]: the replica's side, a tonic service mounted beside ADS; it knows
//!   which proxies are connected to this replica and routes each answer to whoever asked.
//! - [`client::spawn`]: the proxy's side; it keeps one stream open to some replica (failing over
//!   and backing off like the xDS client) and hands each question to a [`client::Handler`].
//!
//! Bodies are JSON in the shapes of `trellis_api::telemetry`; this crate moves them and never
//! reads them. Everything is bounded: questions queued per proxy, answers queued per question,
//! message sizes.
pub mod client;
pub mod server;

pub use client::Handler;
pub use server::{Asked, ProxyInfo, Reply, TelemetryHub};

/// Largest message either side sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
