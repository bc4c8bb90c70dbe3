//! The sidecar's DNS answerer (`trellis proxy --dns 127.0.0.1:15053`): mesh names get their
//! service's virtual IP from the snapshot in force; every other query is relayed, byte for byte,
//! to the host's resolvers (`/etc/resolv.conf`). With `--intercept`, the app's port-53 traffic
//! is redirected here, so an unchanged app resolves `ratings` to a VIP the capture recognises.
//!
//! Why it relays raw packets instead of resolving (hickory-resolver) on the app's behalf: the
//! app keeps its own resolver's behaviour (EDNS sizes, DNSSEC bits, search lists, a TCP retry
//! after a truncated answer) exactly as if the sidecar were not there, and the relay's sockets
//! carry the capture mark, so its queries to the host's resolver are not captured back into it.
//! Only the wire format comes from `hickory-proto`.
//!
//! What it must never do: panic or answer for long on a hostile packet (garbage gets FORMERR when
//! it has a header, nothing otherwise), hold more than [`DnsOptions::max_in_flight`] queries at
//! once (beyond that, UDP queries are dropped, as a busy resolver does, and TCP connections
//! wait), or wait on an upstream past its timeout (SERVFAIL then).
mod names;

use crate::config::{Directory, NameAnswer, Snapshot};
use crate::drain::Drain;
use crate::ondemand;
use crate::state::ProxyState;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use names::{mesh_name, NegativeCache};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// TTL of mesh answers: short, so a deleted service stops resolving soon.
pub const MESH_TTL: u32 = 30;
/// Largest UDP message read or relayed (EDNS payloads above this are rare).
const MAX_UDP: usize = 16 * 1024;
/// Resolvers read from resolv.conf at most (glibc's MAXNS).
const MAX_RESOLVERS: usize = 3;
/// How long a TCP client may stay silent between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries one TCP connection may send.
const TCP_MAX_QUERIES: usize = 100;

#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// UDP and TCP.
    pub listen: SocketAddr,
    /// Where names outside the mesh are asked, in order.
    pub upstreams: Vec<SocketAddr>,
    /// Per upstream try.
    pub timeout: Duration,
    /// Queries in flight at most (UDP and TCP together).
    pub max_in_flight: usize,
    /// `SO_MARK` for the relay's sockets (set under capture, so they are not captured).
    pub mark: Option<u32>,
}

impl DnsOptions {
    pub fn new(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            upstreams,
            timeout: Duration::from_secs(2),
            max_in_flight: 256,
            mark: None,
        }
    }
}

/// The `nameserver` lines of a resolv.conf text (at most three; `%zone` suffixes dropped),
/// port 53. Unparsable lines are skipped; none at all means `127.0.0.1`, as glibc does.
pub fn host_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_RESOLVERS)
        .collect();
    if out.is_empty() {
        out.push(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53));
    }
    out
}

/// Why the DNS answerer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {addr} ({proto}): {error}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        error: io::Error,
    },
    #[error("no upstream resolver left for names outside the mesh (every one is this answerer's own address {0})")]
    NoUpstream(SocketAddr),
}

/// A bound answerer, not yet serving.
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    opts: DnsOptions,
}

impl DnsServer {
    /// Binds UDP and TCP on `opts.listen` (port 0 picks one port for both).
    pub async fn bind(mut opts: DnsOptions) -> Result<Self, DnsError> {
        let bind_err = |addr, proto| move |error| DnsError::Bind { addr, proto, error };
        // With port 0 the UDP port is picked first and TCP must take the same number, which
        // another socket may hold: pick again (bounded). An explicit port is tried once.
        let tries = if opts.listen.port() == 0 { 20 } else { 1 };
        let mut last = None;
        let mut bound = None;
        for _ in 0..tries {
            let udp = UdpSocket::bind(opts.listen)
                .await
                .map_err(bind_err(opts.listen, "udp"))?;
            let addr = udp.local_addr().map_err(bind_err(opts.listen, "udp"))?;
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    bound = Some((udp, tcp, addr));
                    break;
                }
                Err(e) => last = Some(bind_err(addr, "tcp")(e)),
            }
        }
        let Some((udp, tcp, addr)) = bound else {
            return Err(last.unwrap_or(DnsError::NoUpstream(opts.listen)));
        };
        // Relaying to ourselves would loop.
        opts.upstreams.retain(|u| *u != addr);
        if opts.upstreams.is_empty() {
            return Err(DnsError::NoUpstream(addr));
        }
        opts.listen = addr;
        Ok(Self { udp, tcp, opts })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.opts.listen
    }

    /// Serves until drain starts.
    pub async fn run(self, state: Arc<ProxyState>, drain: Drain) {
        let ctx = Arc::new(Ctx {
            state,
            limit: Arc::new(Semaphore::new(self.opts.max_in_flight.max(1))),
            opts: self.opts,
            not_services: NegativeCache::new(Duration::from_secs(MESH_TTL.into())),
        });
        tracing::info!(listen = %ctx.opts.listen, upstreams = ?ctx.opts.upstreams, "DNS answerer listening");
        let udp = Arc::new(self.udp);
        tokio::select! {
            _ = serve_udp(udp, ctx.clone()) => {}
            _ = serve_tcp(self.tcp, ctx) => {}
            _ = drain.started() => {}
        }
    }
}

