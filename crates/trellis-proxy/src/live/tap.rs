//! Live taps: requests as they pass, for `trellis tap` and `trellis top`.
//!
//! With no tap open a request pays one atomic load ([`Taps::wants`]). With one open, a request
//! the tap could match takes a record (the access-log line's, see `access_log::RequestLine`)
//! and is offered to the taps when its response ends. Each tap sends at most its
//! `maxPerSecond` and counts what it left out; events go through a bounded queue, so a slow
//! reader loses events, never delays a request. Credentials in request headers
//! ([`REDACTED_HEADERS`]) never leave the proxy.
use http::HeaderMap;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::mpsc;
use trellis_api::telemetry::{TapEvent, TapFilter, REDACTED_HEADERS};

/// Events queued for one tap before they are dropped.
const QUEUE: usize = 256;

struct Session {
    filter: TapFilter,
    proxy: String,
    namespace: String,
    events: mpsc::Sender<Vec<u8>>,
    second: Instant,
    sent_this_second: u32,
    dropped: u64,
}

/// The taps open on this proxy.
#[derive(Default)]
pub struct Taps {
    open: AtomicUsize,
    sessions: Mutex<Vec<Session>>,
    /// `trellis_taps_open`.
    gauge: Gauge,
}

impl Taps {
    pub fn new(gauge: Gauge) -> Self {
        Self {
            gauge,
            ..Self::default()
        }
    }

    fn count(&self, sessions: &[Session]) {
        self.open.store(sessions.len(), Ordering::Release);
        self.gauge.set(sessions.len() as i64);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a tap; it closes when the receiver is dropped.
    pub fn open(&self, filter: TapFilter, proxy: &str, namespace: &str) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut sessions = self.lock();
        sessions.retain(|s| !s.events.is_closed());
        sessions.push(Session {
            filter,
            proxy: proxy.to_string(),
            namespace: namespace.to_string(),
            events: tx,
            second: Instant::now(),
            sent_this_second: 0,
            dropped: 0,
        });
        self.count(&sessions);
        rx
    }

    /// Whether some open tap may want a request with this method and path.
    pub fn wants(&self, method: &str, path: &str) -> bool {
        if self.open.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut sessions = self.lock();
        sessions.retain(|s| !s.events.is_closed());
        self.count(&sessions);
        sessions
            .iter()
            .any(|s| s.filter.admits_request(method, path))
    }

    /// Hands a finished request to every tap that matches it.
    pub fn offer(&self, event: TapEvent) {
        let mut sessions = self.lock();
        let now = Instant::now();
        for s in sessions.iter_mut().filter(|s| s.filter.matches(&event)) {
            if now.duration_since(s.second).as_secs() >= 1 {
                s.second = now;
                s.sent_this_second = 0;
            }
            if s.sent_this_second >= s.filter.max_per_second.max(1) {
                s.dropped += 1;
                continue;
            }
            let mut e = event.clone();
            e.proxy.clone_from(&s.proxy);
            e.namespace.clone_from(&s.namespace);
            e.dropped_before = s.dropped;
            let Ok(body) = serde_json::to_vec(&e) else {
                continue;
            };
            match s.events.try_send(body) {
                Ok(()) => {
                    s.sent_this_second += 1;
                    s.dropped = 0;
                }
                Err(_) => s.dropped += 1,
            }
        }
    }
}

/// Request headers as (name, value) pairs.
pub type Headers = Vec<(String, String)>;

/// A request's headers as a tap shows them: credentials replaced by `<redacted>`.
pub fn shown_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            let value = if REDACTED_HEADERS.contains(&name) {
                "<redacted>".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.to_string(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> TapEvent {
        TapEvent {
            method: "GET".into(),
            path: path.into(),
            direction: "inbound".into(),
            destination: "ratings".into(),
            ..TapEvent::default()
        }
    }

    #[test]
    fn credentials_never_leave_the_proxy() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer secret".parse().unwrap());
        h.insert("cookie", "session=secret".parse().unwrap());
        h.insert("x-user", "alice".parse().unwrap());
        let shown = shown_headers(&h);
        assert!(!format!("{shown:?}").contains("secret"), "{shown:?}");
        assert!(shown.contains(&("x-user".into(), "alice".into())));
    }

    #[tokio::test]
    async fn a_tap_sees_matching_requests_and_closes_with_its_reader() {
        let taps = Taps::default();
        assert!(!taps.wants("GET", "/"));
        let filter = TapFilter {
            path_prefix: Some("/api".into()),
            max_per_second: 2,
            ..TapFilter::default()
        };
        let mut rx = taps.open(filter, "p1", "default");
        assert!(taps.wants("GET", "/api/x"));
        assert!(!taps.wants("GET", "/other"));
        for _ in 0..5 {
            taps.offer(event("/api/x"));
        }
        taps.offer(event("/other"));
        let first: TapEvent = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert_eq!(
            (first.proxy.as_str(), first.path.as_str()),
            ("p1", "/api/x")
        );
        assert!(rx.recv().await.is_some());
        assert!(rx.try_recv().is_err(), "over the rate: left out");
        drop(rx);
        assert!(!taps.wants("GET", "/api/x"), "a closed tap is forgotten");
    }
}
