//! The conformance suite on the embedded (redb file) store.
mod support;
#[macro_use]
mod suite;

use async_trait::async_trait;
use std::sync::Arc;
use support::{Backend, TempDir};
use trellis_control::{EmbeddedOptions, EmbeddedStore, Store};

struct Embedded {
    dir: TempDir,
}

impl Embedded {
    async fn new() -> Self {
        Self {
            dir: TempDir::new("embedded"),
        }
    }
}

#[async_trait]
impl Backend for Embedded {
    async fn open(&self) -> Arc<dyn Store> {
        match EmbeddedStore::open(&self.dir.0, EmbeddedOptions::default()).await {
            Ok(store) => Arc::new(store),
            Err(e) => panic!("cannot open the embedded store: {e}"),
        }
    }

    async fn restart(&mut self) {}
}

conformance!(Embedded::new());
