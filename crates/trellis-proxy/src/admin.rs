//! The admin listener (loopback by default): readiness, liveness, metrics, the config in force,
//! and shutdown. Never reachable from the data-plane ports.
//!
//! The port is hardened like the control plane's ([`trellis_net`]): a connection cap that sheds
//! the oldest connection not serving a request (so probes get through a slowloris flood), a
//! header-read timeout, an idle timeout, and accept errors backed off and logged throttled.
//! `POST /shutdown` refuses what a web page could make a browser send (an `Origin` or
//! `Sec-Fetch-*` header, a form content type, a `Host` that is not an IP address or `localhost`)
//! with 403 and the reason; `curl -X POST http://127.0.0.1:15000/shutdown` works.
use crate::body::{self, Body};
use crate::drain::Drain;
use crate::metrics::exposition::Format;
use crate::resilience::health::Health;
use crate::state::ProxyState;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use trellis_net::{ConnLimiter, HttpServer, LogThrottle};

pub async fn run(listener: TcpListener, state: Arc<ProxyState>, drain: Drain) {
    let settings = &state.settings;
    let limiter = ConnLimiter::new(
        trellis_net::fdlimit::fit_cap(settings.admin_max_connections),
        "admin",
    );
    let http = HttpServer {
        header_read_timeout: settings.admin_header_read_timeout,
        ..HttpServer::default()
    };
    let refusals = Arc::new(LogThrottle::per_second());
    let stop = std::future::pending();
    trellis_net::serve(
        listener,
        "admin",
        limiter,
        stop,
        move |stream, peer, slot| {
            let (state, drain, http, refusals) =
                (state.clone(), drain.clone(), http.clone(), refusals.clone());
            async move {
                let svc = service_fn(move |req| {
                    let (state, drain, refusals) = (state.clone(), drain.clone(), refusals.clone());
                    async move { Ok::<_, Infallible>(handle(&state, &drain, &refusals, req)) }
                });
                let ended = http.serve_http1(stream, svc, slot).await;
                tracing::debug!(%peer, %ended, "admin connection ended");
            }
        },
    )
    .await;
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut rsp = Response::new(body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn handle(
    state: &ProxyState,
    drain: &Drain,
    refusals: &LogThrottle,
    req: Request<Incoming>,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            if drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                match state.ready() {
                    Ok(()) => text(StatusCode::OK, "ready\n"),
                    Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                }
            }
        }
        (&Method::GET, "/metrics") => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let mut rsp = text(StatusCode::OK, state.metrics.encode_as(format));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(format.content_type()),
            );
            rsp
        }
        (&Method::GET, "/config") => config(state),
        (&Method::POST, "/shutdown") => {
            if let Err(why) = trellis_net::refuse_browser_request(req.headers(), req.uri(), true) {
                if let Some(suppressed) = refusals.allow() {
                    tracing::warn!(reason = %why, suppressed, "POST /shutdown refused");
                }
                return text(StatusCode::FORBIDDEN, format!("{why}\n"));
            }
            tracing::info!("shutdown requested on the admin port; draining");
            drain.start();
            text(StatusCode::OK, "draining\n")
        }
        (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST /shutdown\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /ready /live /metrics /config, POST /shutdown\n",
        ),
    }
}

fn config(state: &ProxyState) -> Response<Body> {
    let snap = state.snapshot.load_full();
    let services: serde_json::Value = snap
        .as_ref()
        .map(|s| {
            let mut list: Vec<_> = s
                .services
                .values()
                .map(|svc| {
                    let endpoints: Vec<_> = svc
                        .groups
                        .get(&None)
                        .map(|g| {
                            g.endpoints
                                .iter()
                                .map(|e| {
                                    serde_json::json!({
                                        "address": e.addr.to_string(),
                                        "labels": e.labels,
                                        "zone": e.zone,
                                        "inFlight": e.load.in_flight(),
                                    "ejected": e.outlier.is_ejected(),
                                    "ejections": e.outlier.ejections(),
                                    "backedOff": !e.outlier.accrual.is_available(),
                                    "backoffsInARow": e.outlier.accrual.level(),
                                        "ewmaMs": e.load.ewma_ms(),
                                        "identity": e.identity.as_ref().map(|i| i.to_string()),
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    serde_json::json!({
                        "name": &*svc.name,
                        "namespace": svc.namespace,
                        "rules": svc.rules.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
                        "endpoints": endpoints,
                        "mtls": svc.mtls,
                    })
                })
                .collect();
            list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            serde_json::Value::Array(list)
        })
        .unwrap_or(serde_json::Value::Null);
    let body = serde_json::json!({
        "identity": {
            "service": state.identity.service,
            "namespace": state.identity.namespace,
            "zone": state.identity.zone,
        },
        "version": snap.as_ref().map(|s| s.version),
        "source": snap.as_ref().map(|s| s.source.clone()),
        "lastError": state.last_error(),
        "controlPlane": state.control_status(),
        "tls": state.tls().map(|t| t.status()),
        "inbound": snap.as_ref().map(|s| serde_json::json!({
            "mtls": s.inbound.mtls,
            "port": s.inbound.port,
            "authorizationPolicies": !s.inbound.authorizer.is_empty(),
            "jwt": s.inbound.jwt.is_some(),
        })),
        "localApp": {
            "address": state.app.map(|a| a.to_string()),
            "health": match state.local_health() {
                None => serde_json::Value::Null,
                Some(Health::Unknown) => serde_json::json!("Unknown"),
                Some(Health::Healthy) => serde_json::json!("Healthy"),
                Some(Health::Unhealthy(why)) => serde_json::json!({"Unhealthy": why}),
            },
        },
        "services": services,
        "resources": snap.as_ref().map(|s| &s.resources),
    });
    let mut rsp = text(
        StatusCode::OK,
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    );
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    rsp
}
