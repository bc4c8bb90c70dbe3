//! Server plumbing every Trellis port shares, so that no port can be starved or made to flood
//! the log by a hostile client:
//!
//! - [`accept`]: listeners with a long accept queue ([`bind`]), accept loops that back off on
//!   errors (out of descriptors) and log them throttled, and [`serve`], the loop for a port
//!   with a connection cap;
//! - [`limit`]: the connection cap, which sheds the oldest connection that is not serving a
//!   request instead of refusing the newcomer;
//! - [`http`]: hyper servers with header-read and idle timeouts that never cut a request in
//!   flight (so never a long-lived gRPC stream);
//! - [`browser`]: refusing, on state-changing endpoints, what a web page can make a browser
//!   send (cross-origin form posts, DNS rebinding);
//! - [`fdlimit`]: the open-files limit, raised at startup and respected by caps;
//! - [`liblog`]: the same for warnings that libraries (h2...) log about what a peer did;
//! - [`throttle`]: log lines written at most about once a second however often their event
//!   happens, with a count of those held back.
#![forbid(unsafe_code)]

pub mod accept;
pub mod browser;
pub mod fdlimit;
pub mod http;
pub mod liblog;
pub mod limit;
pub mod throttle;

pub use accept::{bind, serve, Acceptor, Backoff};
pub use browser::{refuse_browser_request, BrowserRefusal};
pub use http::{Ended, HttpServer};
pub use limit::{Admission, ConnLimiter, ConnSlot, Phase};
pub use throttle::LogThrottle;
