//! What only the embedded store has: its file format, its bounded history and its broadcast
//! channel. The behaviour both stores share is in `tests/conformance_*.rs`.
use super::*;
use crate::store::WatchEvent;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("trellis-control-unit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn service(name: &str) -> Resource {
    let text = format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{ports: [{{port: 80}}]}}\n"
    );
    trellis_api::parse_documents("fixture", &text)
        .map(|s| s.resources[0].clone())
        .expect("fixture parses")
}

async fn next(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("event within 5s")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn corrupt_values_are_errors_naming_the_key() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0, EmbeddedOptions::default())
        .await
        .expect("open");
    store.create(service("good")).await.expect("create");
    for (key, bytes) in [
        ("Service/default/short", &b"\x00\x01"[..]),
        (
            "Service/default/junk",
            b"\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00{oops",
        ),
    ] {
        db::put_raw(&store.inner, key, bytes).expect("raw write");
        let name = key.rsplit('/').next().unwrap_or_default();
        let err = store
            .get("Service", "default", name)
            .await
            .expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(key), "{err}");
        assert!(
            err.to_string().contains(&*store.path().to_string_lossy()),
            "{err}"
        );
    }
    let err = store
        .list(Some("Service"), None)
        .await
        .expect_err("corrupt");
    assert!(err.to_string().contains("Service/default/"), "{err}");
    // Keys elsewhere still read fine.
    assert!(store
        .get("Service", "default", "good")
        .await
        .expect("get")
        .is_some());
}

#[tokio::test]
async fn a_second_open_of_the_same_file_fails_clearly() {
    let dir = TempDir::new();
    let _first = EmbeddedStore::open(&dir.0, EmbeddedOptions::default())
        .await
        .expect("open");
    let Err(err) = EmbeddedStore::open(&dir.0, EmbeddedOptions::default()).await else {
        panic!("second open must fail");
    };
    let text = err.to_string();
    assert!(
        text.contains("already open") && text.contains("trellis.redb"),
        "{text}"
    );
}

#[tokio::test]
async fn history_is_bounded_and_older_watches_are_compacted() {
    let dir = TempDir::new();
    let options = EmbeddedOptions {
        retained_events: 5,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(&dir.0, options).await.expect("open");
    for i in 0..10 {
        store
            .create(service(&format!("s{i}")))
            .await
            .expect("create");
    }
    let Err(err) = store.watch(2).await else {
        panic!("revision 2 is gone");
    };
    assert_eq!(
        err,
        StoreError::Compacted {
            requested: 2,
            compacted: 5
        }
    );
    let mut stream = store.watch(5).await.expect("recent history is kept");
    for rev in 6..=10 {
        assert_eq!(next(&mut stream).await.revision(), rev);
    }
}

#[tokio::test]
async fn a_watcher_that_falls_behind_refills_from_the_log() {
    let dir = TempDir::new();
    let options = EmbeddedOptions {
        watch_buffer: 16,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(&dir.0, options).await.expect("open");
    let mut stream = store.watch(0).await.expect("watch");
    for i in 0..100 {
        store
            .create(service(&format!("s{i}")))
            .await
            .expect("create");
    }
    for rev in 1..=100 {
        let event = next(&mut stream).await;
        assert_eq!(event.revision(), rev);
        assert_eq!(event.key().name, format!("s{}", rev - 1));
    }
}

#[tokio::test]
async fn watch_ends_with_an_error_when_the_store_is_closed() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(&dir.0, EmbeddedOptions::default())
        .await
        .expect("open");
    let mut stream = store.watch(0).await.expect("watch");
    drop(store);
    let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("ends within 5s");
    assert!(
        matches!(item, Some(Err(StoreError::Unavailable { .. }))),
        "{item:?}"
    );
}
