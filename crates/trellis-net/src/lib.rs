//! Server plumbing every Trellis port shares, so that no port can be starved or made to flood
//! the log by a hostile client: accept loops that back off on errors and cap connections, and
//! log lines that are written at most about once a second however often their event happens.
#![forbid(unsafe_code)]

pub mod throttle;

pub use throttle::LogThrottle;