struct Ctx {
    state: Arc<ProxyState>,
    limit: Arc<Semaphore>,
    opts: DnsOptions,
    /// Names discovery said are no service, so asking again soon costs no round trip.
    not_services: NegativeCache,
}

async fn serve_udp(socket: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors of earlier replies surface here on some systems; keep serving.
                tracing::debug!(error = %e, "DNS udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "DNS answerer busy; query dropped");
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, ctx) = (socket.clone(), ctx.clone());
        tokio::spawn(async move {
            if let Some(reply) = ctx.answer(&query, Transport::Udp).await {
                let _ = socket.send_to(&reply, peer).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DNS tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(stream, &ctx).await {
                tracing::debug!(%peer, error = %e, "DNS tcp connection ended");
            }
        });
    }
}

/// Length-prefixed queries (RFC 1035 4.2.2) until the client is idle or done.
async fn tcp_connection(mut stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    for _ in 0..TCP_MAX_QUERIES {
        let query = match tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(Some(q))) => q,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let Ok(_permit) = ctx.limit.acquire().await else {
            return Ok(());
        };
        match ctx.answer(&query, Transport::Tcp).await {
            Some(reply) => write_framed(&mut stream, &reply).await?,
            None => return Ok(()),
        }
    }
    Ok(())
}

async fn read_framed<S: AsyncReadExt + Unpin>(stream: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed<S: AsyncWriteExt + Unpin>(stream: &mut S, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Reply(Vec<u8>),
    /// To the host's resolver; with the query's one name, which is no mesh name this config
    /// answers for (an on-demand sidecar may discover it first).
    Relay(Option<String>),
    Drop,
}

impl Ctx {
    async fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let snapshot = self.state.snapshot.load_full();
        let dir = Directory::of(snapshot.as_ref());
        match decide(query, |name| dir.lookup(name)) {
            Decision::Reply(r) => Some(r),
            Decision::Drop => None,
            Decision::Relay(name) => {
                let discovered = match (name, snapshot.as_deref()) {
                    (Some(name), Some(snapshot)) => self.discovered(query, &name, snapshot).await,
                    _ => None,
                };
                match discovered {
                    Some(reply) => Some(reply),
                    None => Some(self.relay(query, transport).await),
                }
            }
        }
    }

    /// On a proxy that discovers on demand, a mesh name it does not hold yet may be a service
    /// it has not called: looking the name up is the app's first call, so it is discovered
    /// (bounded by `--discovery-timeout`) and answered from the config that follows. `None`
    /// when the name is not a mesh name, not a service, or discovery did not answer: then the
    /// host's resolver is asked, as for any other name.
    async fn discovered(&self, query: &[u8], name: &str, snapshot: &Snapshot) -> Option<Vec<u8>> {
        let on_demand = self.state.on_demand()?;
        let (namespace, service) = mesh_name(
            name,
            &snapshot.mesh.dns_domain,
            &self.state.identity.namespace,
        )?;
        if self.not_services.recent(name) {
            return None;
        }
        // A resolver gives up after a few seconds: wait no longer than a relayed query may.
        let wait = on_demand.timeout.min(self.opts.timeout);
        let config = &self.state.snapshot;
        match ondemand::discover_within(on_demand, config, &namespace, &service, wait).await {
            Ok(Some(config)) => {
                let dir = Directory::of(Some(&config));
                match decide(query, |n| dir.lookup(n)) {
                    Decision::Reply(r) => Some(r),
                    _ => None,
                }
            }
            // No such service, or no answer in time (the control plane may be gone): the host's
            // resolver decides, and the name is not asked about again for a while.
            Ok(None) | Err(_) => {
                self.not_services.remember(name);
                None
            }
        }
    }

    /// Asks each upstream in turn; SERVFAIL when none answers in time.
    async fn relay(&self, query: &[u8], transport: Transport) -> Vec<u8> {
        for upstream in &self.opts.upstreams {
            let tried = async {
                match transport {
                    Transport::Udp => relay_udp(query, *upstream, self.opts.mark).await,
                    Transport::Tcp => relay_tcp(query, *upstream, self.opts.mark).await,
                }
            };
            match tokio::time::timeout(self.opts.timeout, tried).await {
                Ok(Ok(reply)) => return reply,
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "upstream resolver failed"),
                Err(_) => tracing::debug!(%upstream, "upstream resolver timed out"),
            }
        }
        error_reply(query, ResponseCode::ServFail).unwrap_or_default()
    }
}

