//! `GET /dashboard/api/events`: server-sent events that keep an open dashboard current without
//! reloads. Every [`PERIOD`] it sends `topology` (the graph over the page's window), `status`
//! (replicas, store, proxies and rejections) and, when the page shows one, `service`.
//!
//! The stream stops as soon as the browser goes (the next write fails); while it runs it costs
//! one stat question to the proxies per period and window, shared by every viewer through the
//! topology cache.
use super::data::{self, window};
use super::Shared;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// How often an open page is brought up to date.
pub const PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    window: Option<u32>,
    /// `namespace/name` of the service the page shows.
    service: Option<String>,
}

/// One event in the SSE wire format.
pub fn event(name: &str, data: &Value) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

/// What one period sends.
async fn frame(s: &Shared, window: u32, service: Option<&(String, String)>) -> Bytes {
    let mut out = Vec::new();
    match data::topology_json(s, window).await {
        Ok(json) => {
            out.extend_from_slice(b"event: topology\ndata: ");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"\n\n");
        }
        Err(e) => {
            let v = serde_json::json!({ "error": e.message() });
            out.extend_from_slice(&event("problem", &v));
        }
    }
    out.extend_from_slice(&event("status", &data::status_value(s).await));
    if let Some((ns, name)) = service {
        let v = data::service_value(s, ns, name)
            .await
            .unwrap_or_else(|| serde_json::json!({ "missing": format!("{ns}/{name}") }));
        out.extend_from_slice(&event("service", &v));
    }
    Bytes::from(out)
}

/// `GET /dashboard/api/events?window=SECS&service=NS/NAME`.
pub async fn events(State(s): State<Shared>, Query(q): Query<EventsQuery>) -> Response {
    let window = window(q.window);
    let service = q
        .service
        .as_deref()
        .and_then(|v| v.split_once('/'))
        .map(|(ns, n)| (ns.to_string(), n.to_string()));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let f = frame(&s, window, service.as_ref()).await;
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, std::convert::Infallible>,
    );
    let mut rsp = Body::from_stream(stream).into_response();
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    super::assets::harden(h);
    rsp
}
