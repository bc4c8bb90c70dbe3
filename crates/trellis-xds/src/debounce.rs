//! Coalescing bursts of config changes without delaying a lone change.
//!
//! Istio's push debounce waits for a quiet period before every push, so a single change pays the
//! whole window (istio/istio#14349, #44985). [`Debouncer`] fires on the leading edge instead: a
//! change after a quiet spell is released at once; changes that arrive within `window` of the
//! last release are merged into one release at the end of that window. No change waits longer
//! than `window`, and a storm of changes costs at most one push per window.
//!
//! It carries no data, only "something changed": the control plane recomputes views from its
//! store when [`Debouncer::next`] returns, so nothing can be lost by merging.
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Duration, Instant};

/// The sending side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct DebounceTrigger {
    tx: mpsc::Sender<()>,
}

impl DebounceTrigger {
    /// Records that something changed. Merges with a change already waiting.
    pub fn trigger(&self) {
        // Full means a change is already pending; closed means nobody listens any more.
        let _ = self.tx.try_send(());
    }
}

/// The receiving side; see the module docs.
#[derive(Debug)]
pub struct Debouncer {
    rx: mpsc::Receiver<()>,
    window: Duration,
    last_release: Option<Instant>,
}

impl Debouncer {
    /// A debouncer whose trailing window is `window` (5–10 ms suits config pushes).
    pub fn new(window: Duration) -> (DebounceTrigger, Debouncer) {
        let (tx, rx) = mpsc::channel(1);
        let debouncer = Debouncer {
            rx,
            window,
            last_release: None,
        };
        (DebounceTrigger { tx }, debouncer)
    }

    /// Waits for the next release: returns `Some(merged)` with how many triggers it merged (at
    /// least 1, counting only those seen), or `None` once every trigger is dropped and nothing
    /// is pending.
    pub async fn next(&mut self) -> Option<usize> {
        self.rx.recv().await?;
        let mut merged = 1;
        if let Some(last) = self.last_release {
            let due = last + self.window;
            if Instant::now() < due {
                // Inside the window of the previous release: hold until it ends, merging.
                sleep_until(due).await;
                while self.rx.try_recv().is_ok() {
                    merged += 1;
                }
            }
        }
        self.last_release = Some(Instant::now());
        Some(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_released_at_once() {
        let (trigger, mut d) = Debouncer::new(WINDOW);
        let start = Instant::now();
        trigger.trigger();
        assert_eq!(d.next().await, Some(1));
        assert_eq!(start.elapsed(), Duration::ZERO);

        // After a quiet spell longer than the window, again at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        trigger.trigger();
        assert_eq!(d.next().await, Some(1));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_merged_and_waits_at_most_one_window() {
        let (trigger, mut d) = Debouncer::new(WINDOW);
        let start = Instant::now();
        let burst = {
            let trigger = trigger.clone();
            tokio::spawn(async move {
                // 100 changes, one every 1 ms.
                for _ in 0..100 {
                    trigger.trigger();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let mut releases = Vec::new();
        while releases.len() < 11 {
            let Some(_) = d.next().await else { break };
            releases.push(start.elapsed());
        }
        burst.await.expect("burst task");
        // The first change goes at once; then one release per window, never later than that.
        assert_eq!(releases[0], Duration::ZERO);
        for pair in releases.windows(2) {
            assert!(pair[1] - pair[0] <= WINDOW, "{releases:?}");
            assert!(pair[1] - pair[0] >= WINDOW, "{releases:?}");
        }
        drop(trigger);
        // Whatever is still pending is released, then the debouncer ends.
        while d.next().await.is_some() {}
    }

    #[tokio::test(start_paused = true)]
    async fn ends_when_triggers_are_dropped() {
        let (trigger, mut d) = Debouncer::new(WINDOW);
        drop(trigger);
        assert_eq!(d.next().await, None);
    }
}
