//! The control plane's in-memory copy of the mesh: every resource with its version, kept in step
//! with the store by list-then-watch. Each replica follows the store on its own, so every
//! replica sees every change (made through any replica) in revision order.
//!
//! The items sit in a persistent map: publishing a revision copies only the paths to what it
//! changed, so a change costs in proportion to itself, not to the mesh, and two published
//! models can be compared in time that follows their difference ([`Model::changes_since`]).
use crate::store::{Listing, ResourceKey, Revision, Store, StoreError, Stored, WatchEvent};
use futures_util::{FutureExt, StreamExt};
use imbl::ordmap::DiffItem;
use imbl::OrdMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use trellis_api::{MeshConfigSpec, Resource, ResourceSet, Service};

/// A consistent picture of the store at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub items: OrdMap<ResourceKey, Stored>,
    pub revision: Revision,
}

impl Model {
    pub fn from_listing(listing: Listing) -> Self {
        Self {
            items: listing.items.into_iter().map(|s| (s.key(), s)).collect(),
            revision: listing.revision,
        }
    }

    /// Applies one watch event; returns whether anything changed.
    pub fn apply(&mut self, event: WatchEvent) -> bool {
        self.revision = self.revision.max(event.revision());
        match event {
            WatchEvent::Put(stored) => {
                let key = stored.key();
                let changed = self.items.get(&key) != Some(&stored);
                if changed {
                    self.items.insert(key, stored);
                }
                changed
            }
            WatchEvent::Delete { key, .. } => self.items.remove(&key).is_some(),
        }
    }

    /// What differs from `earlier`, key by key, as (before, after). Subtrees the two models
    /// share are skipped, so following the store costs in proportion to the changes.
    pub fn changes_since<'a>(&'a self, earlier: &'a Model) -> Vec<Change<'a>> {
        earlier
            .items
            .diff(&self.items)
            .map(|d| match d {
                DiffItem::Add(k, new) => Change {
                    key: k,
                    before: None,
                    after: Some(new),
                },
                DiffItem::Update { old, new } => Change {
                    key: new.0,
                    before: Some(old.1),
                    after: Some(new.1),
                },
                DiffItem::Remove(k, old) => Change {
                    key: k,
                    before: Some(old),
                    after: None,
                },
            })
            .collect()
    }

    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.items.values().map(|s| &s.resource)
    }

    /// The Service stored as `namespace/name`, if there is one.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        match self
            .items
            .get(&ResourceKey::new("Service", namespace, name))
        {
            Some(Stored {
                resource: Resource::Service(s),
                ..
            }) => Some(s),
            _ => None,
        }
    }

    /// Every stored Service of `namespace`, in name order; costs what it yields, not the mesh.
    pub fn services_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Service> {
        self.items
            .range(ResourceKey::new("Service", namespace, "")..)
            .take_while(move |(k, _)| k.kind == "Service" && k.namespace == namespace)
            .filter_map(|(_, s)| match &s.resource {
                Resource::Service(s) => Some(s),
                _ => None,
            })
    }

    /// The mesh-wide settings: the MeshConfig's spec, or defaults when there is none.
    pub fn mesh_config(&self) -> MeshConfigSpec {
        self.resources()
            .find_map(|r| match r {
                Resource::MeshConfig(m) => Some(m.spec.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Every resource, as the proxy's snapshot builder takes them.
    pub fn resource_set(&self) -> ResourceSet {
        ResourceSet {
            resources: self.resources().cloned().collect(),
        }
    }
}

/// One resource that differs between two models.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub key: &'a ResourceKey,
    pub before: Option<&'a Stored>,
    pub after: Option<&'a Stored>,
}

/// Follows `store` for as long as a receiver lives: lists, then watches from the listed
/// revision; on a broken watch it watches again from the last revision seen, and on
/// compaction (or any other error) it lists again, backing off while the store is away. The
/// model published is always whole: never half of a change.
pub fn follow(store: Arc<dyn Store>) -> watch::Receiver<Arc<Model>> {
    let (tx, rx) = watch::channel(Arc::new(Model::default()));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if tx.is_closed() {
                return;
            }
            let listing = match store.list(None, None).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the store; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let mut model = Model::from_listing(listing);
            tx.send_replace(Arc::new(model.clone()));
            if let Err(e) = watch_from(&*store, &mut model, &tx).await {
                tracing::warn!(error = %e, revision = model.revision, "store watch ended; resyncing");
                tokio::time::sleep(backoff).await;
            }
        }
    });
    rx
}

/// Applies watch events until the watch fails, publishing once per revision: both stores give
/// every change of one commit (a whole `apply`) the same revision and deliver them together, so
/// the events of a revision are all at hand once its first arrives, and the model published
/// never holds half of an apply.
async fn watch_from(
    store: &dyn Store,
    model: &mut Model,
    tx: &watch::Sender<Arc<Model>>,
) -> Result<(), StoreError> {
    loop {
        let mut events = store.watch(model.revision).await?.peekable();
        while let Some(event) = events.next().await {
            let mut changed = model.apply(event?);
            while let Some(Some(Ok(next))) = Pin::new(&mut events).peek().now_or_never() {
                if next.revision() != model.revision {
                    break;
                }
                if let Some(Ok(next)) = events.next().await {
                    changed |= model.apply(next);
                }
            }
            if tx.is_closed() {
                return Ok(());
            }
            if changed {
                tx.send_replace(Arc::new(model.clone()));
            }
        }
    }
}
