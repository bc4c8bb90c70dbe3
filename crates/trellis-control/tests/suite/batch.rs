//! Batches: all or nothing, one revision for every put, delivered together, receipts that
//! answer a repeated commit — including a batch far past etcd's 128-operation transaction limit.
use crate::support::{next_event, service, Backend};
use trellis_control::{
    Batch, BatchPut, Committed, Expect, Receipt, ResourceKey, StoreError, WatchEvent,
};

fn put(name: &str, port: u16, expect: Expect) -> BatchPut {
    BatchPut {
        resource: service("default", name, port),
        expect,
    }
}

pub async fn batch_commits_every_put_at_one_revision(b: impl Backend) {
    let store = b.open().await;
    let start = store.list(None, None).await.expect("list").revision;
    let mut stream = store.watch(start).await.expect("watch");
    let existing = store
        .create(service("default", "old", 80))
        .await
        .expect("create");
    let batch = Batch {
        puts: vec![
            put("a", 80, Expect::Absent),
            put("b", 80, Expect::Absent),
            put("old", 81, Expect::Version(existing.version)),
        ],
        read_at: existing.version,
        ..Batch::default()
    };
    let Committed::Done { revision } = store.commit(batch).await.expect("commit") else {
        panic!("a batch without a receipt cannot be a replay");
    };
    let listing = store.list(None, None).await.expect("list");
    let versions: Vec<(String, u64)> = listing
        .items
        .iter()
        .map(|s| (s.resource.metadata().name.clone(), s.version))
        .collect();
    assert_eq!(
        versions,
        vec![
            ("a".to_string(), revision),
            ("b".to_string(), revision),
            ("old".to_string(), revision)
        ]
    );
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Put(existing.clone())
    );
    for _ in 0..3 {
        assert_eq!(next_event(&mut stream).await.revision(), revision);
    }
}

pub async fn batch_with_a_stale_expectation_writes_nothing(b: impl Backend) {
    let store = b.open().await;
    let existing = store
        .create(service("default", "old", 80))
        .await
        .expect("create");
    let before = store.list(None, None).await.expect("list");
    let stale = Batch {
        puts: vec![
            put("a", 80, Expect::Absent),
            put("old", 81, Expect::Version(existing.version + 1000)),
        ],
        read_at: before.revision,
        ..Batch::default()
    };
    let err = store.commit(stale).await.expect_err("stale version");
    assert!(
        matches!(&err, StoreError::Conflict { key, .. } if key.name == "old"),
        "{err:?}"
    );
    let exists = Batch {
        puts: vec![put("b", 80, Expect::Absent), put("old", 82, Expect::Absent)],
        read_at: before.revision,
        ..Batch::default()
    };
    let err = store.commit(exists).await.expect_err("exists");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    let unchanged = Batch {
        puts: vec![put("c", 80, Expect::Absent)],
        unchanged: vec![(
            ResourceKey::new("Service", "default", "gone"),
            Expect::Version(7),
        )],
        read_at: before.revision,
        ..Batch::default()
    };
    let err = store
        .commit(unchanged)
        .await
        .expect_err("unchanged key moved");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let after = store.list(None, None).await.expect("list");
    assert_eq!(after.items, before.items, "a refused batch wrote something");
}

pub async fn receipts_answer_a_repeated_batch(b: impl Backend) {
    let store = b.open().await;
    let receipt = Receipt {
        id: "apply-0123456789abcdef".into(),
        body: b"{\"answer\": 1}".to_vec(),
    };
    assert_eq!(store.receipt(&receipt.id).await.expect("receipt"), None);
    let batch = Batch {
        puts: vec![put("a", 80, Expect::Absent)],
        receipt: Some(receipt.clone()),
        ..Batch::default()
    };
    let Committed::Done { revision } = store.commit(batch.clone()).await.expect("commit") else {
        panic!("first commit cannot be a replay");
    };
    // The same batch again: its expectation no longer holds, but the receipt answers first.
    assert_eq!(
        store.commit(batch).await.expect("replay"),
        Committed::Replayed {
            revision,
            body: receipt.body.clone()
        }
    );
    assert_eq!(
        store.receipt(&receipt.id).await.expect("receipt"),
        Some((revision, receipt.body))
    );
    assert_eq!(store.list(None, None).await.expect("list").items.len(), 1);
}

/// 500 documents with 500 exact expectations: one transaction on both stores, one revision.
pub async fn large_batches_are_one_transaction(b: impl Backend) {
    let store = b.open().await;
    let names: Vec<String> = (0..500).map(|i| format!("svc-{i:03}")).collect();
    let keys: Vec<ResourceKey> = names
        .iter()
        .map(|n| ResourceKey::new("Service", "default", n))
        .collect();
    let (current, read_at) = store.get_many(&keys).await.expect("get_many");
    assert!(current.iter().all(Option::is_none));
    let batch = Batch {
        puts: names.iter().map(|n| put(n, 80, Expect::Absent)).collect(),
        read_at,
        receipt: Some(Receipt {
            id: "large".into(),
            body: b"{}".to_vec(),
        }),
        ..Batch::default()
    };
    let Committed::Done { revision } = store.commit(batch).await.expect("commit 500") else {
        panic!("not a replay");
    };
    let (stored, at) = store.get_many(&keys).await.expect("get_many");
    assert!(at >= revision);
    assert!(stored
        .iter()
        .all(|s| s.as_ref().is_some_and(|s| s.version == revision)));
    // Every one of them again, one stale among 500: nothing changes.
    let mut puts: Vec<BatchPut> = stored
        .iter()
        .flatten()
        .map(|s| BatchPut {
            resource: service("default", &s.resource.metadata().name, 81),
            expect: Expect::Version(s.version),
        })
        .collect();
    puts[250].expect = Expect::Version(revision + 1000);
    let err = store
        .commit(Batch {
            puts,
            read_at: at,
            ..Batch::default()
        })
        .await
        .expect_err("one stale expectation");
    assert!(
        matches!(
            err,
            StoreError::Conflict { .. } | StoreError::BatchConflict { .. }
        ),
        "{err:?}"
    );
    let listing = store.list(Some("Service"), None).await.expect("list");
    assert_eq!(listing.items.len(), 500);
    assert!(listing.items.iter().all(|s| s.version == revision));
}
