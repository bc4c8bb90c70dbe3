//! Server plumbing every Trellis port shares, so that no port can be starved or made to flood
//! the log by a hostile client:
//!
//! - [`accept`]: accept loops that back off on errors (out of descriptors) and log them
//!   throttled, and [`accept::serve`], the loop for a port with a connection cap;
//! - [`limit`]: the connection cap, which sheds the oldest connection that is not serving a
//!   request instead of refusing the newcomer;
//! - [`http`]: hyper servers with header-read and idle timeouts that never cut a request in
//!   flight (so never a long-lived gRPC stream);
//! - [`fdlimit`]: the open-files limit, raised at startup and respected by caps;
//! - [`throttle`]: log lines written at most about once a second however often their event
//!   happens, with a count of those held back.
#![forbid(unsafe_code)]

pub mod accept;
pub mod fdlimit;
pub mod http;
pub mod limit;
pub mod throttle;

pub use accept::{serve, Acceptor, Backoff};
pub use http::{Ended, HttpServer};
pub use limit::{Admission, ConnLimiter, ConnSlot, Phase};
pub use throttle::LogThrottle;
