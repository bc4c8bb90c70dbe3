//! Retries: whether a failed try may be tried again, how long to wait first, and whether the
//! route can afford it.
//!
//! Retries are opt-in per route and bounded three ways, because an unbounded retry turns one
//! sick endpoint into a storm against the whole service: a number of attempts
//! ([`RetryPolicy::attempts`]), a budget that caps retries at a ratio of live traffic
//! ([`RetryBudget`], as linkerd2's and tower's), and a replay buffer
//! ([`RetryPolicy::max_buffer_bytes`]) beyond which a request body is sent once and never again.
//!
//! This module only decides; the forwarding code sends, buffers and sleeps. Nothing here does
//! I/O, holds a lock across an await, or panics on any config or response.
mod backoff;
mod budget;
mod policy;

pub use backoff::{Backoff, DEFAULT_BASE_INTERVAL};
pub use budget::{RetryBudget, DEFAULT_TTL};
pub use policy::{Conditions, Failure, RetryPolicy, DEFAULT_MAX_BUFFER_BYTES};
