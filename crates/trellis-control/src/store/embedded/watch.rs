//! Watches on the embedded store: replay the event log after the start revision, then follow the
//! broadcast channel; refill from the log when the channel overflowed.
use super::{run, Inner};
use crate::store::{Result, Revision, StoreError, WatchEvent, WatchStream};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast::{error::RecvError, Receiver};

/// The events of one committed transaction, as the broadcast channel carries them.
type Commit = Arc<Vec<WatchEvent>>;

struct State {
    inner: Weak<Inner>,
    name: String,
    rx: Receiver<Commit>,
    queue: VecDeque<WatchEvent>,
    /// The last revision delivered (or the start revision).
    last: Revision,
    done: bool,
}

pub(super) async fn watch(inner: &Arc<Inner>, from: Revision) -> Result<WatchStream> {
    let (rx, backlog) = run(inner, move |i| i.subscribe(from)).await?;
    let state = State {
        inner: Arc::downgrade(inner),
        name: inner.name.clone(),
        rx,
        queue: backlog.into(),
        last: from,
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(state, next)))
}

impl Inner {
    /// A receiver for every change after this moment, and the logged changes after `from` up to
    /// this moment. Taken under the write lock, so no change falls between the two or is in both.
    fn subscribe(&self, from: Revision) -> Result<(Receiver<Commit>, Vec<WatchEvent>)> {
        let (rx, snapshot) = {
            let _guard = self
                .write_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (self.events.subscribe(), self.read()?)
        };
        let backlog = self.events_after(&snapshot, from)?;
        Ok((rx, backlog))
    }
}

async fn next(mut st: State) -> Option<(Result<WatchEvent>, State)> {
    if st.done {
        return None;
    }
    loop {
        if let Some(event) = st.queue.pop_front() {
            st.last = event.revision();
            return Some((Ok(event), st));
        }
        match st.rx.recv().await {
            Ok(events) => {
                let last = st.last;
                st.queue
                    .extend(events.iter().filter(|e| e.revision() > last).cloned());
            }
            Err(RecvError::Lagged(_)) => {
                if let Err(e) = refill(&mut st).await {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
            Err(RecvError::Closed) => {
                st.done = true;
                let e = StoreError::Unavailable {
                    store: st.name.clone(),
                    detail: "the store was closed".into(),
                };
                return Some((Err(e), st));
            }
        }
    }
}

/// The watcher fell behind the channel: subscribe afresh and take the missed changes from the
/// log (or `Compacted`, if even the log has moved past them).
async fn refill(st: &mut State) -> Result<()> {
    let Some(inner) = st.inner.upgrade() else {
        return Err(StoreError::Unavailable {
            store: st.name.clone(),
            detail: "the store was closed".into(),
        });
    };
    let last = st.last;
    let (rx, backlog) = run(&inner, move |i| i.subscribe(last)).await?;
    st.rx = rx;
    st.queue = backlog.into();
    Ok(())
}
