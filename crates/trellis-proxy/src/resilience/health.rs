//! Active health checks of the sidecar's own application: HTTP (a path and accepted statuses),
//! TCP (a connect), or the gRPC health protocol (`grpc.health.v1.Health/Check`), every
//! `interval`, each bounded by `timeout`. The app turns healthy after `healthyThreshold`
//! consecutive passes and unhealthy after `unhealthyThreshold` consecutive failures; the
//! current state is published on a watch channel for whoever reports it (the control plane
//! removes an unhealthy workload from every caller's endpoint set).
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use trellis_api::policy::HealthCheck;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http { path: String, expected: Vec<u16> },
    Tcp,
    Grpc { service: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl CheckConfig {
    pub fn from_config(h: &HealthCheck) -> Self {
        let probe = match (&h.http, &h.grpc) {
            (Some(http), _) => Probe::Http {
                path: http.path.clone(),
                expected: http.expected_statuses.clone(),
            },
            (None, Some(g)) => Probe::Grpc {
                service: g.service.clone(),
            },
            (None, None) => Probe::Tcp,
        };
        Self {
            probe,
            interval: h.interval.as_std(),
            timeout: h.timeout.as_std(),
            healthy_threshold: h.healthy_threshold.max(1),
            unhealthy_threshold: h.unhealthy_threshold.max(1),
        }
    }
}

/// What the checker knows about the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet (before the first threshold is reached).
    Unknown,
    Healthy,
    /// With the last failure's reason.
    Unhealthy(String),
}

/// Consecutive-result bookkeeping, separate from I/O so it is tested alone.
#[derive(Debug, Default)]
struct Streak {
    passes: u32,
    failures: u32,
}

impl Streak {
    fn next(&mut self, cfg: &CheckConfig, current: &Health, result: Result<(), String>) -> Health {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                if self.passes >= cfg.healthy_threshold {
                    Health::Healthy
                } else {
                    current.clone()
                }
            }
            Err(reason) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= cfg.unhealthy_threshold {
                    Health::Unhealthy(reason)
                } else {
                    current.clone()
                }
            }
        }
    }
}

/// Starts checking `app`; the receiver sees every change of verdict. The task ends when every
/// receiver is dropped.
pub fn spawn(app: SocketAddr, cfg: CheckConfig) -> watch::Receiver<Health> {
    let (tx, rx) = watch::channel(Health::Unknown);
    tokio::spawn(async move {
        let mut streak = Streak::default();
        let mut ticker = tokio::time::interval(cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let result = match tokio::time::timeout(cfg.timeout, probe(app, &cfg.probe)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
            };
            let next = streak.next(&cfg, &tx.borrow(), result);
            if *tx.borrow() != next {
                match &next {
                    Health::Unhealthy(why) => {
                        tracing::warn!(%app, reason = %why, "local app is unhealthy")
                    }
                    Health::Healthy => tracing::info!(%app, "local app is healthy"),
                    Health::Unknown => {}
                }
                if tx.send(next).is_err() {
                    return;
                }
            } else if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

async fn probe(app: SocketAddr, probe: &Probe) -> Result<(), String> {
    let stream = TcpStream::connect(app)
        .await
        .map_err(|e| format!("connect {app}: {e}"))?;
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http { path, expected } => http_probe(stream, app, path, expected).await,
        Probe::Grpc { service } => grpc_probe(stream, app, service).await,
    }
}

async fn http_probe(
    stream: TcpStream,
    app: SocketAddr,
    path: &str,
    expected: &[u16],
) -> Result<(), String> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, app.to_string())
        .header(http::header::USER_AGENT, "trellis-health-check")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("bad health check path {path:?}: {e}"))?;
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let code = rsp.status().as_u16();
    let ok = if expected.is_empty() {
        (200..400).contains(&code)
    } else {
        expected.contains(&code)
    };
    if ok {
        Ok(())
    } else {
        Err(format!("GET {path} answered {code}"))
    }
}

