//! The gateway's sockets: one accept loop per port of the [`GatewayPlan`], reconciled whenever a
//! new plan is built. A port whose protocol is unchanged keeps its socket and takes the new
//! plan atomically (connections read it per request, HTTP, or per connection, passthrough); a
//! port that is gone, or changes protocol, stops accepting (its open connections finish) and is
//! bound again as needed. Every connection is tracked by the drain.
use super::http::{self, Downstream};
use super::plan::{GatewayPlan, ListenerProtocol, PortPlan};
use super::{passthrough, terminate};
use crate::detect::{detect, Detected, PrefixedIo};
use crate::drain::Drain;
use crate::state::ProxyState;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A port being served.
struct Running {
    protocol: ListenerProtocol,
    plan: Arc<ArcSwap<PortPlan>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

/// Every port the gateway serves.
pub struct Listeners {
    address: IpAddr,
    state: Arc<ProxyState>,
    drain: Drain,
    running: BTreeMap<u16, Running>,
}

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (listeners {listeners}): {error}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub listeners: String,
    pub error: std::io::Error,
}

impl Listeners {
    pub fn new(address: IpAddr, state: Arc<ProxyState>, drain: Drain) -> Self {
        Self {
            address,
            state,
            drain,
            running: BTreeMap::new(),
        }
    }

    /// The addresses bound, by port.
    pub fn bound(&self) -> Vec<SocketAddr> {
        self.running.values().map(|r| r.addr).collect()
    }

    /// Serves `plan`: new ports bound, changed ones re-planned or re-bound, gone ones closed.
    pub async fn reconcile(&mut self, plan: GatewayPlan) -> Vec<BindError> {
        let mut errors = Vec::new();
        let wanted: Vec<u16> = plan.ports.keys().copied().collect();
        let gone: Vec<u16> = (self.running.keys())
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(r) = self.running.remove(&port) {
                stop(r).await;
                tracing::info!(port, "gateway port closed: no listener uses it any more");
            }
        }
        for (port, p) in plan.ports {
            match self.running.get(&port) {
                Some(r) if r.protocol == p.protocol => {
                    r.plan.store(Arc::new(p));
                    continue;
                }
                Some(_) => {
                    if let Some(r) = self.running.remove(&port) {
                        stop(r).await;
                    }
                }
                None => {}
            }
            let addr = SocketAddr::new(self.address, port);
            let listener = match trellis_net::bind(addr).await {
                Ok(l) => l,
                Err(error) => {
                    let e = BindError {
                        addr,
                        listeners: p.listeners.join(","),
                        error,
                    };
                    tracing::error!(error = %e, "gateway port not served");
                    errors.push(e);
                    continue;
                }
            };
            tracing::info!(%addr, protocol = p.protocol.as_str(), listeners = %p.listeners.join(","), "gateway listening");
            let protocol = p.protocol;
            let plan = Arc::new(ArcSwap::from_pointee(p));
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = tokio::spawn(accept(
                listener,
                plan.clone(),
                self.state.clone(),
                self.drain.clone(),
                stop_rx,
            ));
            self.running.insert(
                port,
                Running {
                    protocol,
                    plan,
                    stop: stop_tx,
                    task,
                    addr,
                },
            );
        }
        errors
    }
}

/// Stops accepting on a port and waits until its socket is closed.
async fn stop(r: Running) {
    r.stop.send_replace(true);
    let _ = r.task.await;
}

async fn accept(
    listener: TcpListener,
    plan: Arc<ArcSwap<PortPlan>>,
    state: Arc<ProxyState>,
    drain: Drain,
    mut stop: watch::Receiver<bool>,
) {
    let mut acceptor = trellis_net::Acceptor::new(listener, "gateway");
    loop {
        let (stream, peer) = tokio::select! {
            a = acceptor.accept() => a,
            _ = drain.started() => return,
            _ = stop.wait_for(|s| *s) => return,
        };
        let _ = stream.set_nodelay(true);
        let guard = drain.track();
        let (plan, state, drain) = (plan.clone(), state.clone(), drain.clone());
        tokio::spawn(async move {
            connection(stream, peer, plan, state, drain).await;
            drop(guard);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    plan: Arc<ArcSwap<PortPlan>>,
    state: Arc<ProxyState>,
    drain: Drain,
) {
    let current = plan.load_full();
    match current.protocol {
        ListenerProtocol::TlsPassthrough => passthrough::serve(stream, peer, current, state).await,
        ListenerProtocol::TlsTerminate => terminate::serve(stream, peer, current, state).await,
        ListenerProtocol::Http => {
            let (detected, prefix) = match detect(&mut stream, state.settings.detect_timeout).await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "read failed during protocol detection");
                    return;
                }
            };
            let h2 = match detected {
                Detected::Http2 => true,
                // Anything else is answered as HTTP/1 (garbage gets a 400).
                Detected::Http1 | Detected::Tcp => false,
                Detected::Timeout | Detected::Closed => return,
            };
            let io = PrefixedIo::new(prefix, stream);
            let down = Downstream {
                peer,
                scheme: "http",
            };
            http::serve(io, h2, down, plan, state, drain).await
        }
        ListenerProtocol::Https => {
            let Some(server) = current.server.clone() else {
                return;
            };
            let limit = state.settings.detect_timeout;
            let Ok(tls) = terminate::handshake(server, stream, limit, peer).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let down = Downstream {
                peer,
                scheme: "https",
            };
            http::serve(tls, h2, down, plan, state, drain).await
        }
    }
}
