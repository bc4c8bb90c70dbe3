//! Shared by the conformance tests: resource fixtures, temporary directories, bounded waits on
//! watch streams, and the [`Backend`] each store's test file implements.
#![allow(dead_code)]

pub mod etcd;

use async_trait::async_trait;
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trellis_api::Resource;
use trellis_control::{Store, StoreError, WatchEvent, WatchStream};

/// A store under test, and a way to restart what holds its data.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A fresh handle on the store (a new connection, or the file opened again).
    async fn open(&self) -> Arc<dyn Store>;
    /// Restarts the storage with its data kept: etcd is killed (`kill -9`) and started again on
    /// the same data directory; for the embedded store, dropping every handle and opening the
    /// file again is the restart, so this does nothing. Callers drop their handles first.
    async fn restart(&mut self);
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("trellis-control-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn parse(text: &str) -> Resource {
    match trellis_api::parse_documents("fixture", text) {
        Ok(set) if set.resources.len() == 1 => set.resources[0].clone(),
        other => panic!("bad fixture {text}: {other:?}"),
    }
}

pub fn service(namespace: &str, name: &str, port: u16) -> Resource {
    parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: Service\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{ports: [{{port: {port}}}]}}\n"
    ))
}

/// A service carrying `metadata.resourceVersion`, as an API client would send it back.
pub fn service_with_version(namespace: &str, name: &str, version: &str) -> Resource {
    parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: Service\n\
         metadata: {{name: {name}, namespace: {namespace}, resourceVersion: \"{version}\"}}\n\
         spec: {{ports: [{{port: 80}}]}}\n"
    ))
}

pub fn workload(namespace: &str, name: &str, port: u16) -> Resource {
    parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: Workload\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{service: web, address: 10.0.0.1, port: {port}}}\n"
    ))
}

/// The next item of a watch, within `within`.
pub async fn next_item(
    stream: &mut WatchStream,
    within: Duration,
) -> Option<Result<WatchEvent, StoreError>> {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(item) => item,
        Err(_) => panic!("no watch event within {within:?}"),
    }
}

/// The next event of a watch, which must come within 10 s and not be an error.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match next_item(stream, Duration::from_secs(10)).await {
        Some(Ok(event)) => event,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

/// Asserts that nothing arrives on the stream for `quiet`.
pub async fn assert_quiet(stream: &mut WatchStream, quiet: Duration) {
    if let Ok(item) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("expected no watch event, got {item:?}");
    }
}

/// Retries `f` every 200 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
