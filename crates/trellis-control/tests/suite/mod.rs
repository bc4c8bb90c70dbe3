//! The conformance suite: every store must pass every test here. `conformance!(backend)`
//! instantiates all of them for one store (see `conformance_embedded.rs`, `conformance_etcd.rs`).
#![allow(dead_code)]

mod batch;
mod leases;
mod watch;

pub use batch::*;
pub use leases::*;
pub use watch::*;

use crate::support::{service, service_with_version, workload, Backend};
use trellis_api::Resource;
use trellis_control::StoreError;

/// One `#[tokio::test]` per suite function, each bounded to 120 s.
macro_rules! conformance {
    ($backend:expr) => {
        conformance!(@each $backend;
            create_get_list, create_existing_is_already_exists, replace_checks_the_version,
            replace_without_version_upserts, delete_checks_the_version, list_filters,
            invalid_writes_change_nothing, bad_keys_are_rejected, data_survives_restart,
            watch_delivers_changes_in_order, watch_resumes_without_gaps, watch_after_compaction,
            lapsed_lease_deletes_and_notifies, keep_alive_extends, revoke_deletes_at_once,
            lapsed_lease_cannot_be_used, replace_detaches_from_lease,
            leases_survive_restart_with_a_fresh_ttl, batch_commits_every_put_at_one_revision,
            batch_with_a_stale_expectation_writes_nothing, receipts_answer_a_repeated_batch,
            large_batches_are_one_transaction);
    };
    (@each $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = $backend.await;
                let limit = std::time::Duration::from_secs(120);
                if tokio::time::timeout(limit, suite::$name(backend)).await.is_err() {
                    panic!("{} did not finish within {limit:?}", stringify!($name));
                }
            }
        )*
    };
}

fn name(r: &Resource) -> String {
    r.metadata().name.clone()
}

pub async fn create_get_list(b: impl Backend) {
    let store = b.open().await;
    let web = service("default", "web", 80);
    let stored = store.create(web.clone()).await.expect("create");
    assert_eq!(stored.resource, web);
    assert!(stored.version > 0);
    assert_eq!(stored.lease, None);
    let got = store.get("Service", "default", "web").await.expect("get");
    assert_eq!(got, Some(stored.clone()));
    assert_eq!(
        store.get("Service", "default", "nope").await.expect("get"),
        None
    );
    let listing = store.list(None, None).await.expect("list");
    assert_eq!(listing.items, vec![stored.clone()]);
    assert!(listing.revision >= stored.version);
    // metadata.resourceVersion is the API layer's: never stored, never a condition here.
    let api = store
        .create(service_with_version("default", "api", "999"))
        .await
        .expect("create");
    assert_eq!(api.resource, service("default", "api", 80));
    let got = store.get("Service", "default", "api").await.expect("get");
    assert_eq!(got.map(|s| s.resource), Some(service("default", "api", 80)));
}

pub async fn create_existing_is_already_exists(b: impl Backend) {
    let store = b.open().await;
    let first = store
        .create(service("default", "web", 80))
        .await
        .expect("create");
    let err = store
        .create(service("default", "web", 81))
        .await
        .expect_err("exists");
    match &err {
        StoreError::AlreadyExists { key, version } => {
            assert_eq!(key.to_string(), "Service/default/web");
            assert_eq!(*version, first.version);
        }
        other => panic!("expected AlreadyExists, got {other}"),
    }
    assert!(err.to_string().contains("Service/default/web"), "{err}");
    let got = store.get("Service", "default", "web").await.expect("get");
    assert_eq!(got, Some(first));
}

pub async fn replace_checks_the_version(b: impl Backend) {
    let store = b.open().await;
    let v1 = store
        .create(service("default", "web", 80))
        .await
        .expect("create");
    let v2 = store
        .replace(service("default", "web", 81), Some(v1.version))
        .await
        .expect("replace at the current version");
    assert!(v2.version > v1.version);
    let err = store
        .replace(service("default", "web", 82), Some(v1.version))
        .await
        .expect_err("stale version");
    assert_eq!(
        err,
        StoreError::Conflict {
            key: v1.key(),
            expected: v1.version,
            current: v2.version
        }
    );
    assert!(err.to_string().contains("Service/default/web"), "{err}");
    let got = store.get("Service", "default", "web").await.expect("get");
    assert_eq!(got, Some(v2), "a conflicting replace changes nothing");
    let err = store
        .replace(service("default", "gone", 80), Some(v1.version))
        .await
        .expect_err("missing");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(
        store.get("Service", "default", "gone").await.expect("get"),
        None
    );
}

pub async fn replace_without_version_upserts(b: impl Backend) {
    let store = b.open().await;
    let created = store
        .replace(service("default", "web", 80), None)
        .await
        .expect("upsert creates");
    let replaced = store
        .replace(service("default", "web", 81), None)
        .await
        .expect("upsert replaces");
    assert!(replaced.version > created.version);
    let got = store.get("Service", "default", "web").await.expect("get");
    assert_eq!(got, Some(replaced));
}

