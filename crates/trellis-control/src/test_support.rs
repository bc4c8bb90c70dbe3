//! Helpers shared by the unit tests of the CA and the API: a temporary embedded store.
use crate::store::{EmbeddedOptions, EmbeddedStore, Store};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("trellis-control-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn open_store(dir: &TempDir) -> Arc<dyn Store> {
    Arc::new(
        EmbeddedStore::open(&dir.0, EmbeddedOptions::default())
            .await
            .expect("open the embedded store"),
    )
}

/// Parses one resource from YAML.
pub fn resource(yaml: &str) -> trellis_api::Resource {
    trellis_api::parse_documents("fixture", yaml)
        .map(|s| s.resources[0].clone())
        .expect("fixture parses")
}
