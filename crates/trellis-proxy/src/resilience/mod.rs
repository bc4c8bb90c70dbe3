//! Resilience on the caller's side: passive outlier detection (eject endpoints that keep
//! failing), circuit breaking by limits (fail fast with `pool-overflow` instead of queueing
//! without bound), and locality preference with failover.
//!
//! State that must outlive a config reload (who is ejected, how many requests are in flight)
//! lives in `Arc`s the snapshot builder carries from one snapshot to the next.
pub mod health;
pub mod limits;
pub mod locality;
pub mod outlier;

pub use limits::{LimitState, Limits, Overflow, RequestPermit};
pub use locality::Locality;
pub use outlier::{Outcome, OutlierPolicy, OutlierState};