pub async fn delete_checks_the_version(b: impl Backend) {
    let store = b.open().await;
    let v1 = store
        .create(service("default", "web", 80))
        .await
        .expect("create");
    let v2 = store
        .replace(service("default", "web", 81), None)
        .await
        .expect("replace");
    let err = store
        .delete("Service", "default", "web", Some(v1.version))
        .await
        .expect_err("stale");
    assert!(
        matches!(err, StoreError::Conflict { current, .. } if current == v2.version),
        "{err}"
    );
    assert_eq!(
        store.get("Service", "default", "web").await.expect("get"),
        Some(v2.clone())
    );
    let rev = store
        .delete("Service", "default", "web", Some(v2.version))
        .await
        .expect("delete at the current version");
    assert!(rev > v2.version);
    assert_eq!(
        store.get("Service", "default", "web").await.expect("get"),
        None
    );
    let err = store
        .delete("Service", "default", "web", None)
        .await
        .expect_err("gone");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("Service/default/web"), "{err}");
    store
        .create(service("default", "api", 80))
        .await
        .expect("create");
    store
        .delete("Service", "default", "api", None)
        .await
        .expect("unconditional delete");
    assert_eq!(store.list(None, None).await.expect("list").items, vec![]);
}

pub async fn list_filters(b: impl Backend) {
    let store = b.open().await;
    for r in [
        service("default", "web", 80),
        service("prod", "web", 80),
        service("prod", "api", 80),
        workload("prod", "web-1", 8080),
        workload("default", "web-1", 8080),
    ] {
        store.create(r).await.expect("create");
    }
    let names = |items: &[trellis_control::Stored]| -> Vec<String> {
        items.iter().map(|s| s.key().to_string()).collect()
    };
    let all = store.list(None, None).await.expect("list");
    assert_eq!(all.items.len(), 5);
    let services = store.list(Some("Service"), None).await.expect("list");
    assert_eq!(
        names(&services.items),
        [
            "Service/default/web",
            "Service/prod/api",
            "Service/prod/web"
        ]
    );
    let prod_services = store
        .list(Some("Service"), Some("prod"))
        .await
        .expect("list");
    assert_eq!(
        names(&prod_services.items),
        ["Service/prod/api", "Service/prod/web"]
    );
    let prod = store.list(None, Some("prod")).await.expect("list");
    assert_eq!(prod.items.len(), 3);
    assert!(prod
        .items
        .iter()
        .all(|s| s.resource.metadata().namespace == "prod"));
    let routes = store.list(Some("Route"), None).await.expect("list");
    assert!(routes.items.is_empty());
    assert_eq!(routes.revision, all.revision);
}

pub async fn invalid_writes_change_nothing(b: impl Backend) {
    let store = b.open().await;
    let good = store
        .create(service("default", "web", 80))
        .await
        .expect("create");
    let mut bad = service("default", "web", 80);
    if let Resource::Service(s) = &mut bad {
        s.spec.ports.clear();
    }
    let before = store.list(None, None).await.expect("list");
    for result in [
        store.create(bad.clone()).await,
        store.replace(bad.clone(), None).await,
        store.replace(bad.clone(), Some(good.version)).await,
    ] {
        let err = result.expect_err("invalid");
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("spec.ports"), "{err}");
        assert!(err.to_string().contains("Service/default/web"), "{err}");
    }
    let lease = store
        .grant_lease(std::time::Duration::from_secs(10))
        .await
        .expect("grant");
    let err = store
        .put_with_lease(bad, lease.id)
        .await
        .expect_err("invalid");
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    let after = store.list(None, None).await.expect("list");
    assert_eq!(after.items, before.items);
    assert_eq!(name(&after.items[0].resource), "web");
}

pub async fn bad_keys_are_rejected(b: impl Backend) {
    let store = b.open().await;
    for (kind, ns, name) in [
        ("Nope", "default", "web"),
        ("Service", "a/b", "web"),
        ("Service", "default", ""),
    ] {
        let err = store.get(kind, ns, name).await.expect_err("bad key");
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
        let err = store
            .delete(kind, ns, name, None)
            .await
            .expect_err("bad key");
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    }
    let err = store.list(Some("Nope"), None).await.expect_err("bad kind");
    assert!(err.to_string().contains("unknown kind"), "{err}");
}

pub async fn data_survives_restart(mut b: impl Backend) {
    let store = b.open().await;
    store
        .create(service("default", "web", 80))
        .await
        .expect("create");
    store
        .create(service("default", "api", 80))
        .await
        .expect("create");
    store
        .create(service("default", "old", 80))
        .await
        .expect("create");
    let mid = store.list(None, None).await.expect("list").revision;
    store
        .replace(service("default", "web", 81), None)
        .await
        .expect("replace");
    store
        .delete("Service", "default", "old", None)
        .await
        .expect("delete");
    let before = store.list(None, None).await.expect("list");
    drop(store);
    b.restart().await;
    let store = b.open().await;
    let after = store.list(None, None).await.expect("list after restart");
    assert_eq!(after.items, before.items);
    assert!(after.revision >= before.revision);
    // History survives too: a watcher can resume from before the restart.
    let mut stream = store.watch(mid).await.expect("watch");
    let put = crate::support::next_event(&mut stream).await;
    assert_eq!(put.key().to_string(), "Service/default/web");
    let del = crate::support::next_event(&mut stream).await;
    assert!(
        matches!(&del, trellis_control::WatchEvent::Delete { key, .. } if key.name == "old"),
        "{del:?}"
    );
    let next = store
        .create(service("default", "new", 80))
        .await
        .expect("write after restart");
    assert!(next.version > before.revision);
}
