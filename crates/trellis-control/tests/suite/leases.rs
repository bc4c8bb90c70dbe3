//! Leases: what the registry relies on to drop workloads whose proxy died.
use crate::support::{eventually, next_event, workload, Backend};
use std::time::{Duration, Instant};
use trellis_control::{StoreError, WatchEvent};

/// etcd's smallest TTL with default settings; the embedded store accepts it too.
const TTL: Duration = Duration::from_secs(2);
/// etcd looks for lapsed leases every 500 ms; allow for that and a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

pub async fn lapsed_lease_deletes_and_notifies(b: impl Backend) {
    let store = b.open().await;
    let lease = store.grant_lease(TTL).await.expect("grant");
    let granted = Instant::now();
    assert!(lease.ttl >= TTL, "{lease:?}");
    let w = store
        .put_with_lease(workload("default", "web-1", 8080), lease.id)
        .await
        .expect("put");
    assert_eq!(w.lease, Some(lease.id));
    assert_eq!(
        store
            .get("Workload", "default", "web-1")
            .await
            .expect("get"),
        Some(w.clone())
    );
    let mut stream = store.watch(w.version).await.expect("watch");
    let event = next_event(&mut stream).await;
    let elapsed = granted.elapsed();
    match event {
        WatchEvent::Delete { key, revision } => {
            assert_eq!(key, w.key());
            assert!(revision > w.version);
        }
        other => panic!("expected the workload's Delete, got {other:?}"),
    }
    assert!(
        elapsed >= TTL - Duration::from_millis(500),
        "deleted too early: {elapsed:?}"
    );
    assert!(
        elapsed <= lease.ttl + SLACK,
        "deleted too late: {elapsed:?}"
    );
    assert_eq!(
        store
            .get("Workload", "default", "web-1")
            .await
            .expect("get"),
        None
    );
}

pub async fn keep_alive_extends(b: impl Backend) {
    let store = b.open().await;
    let lease = store.grant_lease(TTL).await.expect("grant");
    let w = store
        .put_with_lease(workload("default", "web-1", 8080), lease.id)
        .await
        .expect("put");
    // Twice the TTL, kept alive every half second.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        store.keep_alive(lease.id).await.expect("keep alive");
    }
    assert_eq!(
        store
            .get("Workload", "default", "web-1")
            .await
            .expect("get"),
        Some(w),
        "a kept-alive lease keeps its resources"
    );
    let stopped = Instant::now();
    eventually(
        lease.ttl + SLACK,
        "workload gone after keep-alives stop",
        || {
            let store = store.clone();
            async move {
                let got = store
                    .get("Workload", "default", "web-1")
                    .await
                    .expect("get");
                got.is_none().then_some(())
            }
        },
    )
    .await;
    assert!(stopped.elapsed() >= TTL - Duration::from_millis(500));
}

pub async fn revoke_deletes_at_once(b: impl Backend) {
    let store = b.open().await;
    let lease = store
        .grant_lease(Duration::from_secs(60))
        .await
        .expect("grant");
    let w1 = store
        .put_with_lease(workload("default", "web-1", 8080), lease.id)
        .await
        .expect("put");
    store
        .put_with_lease(workload("default", "web-2", 8080), lease.id)
        .await
        .expect("put");
    let mut stream = store.watch(w1.version).await.expect("watch");
    assert!(matches!(next_event(&mut stream).await, WatchEvent::Put(_)));
    store.revoke_lease(lease.id).await.expect("revoke");
    let left = store.list(Some("Workload"), None).await.expect("list");
    assert!(left.items.is_empty(), "{left:?}");
    let mut deleted = Vec::new();
    for _ in 0..2 {
        match next_event(&mut stream).await {
            WatchEvent::Delete { key, .. } => deleted.push(key.name),
            other => panic!("expected Delete, got {other:?}"),
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["web-1", "web-2"]);
    let err = store.revoke_lease(lease.id).await.expect_err("gone");
    assert_eq!(err, StoreError::LeaseNotFound { lease: lease.id });
}

pub async fn lapsed_lease_cannot_be_used(b: impl Backend) {
    let store = b.open().await;
    let lease = store.grant_lease(TTL).await.expect("grant");
    let w = store
        .put_with_lease(workload("default", "web-1", 8080), lease.id)
        .await
        .expect("put");
    let mut stream = store.watch(w.version).await.expect("watch");
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Delete { .. }
    ));
    let err = store.keep_alive(lease.id).await.expect_err("lapsed");
    assert_eq!(err, StoreError::LeaseNotFound { lease: lease.id });
    assert!(err.to_string().contains(&lease.id.to_string()), "{err}");
    let err = store
        .put_with_lease(workload("default", "web-1", 8080), lease.id)
        .await
        .expect_err("lapsed");
    assert_eq!(err, StoreError::LeaseNotFound { lease: lease.id });
    assert_eq!(
        store
            .get("Workload", "default", "web-1")
            .await
            .expect("get"),
        None
    );
    let err = store.revoke_lease(lease.id).await.expect_err("lapsed");
    assert_eq!(err, StoreError::LeaseNotFound { lease: lease.id });
}

pub async fn replace_detaches_from_lease(b: impl Backend) {
    let store = b.open().await;
    let lease = store.grant_lease(TTL).await.expect("grant");
    store
        .put_with_lease(workload("default", "web-1", 8080), lease.id)
        .await
        .expect("put");
    let pinned = store
        .replace(workload("default", "web-1", 8081), None)
        .await
        .expect("replace");
    assert_eq!(pinned.lease, None);
    tokio::time::sleep(lease.ttl + SLACK).await;
    assert_eq!(
        store
            .get("Workload", "default", "web-1")
            .await
            .expect("get"),
        Some(pinned),
        "a resource replaced without a lease outlives the lease"
    );
}

pub async fn leases_survive_restart_with_a_fresh_ttl(mut b: impl Backend) {
    let store = b.open().await;
    let lease = store
        .grant_lease(Duration::from_secs(4))
        .await
        .expect("grant");
    let w = store
        .put_with_lease(workload("default", "web-1", 8080), lease.id)
        .await
        .expect("put");
    drop(store);
    b.restart().await;
    let store = b.open().await;
    let restarted = Instant::now();
    store
        .keep_alive(lease.id)
        .await
        .expect("the lease lives on");
    assert_eq!(
        store
            .get("Workload", "default", "web-1")
            .await
            .expect("get"),
        Some(w)
    );
    eventually(
        lease.ttl + SLACK,
        "workload gone once its lease lapses",
        || {
            let store = store.clone();
            async move {
                let got = store
                    .get("Workload", "default", "web-1")
                    .await
                    .expect("get");
                got.is_none().then_some(())
            }
        },
    )
    .await;
    assert!(restarted.elapsed() >= Duration::from_secs(3));
}
