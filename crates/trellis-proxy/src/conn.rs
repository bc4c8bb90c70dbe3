//! Who is on the other end of a downstream connection, as the listener learnt it (address, and
//! the identity a verified mTLS certificate proved). Its own module because the listener makes
//! it and the inbound gate and HTTP handlers decide on it: none of them imports another for it.
use std::net::SocketAddr;
use std::sync::Arc;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The peer's SPIFFE identity, from its verified mTLS certificate.
    pub peer_id: Option<Arc<str>>,
}
