//! Watches on etcd: one etcd watch over the resource prefix, from `from + 1`.
//!
//! etcd accepts a watch on compacted history and only then cancels it (with the compaction
//! revision). To answer `Compacted` from `watch()` itself, as the embedded store does, the watch
//! is created first and then one count-only read at `from + 1` asks whether that history still
//! exists; if not, the cancel that etcd is about to send says how far it was compacted.
use super::{decode_key, decode_kv, rev_i64, revision, EtcdStore};
use crate::store::{Result, Revision, StoreError, WatchEvent, WatchStream};
use etcd_tonic::Streaming;
use etcdv3client::pb::{self, event::EventType, watch_request};
use etcdv3client::ErrKind;
use std::collections::VecDeque;
use tokio::sync::mpsc;

struct State {
    store: String,
    prefix: String,
    /// Our half of the bidirectional stream; dropping it would end the watch.
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
    queue: VecDeque<WatchEvent>,
    last: Revision,
    done: bool,
}

pub(super) async fn watch(store: &EtcdStore, from: Revision) -> Result<WatchStream> {
    let (key, range_end) = store.range(None, None);
    let create = pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.clone(),
                range_end: range_end.clone(),
                start_revision: rev_i64(from.saturating_add(1)),
                ..Default::default()
            },
        )),
    };
    let what = format!("watch from revision {from}");
    let start = |mut c: super::Client| {
        let create = create.clone();
        async move {
            let (tx, mut rx) = mpsc::channel(1);
            // The receiver is alive, so this cannot fail; if it did, the watch would not start
            // and the wait for its confirmation below would say so.
            let _ = tx.try_send(create);
            let requests = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Ok((tx, c.watch.watch(requests).await?))
        }
    };
    let (tx, mut responses) = store.call(&what, false, start).await?;
    let created = store
        .timed(&what, async {
            Ok::<_, etcdv3client::Error>(responses.message().await?)
        })
        .await?;
    match created {
        Some(r) if r.created && !r.canceled => {}
        Some(r) => return Err(cancelled(store, from, &r)),
        None => {
            return Err(StoreError::Unavailable {
                store: store.name.clone(),
                detail: format!("{what}: etcd closed the stream"),
            })
        }
    }
    let probe = pb::RangeRequest {
        key,
        range_end,
        count_only: true,
        revision: rev_i64(from.saturating_add(1)),
        ..Default::default()
    };
    let attempt = |mut c: super::Client| {
        let probe = probe.clone();
        async move { c.kv.range(probe).await }
    };
    match store.within(&what, false, attempt).await? {
        Ok(_) => {}
        Err(e) if e.kind() == ErrKind::FutureRev => {}
        Err(e) if e.kind() == ErrKind::Compacted => {
            let notice = store
                .timed(&what, async {
                    Ok::<_, etcdv3client::Error>(responses.message().await?)
                })
                .await;
            let compacted = match notice {
                Ok(Some(r)) if r.compact_revision > 0 => revision(r.compact_revision) - 1,
                _ => from.saturating_add(1),
            };
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        Err(e) => return Err(store.error(&what, &e)),
    }
    let state = State {
        store: store.name.clone(),
        prefix: store.options.prefix.clone(),
        _requests: tx,
        responses,
        queue: VecDeque::new(),
        last: from,
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(state, next)))
}

fn cancelled(store: &EtcdStore, from: Revision, r: &pb::WatchResponse) -> StoreError {
    if r.compact_revision > 0 {
        StoreError::Compacted {
            requested: from,
            compacted: revision(r.compact_revision) - 1,
        }
    } else {
        StoreError::Backend {
            store: store.name.clone(),
            detail: format!("etcd cancelled the watch: {}", r.cancel_reason),
        }
    }
}

async fn next(mut st: State) -> Option<(Result<WatchEvent>, State)> {
    loop {
        if let Some(event) = st.queue.pop_front() {
            st.last = event.revision();
            return Some((Ok(event), st));
        }
        if st.done {
            return None;
        }
        let error = match st.responses.message().await {
            Ok(Some(r)) if r.canceled => {
                if r.compact_revision > 0 {
                    StoreError::Compacted {
                        requested: st.last,
                        compacted: revision(r.compact_revision) - 1,
                    }
                } else {
                    unavailable(
                        &st,
                        format!("etcd cancelled the watch: {}", r.cancel_reason),
                    )
                }
            }
            Ok(Some(r)) => match decode_events(&st, &r.events) {
                Ok(events) => {
                    st.queue.extend(events);
                    continue;
                }
                Err(e) => e,
            },
            Ok(None) => unavailable(&st, "etcd ended the watch stream".into()),
            Err(status) => unavailable(&st, format!("watch stream broke: {}", status.message())),
        };
        st.done = true;
        return Some((Err(error), st));
    }
}

fn unavailable(st: &State, detail: String) -> StoreError {
    StoreError::Unavailable {
        store: st.store.clone(),
        detail: format!(
            "{detail}; watch again from revision {} (the last one delivered)",
            st.last
        ),
    }
}

fn decode_events(st: &State, events: &[pb::Event]) -> Result<Vec<WatchEvent>> {
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let Some(kv) = &event.kv else { continue };
        if event.r#type == EventType::Delete as i32 {
            out.push(WatchEvent::Delete {
                key: decode_key(&st.store, &st.prefix, &kv.key)?,
                revision: revision(kv.mod_revision),
            });
        } else {
            out.push(WatchEvent::Put(decode_kv(&st.store, &st.prefix, kv)?));
        }
    }
    Ok(out)
}
