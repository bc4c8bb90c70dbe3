//! The attacker's side: a connection (plain TCP, or mTLS with a certificate of the test's choosing)
//! driven by a script of sends and pauses, then read until the server closes or a generous read
//! window passes. A read that times out means nothing arrived; nothing here measures latency.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_identity::rustls;

/// Any byte stream a probe can drive.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the attacker reaches the port.
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// mTLS with this client config (see `common::pki::client_config`).
    Tls(Arc<rustls::ClientConfig>),
}

/// How long a probe waits for an answer after its last step.
pub const READ_WINDOW: Duration = Duration::from_millis(1500);

/// Opens a connection; `Err` carries why (connect refused, TLS handshake refused).
pub async fn connect(addr: SocketAddr, t: &Transport) -> Result<Box<dyn Io>, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match t {
        Transport::Plain => Ok(Box::new(tcp)),
        Transport::Tls(cfg) => {
            let connector = trellis_identity::tokio_rustls::TlsConnector::from(cfg.clone());
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            match tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await {
                Ok(Ok(s)) => Ok(Box::new(s)),
                Ok(Err(e)) => Err(format!("TLS handshake refused: {e}")),
                Err(_) => Err("TLS handshake timed out".into()),
            }
        }
    }
}

/// One step of a probe.
#[derive(Debug, Clone)]
pub enum Step {
    Send(Vec<u8>),
    Pause(Duration),
}

/// A named attack: what to send, when.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    pub steps: Vec<Step>,
}

impl Probe {
    pub fn new(name: impl Into<String>, steps: Vec<Step>) -> Probe {
        Probe {
            name: name.into(),
            steps,
        }
    }

    /// Sends `bytes` at once.
    pub fn send(name: impl Into<String>, bytes: impl AsRef<[u8]>) -> Probe {
        Probe::new(name, vec![Step::Send(bytes.as_ref().to_vec())])
    }
}

pub fn send(b: impl AsRef<[u8]>) -> Step {
    Step::Send(b.as_ref().to_vec())
}

pub fn pause(ms: u64) -> Step {
    Step::Pause(Duration::from_millis(ms))
}

/// What the attacker got back.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub name: String,
    /// Why the connection could not be used at all (TCP or TLS refused).
    pub refused: Option<String>,
    /// Everything read.
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) within the read window.
    pub closed: bool,
}

impl Reply {
    /// The status of the first HTTP/1 response, if one came.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let rest = text.strip_prefix("HTTP/1.1 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// A header of the first response (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        let head = text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// Whether the app's own answer made it back (the recording app's bodies start `app-saw`).
    pub fn reached_app(&self) -> bool {
        super::app::contains(&self.bytes, b"app-saw")
            || self.bytes.starts_with(b"HTTP/1.1 101")
            || super::app::contains(&self.bytes, b"200 Connection Established")
    }

    pub fn summary(&self) -> String {
        match &self.refused {
            Some(why) => format!("{}: refused ({why})", self.name),
            None => format!(
                "{}: {} [{}]",
                self.name,
                if self.bytes.is_empty() {
                    "no answer".to_string()
                } else {
                    super::app::excerpt(&self.bytes, 120)
                },
                if self.closed { "closed" } else { "open" }
            ),
        }
    }
}

/// Runs `probe` on an open connection, then reads for up to `window`.
pub async fn drive(io: &mut Box<dyn Io>, probe: &Probe, window: Duration) -> Reply {
    let mut reply = Reply {
        name: probe.name.clone(),
        ..Reply::default()
    };
    for step in &probe.steps {
        match step {
            Step::Send(b) => {
                if io.write_all(b).await.is_err() || io.flush().await.is_err() {
                    reply.closed = true;
                    break;
                }
            }
            Step::Pause(d) => tokio::time::sleep(*d).await,
        }
    }
    let deadline = tokio::time::Instant::now() + window;
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                reply.closed = true;
                break;
            }
            Ok(Ok(n)) => reply.bytes.extend_from_slice(&chunk[..n]),
        }
    }
    reply
}

/// Connects and runs one probe.
pub async fn run(addr: SocketAddr, t: &Transport, probe: &Probe) -> Reply {
    run_within(addr, t, probe, READ_WINDOW).await
}

/// Connects and runs one probe, reading for up to `window` after its last step.
pub async fn run_within(addr: SocketAddr, t: &Transport, probe: &Probe, window: Duration) -> Reply {
    match connect(addr, t).await {
        Ok(mut io) => drive(&mut io, probe, window).await,
        Err(why) => Reply {
            name: probe.name.clone(),
            refused: Some(why),
            closed: true,
            ..Reply::default()
        },
    }
}

/// Runs every probe on its own connection, all at once.
pub async fn run_all(addr: SocketAddr, t: &Transport, probes: &[Probe]) -> Vec<Reply> {
    run_all_within(addr, t, probes, READ_WINDOW).await
}

/// `run_all` with another read window.
pub async fn run_all_within(
    addr: SocketAddr,
    t: &Transport,
    probes: &[Probe],
    window: Duration,
) -> Vec<Reply> {
    let runs = probes.iter().map(|p| run_within(addr, t, p, window));
    futures_util::future::join_all(runs).await
}
