//! Warnings that libraries log about what a remote peer did, written at most about once a
//! second per log statement, with a count of those held back.
//!
//! Why: the HTTP/2 library (`h2`) logs at WARN when a client misbehaves, and a client can do so
//! at will: a rapid-reset flood makes it write `recv_reset; remotely-reset pending-accept
//! streams reached limit` once per attacking connection, and every unsolicited PING ack makes
//! it write `recv PING ack that we never sent` (one line per frame). Those lines are in another
//! crate, so they cannot be turned into debug lines at the source; Trellis's own lines of that
//! kind go through a [`LogThrottle`](crate::LogThrottle) where they are written.
//! [`ThrottleLibraryWarnings`] wraps the log formatter: a WARN or ERROR event whose target is
//! one of those libraries goes through a [`LogThrottle`] of its own log statement; a line that
//! follows held-back ones ends with `(N similar lines suppressed)`. Everything else is written
//! as the wrapped formatter writes it.
use crate::throttle::LogThrottle;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Libraries that serve remote peers and log at WARN about them (crate names as log targets).
pub const PEER_FACING_LIBRARIES: [&str; 7] = [
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "axum",
    "rustls",
];

/// A log formatter that throttles the warnings of [`PEER_FACING_LIBRARIES`].
#[derive(Debug)]
pub struct ThrottleLibraryWarnings<F> {
    inner: F,
    interval: Duration,
    throttles: Mutex<HashMap<Identifier, Arc<LogThrottle>>>,
}

impl<F> ThrottleLibraryWarnings<F> {
    /// One line a second per log statement.
    pub fn new(inner: F) -> Self {
        Self::with_interval(inner, Duration::from_secs(1))
    }

    pub fn with_interval(inner: F, interval: Duration) -> Self {
        Self {
            inner,
            interval,
            throttles: Mutex::new(HashMap::new()),
        }
    }

    fn throttle(&self, id: Identifier) -> Arc<LogThrottle> {
        let mut map = self.throttles.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id)
            .or_insert_with(|| Arc::new(LogThrottle::new(self.interval)))
            .clone()
    }
}

/// Whether `target` is one of the libraries, or a module of one.
fn is_peer_facing(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    PEER_FACING_LIBRARIES.contains(&krate)
}

impl<S, N, F> FormatEvent<S, N> for ThrottleLibraryWarnings<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        // Levels order by verbosity: WARN and ERROR are the ones at or below WARN.
        if *meta.level() > Level::WARN || !is_peer_facing(meta.target()) {
            return self.inner.format_event(ctx, writer, event);
        }
        match self.throttle(meta.callsite()).allow() {
            // Held back (and counted): nothing is written.
            None => Ok(()),
            Some(0) => self.inner.format_event(ctx, writer, event),
            Some(suppressed) => {
                let mut line = String::new();
                self.inner
                    .format_event(ctx, Writer::new(&mut line), event)?;
                let line = line.trim_end_matches('\n');
                writeln!(writer, "{line} ({suppressed} similar lines suppressed)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn h2_like_warning(i: u32) {
        tracing::warn!(target: "h2::proto::ping_pong", "recv PING ack that we never sent: {i}");
    }

    #[test]
    fn library_warnings_are_throttled_per_statement_with_a_count() {
        let buf = Buf::default();
        let writer = buf.clone();
        let format = ThrottleLibraryWarnings::with_interval(
            tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false),
            Duration::from_millis(300),
        );
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(format)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                h2_like_warning(i);
                tracing::warn!(target: "trellis_proxy::admin", "own line {i}");
                tracing::debug!(target: "h2::proto", "debug lines are not this module's business");
            }
            tracing::warn!(target: "hyper::proto", "another statement has its own budget");
            std::thread::sleep(Duration::from_millis(400));
            h2_like_warning(100);
        });
        let lines = buf.lines();
        let h2: Vec<_> = lines.iter().filter(|l| l.contains("never sent")).collect();
        assert_eq!(h2.len(), 2, "{h2:#?}");
        assert!(h2[0].ends_with("never sent: 0"), "{}", h2[0]);
        assert!(
            h2[1].ends_with("never sent: 100 (99 similar lines suppressed)"),
            "{}",
            h2[1]
        );
        assert_eq!(lines.iter().filter(|l| l.contains("own line")).count(), 100);
        assert_eq!(lines.iter().filter(|l| l.contains("hyper::")).count(), 1);
        assert!(is_peer_facing("h2") && is_peer_facing("tonic::transport"));
        assert!(!is_peer_facing("h2o") && !is_peer_facing("trellis_proxy"));
    }
}