async fn relay_udp(query: &[u8], upstream: SocketAddr, mark: Option<u32>) -> io::Result<Vec<u8>> {
    {
        let any: IpAddr = match upstream {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
        if let Some(m) = mark {
            crate::sockopt::set_mark(&socket, m)?;
        }
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; MAX_UDP];
        // A connected socket only hears from the upstream; still, only the answer to this id
        // counts (a bounded number of strays is skipped).
        for _ in 0..8 {
            let n = socket.recv(&mut buf).await?;
            if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Ok(buf);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no reply with the query's id",
        ))
    }
}

async fn relay_tcp(query: &[u8], upstream: SocketAddr, mark: Option<u32>) -> io::Result<Vec<u8>> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(m) = mark {
        crate::sockopt::set_mark(&socket, m)?;
    }
    let mut stream = socket.connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream).await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upstream closed before answering",
        )
    })
}

/// Decides one query from its bytes; `lookup` says what a name means to the mesh.
fn decide(query: &[u8], lookup: impl Fn(&str) -> NameAnswer) -> Decision {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            return error_reply(query, ResponseCode::FormErr)
                .map_or(Decision::Drop, Decision::Reply)
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return Decision::Drop; // never answer an answer
    }
    if msg.metadata.op_code != OpCode::Query {
        return error_reply(query, ResponseCode::NotImp).map_or(Decision::Drop, Decision::Reply);
    }
    let [q] = msg.queries.as_slice() else {
        // Several questions in one message: no resolver sends it; let the upstream decide.
        return Decision::Relay(None);
    };
    let name = q.name().to_ascii();
    let NameAnswer::Service { vip, .. } = lookup(&name) else {
        return Decision::Relay(Some(name));
    };
    let mut reply = Message::response(msg.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    // A for the VIP; every other type of a mesh name is "no data" (the name exists), so a
    // client asking AAAA first does not wait on the host's resolver.
    if q.query_type() == RecordType::A {
        reply.add_answer(Record::from_rdata(
            q.name().clone(),
            MESH_TTL,
            RData::A(A(vip)),
        ));
    }
    if let Some(edns) = &msg.edns {
        let mut e = edns.clone();
        e.set_max_payload(e.max_payload().max(512));
        reply.set_edns(e);
    }
    reply.to_vec().map_or(Decision::Drop, Decision::Reply)
}

/// A header-only error reply for `query`: its id and opcode, its question when it parses.
/// `None` when there is not even a header (nothing to address a reply to).
fn error_reply(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    // Not an answer to an answer (QR set): that would let two resolvers ping-pong.
    if query[2] & 0x80 != 0 {
        return None;
    }
    let op = OpCode::from_u8((query[2] >> 3) & 0x0f);
    let mut reply = Message::error_msg(id, op, code);
    if let Ok(m) = Message::from_vec(query) {
        reply.add_queries(m.queries);
        reply.metadata.recursion_desired = m.metadata.recursion_desired;
    }
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests;
