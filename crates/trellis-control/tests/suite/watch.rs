//! Watch: order, revisions, resuming without gaps, and compacted history.
use crate::support::{assert_quiet, next_event, next_item, service, Backend};
use std::time::Duration;
use trellis_control::{StoreError, WatchEvent};

pub async fn watch_delivers_changes_in_order(b: impl Backend) {
    let store = b.open().await;
    let start = store.list(None, None).await.expect("list").revision;
    let mut stream = store.watch(start).await.expect("watch");
    let a1 = store
        .create(service("default", "a", 80))
        .await
        .expect("create");
    let a2 = store
        .replace(service("default", "a", 81), Some(a1.version))
        .await
        .expect("replace");
    let b1 = store
        .create(service("prod", "b", 80))
        .await
        .expect("create");
    let gone = store
        .delete("Service", "default", "a", None)
        .await
        .expect("delete");
    assert_eq!(next_event(&mut stream).await, WatchEvent::Put(a1.clone()));
    assert_eq!(next_event(&mut stream).await, WatchEvent::Put(a2.clone()));
    assert_eq!(next_event(&mut stream).await, WatchEvent::Put(b1.clone()));
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Delete {
            key: a1.key(),
            revision: gone
        }
    );
    assert!(a1.version < a2.version && a2.version < b1.version && b1.version < gone);
    // A refused write is not an event.
    let _ = store.create(service("prod", "b", 80)).await;
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

pub async fn watch_resumes_without_gaps(b: impl Backend) {
    let store = b.open().await;
    let a = store
        .create(service("default", "a", 80))
        .await
        .expect("create");
    let bb = store
        .create(service("default", "b", 80))
        .await
        .expect("create");
    let c = store
        .create(service("default", "c", 80))
        .await
        .expect("create");
    // Resume after `a`: exactly b and c, then whatever comes next.
    let mut stream = store.watch(a.version).await.expect("watch");
    assert_eq!(next_event(&mut stream).await, WatchEvent::Put(bb));
    assert_eq!(next_event(&mut stream).await, WatchEvent::Put(c.clone()));
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
    // List, write, then watch from the list's revision: the write is the first event.
    let listing = store.list(None, None).await.expect("list");
    assert_eq!(listing.items.len(), 3);
    let d = store
        .create(service("default", "d", 80))
        .await
        .expect("create");
    let mut from_list = store.watch(listing.revision).await.expect("watch");
    assert_eq!(next_event(&mut from_list).await, WatchEvent::Put(d.clone()));
    assert_eq!(next_event(&mut stream).await, WatchEvent::Put(d.clone()));
    // Watching from the newest revision delivers only later changes.
    let mut latest = store.watch(d.version).await.expect("watch");
    assert_quiet(&mut latest, Duration::from_millis(300)).await;
    let e = store
        .create(service("default", "e", 80))
        .await
        .expect("create");
    assert_eq!(next_event(&mut latest).await, WatchEvent::Put(e));
}

pub async fn watch_after_compaction(b: impl Backend) {
    let store = b.open().await;
    let first = store
        .create(service("default", "s0", 80))
        .await
        .expect("create");
    for i in 1..6 {
        store
            .create(service("default", &format!("s{i}"), 80))
            .await
            .expect("create");
    }
    let now = store.list(None, None).await.expect("list").revision;
    store.compact(now).await.expect("compact");
    store
        .compact(now)
        .await
        .expect("compacting again is harmless");
    // Recent history still works.
    let mut stream = store
        .watch(now)
        .await
        .expect("watch from the compaction point");
    let next = store
        .create(service("default", "s6", 80))
        .await
        .expect("create");
    assert_eq!(next_event(&mut stream).await, WatchEvent::Put(next));
    // Older history is gone: Compacted, from the call or as the stream's first item.
    let err = match store.watch(first.version).await {
        Err(e) => e,
        Ok(mut old) => match next_item(&mut old, Duration::from_secs(10)).await {
            Some(Err(e)) => e,
            other => panic!("expected Compacted, got {other:?}"),
        },
    };
    match &err {
        StoreError::Compacted {
            requested,
            compacted,
        } => {
            assert_eq!(*requested, first.version);
            assert!(*compacted >= first.version && *compacted <= now, "{err}");
        }
        other => panic!("expected Compacted, got {other}"),
    }
    assert!(err.to_string().contains("list again"), "{err}");
}
