//! Helpers shared by the unit tests: a temporary embedded store (the CA and the API), and
//! resources and models parsed from YAML (the views).
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

/// A model holding the resources of `yaml`, each at its own version.
pub fn model(yaml: &str) -> crate::model::Model {
    let set = trellis_api::parse_documents("test.yaml", yaml).expect("valid test config");
    let items = set
        .resources
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let s = crate::store::Stored {
                resource: r,
                version: i as u64 + 1,
                lease: None,
            };
            (crate::store::ResourceKey::of(&s.resource), s)
        })
        .collect();
    crate::model::Model {
        items,
        revision: 100,
    }
}