/// The gRPC health protocol: a `HealthCheckRequest{service}` and a `SERVING` status back.
async fn grpc_probe(stream: TcpStream, app: SocketAddr, service: &str) -> Result<(), String> {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{app}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(health_request(service)))
        .map_err(|e| format!("building the gRPC health request: {e}"))?;
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| format!("gRPC health check: {e}"))?;
    let headers_status = grpc_status(rsp.headers());
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("gRPC health check body: {e}"))?;
    let status = body
        .trailers()
        .and_then(grpc_status)
        .or(headers_status)
        .unwrap_or(2);
    if status != 0 {
        return Err(format!("gRPC health check answered grpc-status {status}"));
    }
    match serving_status(&body.to_bytes()) {
        Some(1) => Ok(()),
        Some(s) => Err(format!("gRPC health status {s} (not SERVING)")),
        None => Err("gRPC health check answer is not a HealthCheckResponse".into()),
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A length-prefixed `HealthCheckRequest` (field 1: service name).
fn health_request(service: &str) -> Bytes {
    let name = service.as_bytes();
    let mut msg = Vec::with_capacity(name.len() + 3);
    if !name.is_empty() && name.len() < 128 {
        msg.push(0x0a);
        msg.push(name.len() as u8);
        msg.extend_from_slice(name);
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    Bytes::from(framed)
}

/// Reads field 1 (status, a varint) of a framed `HealthCheckResponse`; an empty message is
/// status 0 (UNKNOWN). Anything else in the message is not understood.
fn serving_status(framed: &[u8]) -> Option<u64> {
    let msg = framed.get(5..)?;
    let Some((&key, rest)) = msg.split_first() else {
        return Some(0);
    };
    if key != 0x08 {
        return None;
    }
    let mut value = 0u64;
    for (i, b) in rest.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(healthy: u32, unhealthy: u32) -> CheckConfig {
        CheckConfig {
            probe: Probe::Tcp,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let c = cfg(2, 3);
        let mut s = Streak::default();
        let mut h = Health::Unknown;
        h = s.next(&c, &h, Ok(()));
        assert_eq!(h, Health::Unknown);
        h = s.next(&c, &h, Ok(()));
        assert_eq!(h, Health::Healthy);
        h = s.next(&c, &h, Err("x".into()));
        h = s.next(&c, &h, Err("x".into()));
        assert_eq!(
            h,
            Health::Healthy,
            "two failures are below the threshold of three"
        );
        h = s.next(&c, &h, Ok(()));
        h = s.next(&c, &h, Err("a".into()));
        h = s.next(&c, &h, Err("b".into()));
        assert_eq!(h, Health::Healthy, "the pass in between reset the count");
        h = s.next(&c, &h, Err("c".into()));
        assert_eq!(h, Health::Unhealthy("c".into()));
    }

    #[test]
    fn grpc_wire_format() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_request("db")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(serving_status(&[0, 0]), None);
        assert_eq!(serving_status(&[0, 0, 0, 0, 1, 0x08]), None);
    }

    async fn wait_for(rx: &mut watch::Receiver<Health>, want: fn(&Health) -> bool) -> Health {
        let got = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(want))
            .await
            .expect("health verdict in time")
            .expect("checker alive");
        got.clone()
    }

    #[tokio::test]
    async fn tcp_check_follows_the_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            loop {
                if l.accept().await.is_err() {
                    return;
                }
            }
        });
        let mut rx = spawn(addr, cfg(1, 2));
        wait_for(&mut rx, |h| *h == Health::Healthy).await;
        accept.abort();
        let _ = accept.await;
        let h = wait_for(&mut rx, |h| matches!(h, Health::Unhealthy(_))).await;
        assert!(format!("{h:?}").contains("connect"), "{h:?}");
    }

    #[tokio::test]
    async fn http_check_reads_the_status() {
        use hyper::service::service_fn;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = healthy.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let code = if flag.load(std::sync::atomic::Ordering::SeqCst) {
                            200
                        } else {
                            503
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let c = CheckConfig {
            probe: Probe::Http {
                path: "/health".into(),
                expected: vec![],
            },
            ..cfg(1, 1)
        };
        let mut rx = spawn(addr, c);
        wait_for(&mut rx, |h| *h == Health::Healthy).await;
        healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        let h = wait_for(&mut rx, |h| matches!(h, Health::Unhealthy(_))).await;
        assert!(format!("{h:?}").contains("503"), "{h:?}");
    }
}
