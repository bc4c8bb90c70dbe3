//! The two socket options transparent capture needs, through nix's safe wrappers (no unsafe
//! code of our own):
//! - `SO_ORIGINAL_DST`: where a connection redirected by iptables `REDIRECT` was going.
//! - `SO_MARK`: the mark on every socket the proxy itself opens while capturing, so the
//!   capture rules let the proxy's own traffic out instead of looping it back in (setting it
//!   needs `CAP_NET_ADMIN`, which capture needs anyway).
use nix::sys::socket::{getsockopt, setsockopt, sockopt, SockaddrIn};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::OnceLock;
use tokio::net::{TcpSocket, TcpStream};

/// The mark every upstream socket of this process carries, once capture is on. Process-wide on
/// purpose: capture is a property of the process (its rules exempt the mark), and every path
/// that opens an upstream connection reads it here.
static PROCESS_MARK: OnceLock<u32> = OnceLock::new();

/// Marks every later upstream socket of this process with `mark`; the first call wins.
pub fn mark_process_sockets(mark: u32) -> bool {
    PROCESS_MARK.set(mark).is_ok()
}

/// The process-wide mark, when capture set one.
pub fn process_mark() -> Option<u32> {
    PROCESS_MARK.get().copied()
}

/// Connects to `addr` with the process mark on the socket (when there is one), so capture
/// rules let the connection out instead of redirecting it back into this proxy.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let Some(mark) = process_mark() else {
        return TcpStream::connect(addr).await;
    };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    set_mark(&socket, mark).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot set SO_MARK {mark:#x} (capture needs CAP_NET_ADMIN): {e}"),
        )
    })?;
    socket.connect(addr).await
}

/// The mark capture uses unless told otherwise (Istio's proxy uid, as a mark).
pub const DEFAULT_MARK: u32 = 0x1337;

/// Sets `SO_MARK` on a socket.
pub fn set_mark<F: AsFd>(socket: &F, mark: u32) -> io::Result<()> {
    setsockopt(socket, sockopt::Mark, &mark).map_err(io::Error::from)
}

/// The destination a redirected IPv4 connection had before NAT.
pub fn original_dst<F: AsFd>(socket: &F) -> io::Result<SocketAddrV4> {
    let raw = getsockopt(socket, sockopt::OriginalDst).map_err(io::Error::from)?;
    Ok(SocketAddrV4::from(SockaddrIn::from(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn original_dst_of_a_connection_never_redirected_is_an_error_not_a_panic() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without conntrack NAT state the kernel answers ENOENT (or ENOPROTOOPT when the
        // netfilter module is absent): an error naming the cause.
        match original_dst(&s) {
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
            // A kernel with NAT loaded may report the unchanged destination.
            Ok(dst) => assert_eq!(std::net::SocketAddr::V4(dst), addr),
        }
    }
}
