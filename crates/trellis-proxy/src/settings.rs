//! What the command line tells a proxy: who it stands beside ([`LocalIdentity`]) and the knobs
//! that are not mesh config ([`Settings`]), with their defaults.
//!
//! Its own module, below everything that reads it, because both the config compiler (the zone and
//! service a snapshot is built for) and the shared proxy state need these, and neither may import
//! the other's module for them.
use std::time::Duration;

/// The service instance this sidecar stands beside.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    pub service: String,
    pub namespace: String,
    pub zone: Option<String>,
}

/// Admin connections beyond which the oldest idle one is shed: probes and scrapes need a few.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 128;

/// Envoy's default idle timeout for HTTP connections, downstream and upstream.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Knobs that are not part of mesh config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub detect_timeout: Duration,
    /// On an inbound port declared `tcp` in Permissive mode, how long a silent client may still
    /// turn out to be a mesh peer starting TLS (whose ClientHello comes right after connecting)
    /// before it is served as plaintext: a server-first app then greets without waiting for
    /// `detect_timeout`.
    pub tls_detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a downstream HTTP connection (on the sidecar's listeners) may stay with no
    /// request in flight before it is closed: Envoy's default, 1 h, so clients' keep-alive pools
    /// never reuse a connection the sidecar closed under them.
    pub idle_timeout: Duration,
    /// How long a new HTTP/1 connection may take to send its first request head.
    pub header_read_timeout: Duration,
    /// How long a connection to an upstream (peer sidecar, app) stays pooled with no request.
    pub upstream_idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Largest request head (line and headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Admin-port connections kept at most (the oldest not serving a request is shed beyond).
    pub admin_max_connections: usize,
    /// How long an admin-port connection may take to send its request head.
    pub admin_header_read_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_secs(5),
            tls_detect_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_read_timeout: Duration::from_secs(30),
            upstream_idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            admin_header_read_timeout: Duration::from_secs(5),
        }
    }
}
