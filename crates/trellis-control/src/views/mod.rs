//! Feeds the xDS server: one view per (namespace, service), shared by every proxy of that
//! service, kept up to date with the model by [`ViewEngine`] at a cost that follows each change
//! rather than the mesh. A burst of store changes is coalesced by the debouncer, but a lone
//! change goes out at once; a view whose content did not change is not republished, and
//! unchanged resource types keep their versions, so proxies get only what moved.
mod engine;
mod index;
#[cfg(test)]
mod tests;

pub use engine::ViewEngine;

use crate::model::Model;
use crate::view::{self, NodeInfo as ViewNode};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use trellis_xds::server::{NodeAuth, Scope, View, ViewSource};
use trellis_xds::{Debouncer, NodeInfo};

/// Coalescing window for bursts of changes.
const DEBOUNCE: Duration = Duration::from_millis(5);

pub struct MeshViews {
    model: watch::Receiver<Arc<Model>>,
    engine: Mutex<ViewEngine>,
}

/// The view of proxies of `namespace/service`, computed from scratch with [`view::view`]: the
/// reference the incremental [`ViewEngine`] must equal, and what one-off questions use.
pub fn compute(model: &Model, namespace: &str, service: &str) -> View {
    let node = ViewNode {
        namespace: namespace.to_string(),
        service: service.to_string(),
    };
    let stored = view::view(model, &node);
    View::from_resources(stored.iter().map(|s| &s.resource))
}

/// The version of each type a proxy of `namespace/service` should hold now, by type URL.
pub fn expected_versions(
    model: &Model,
    namespace: &str,
    service: &str,
) -> std::collections::BTreeMap<String, String> {
    let view = compute(model, namespace, service);
    view.types()
        .map(|(url, r)| (url.clone(), r.version().to_string()))
        .collect()
}

impl MeshViews {
    /// Starts following `model`; views are updated until the model's sender goes away.
    pub fn spawn(model: watch::Receiver<Arc<Model>>) -> Arc<Self> {
        let engine = ViewEngine::new(model.borrow().clone());
        let views = Arc::new(Self {
            model: model.clone(),
            engine: Mutex::new(engine),
        });
        let (trigger, mut debouncer) = Debouncer::new(DEBOUNCE);
        let mut changes = model;
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                trigger.trigger();
            }
        });
        let weak = Arc::downgrade(&views);
        tokio::spawn(async move {
            while debouncer.next().await.is_some() {
                let Some(views) = weak.upgrade() else {
                    return;
                };
                views.update();
            }
        });
        views
    }

    /// The version of each type proxies of `namespace/service` (on the whole view) should hold
    /// now, from the engine: the view of connected proxies as it is, any other computed through
    /// the engine's caches — never from scratch, which costs the mesh squared.
    pub fn expected_versions(
        &self,
        namespace: &str,
        service: &str,
    ) -> std::collections::BTreeMap<String, String> {
        let Ok(mut engine) = self.engine.lock() else {
            return Default::default();
        };
        let view = match engine.current(namespace, service) {
            Some(v) => v,
            // Dropped at once: the next update forgets it.
            None => engine.subscribe(namespace, service).borrow().clone(),
        };
        view.types()
            .map(|(url, r)| (url.clone(), r.version().to_string()))
            .collect()
    }

    fn update(&self) {
        let model = self.model.borrow().clone();
        if let Ok(mut engine) = self.engine.lock() {
            engine.update(model);
        }
    }
}

impl ViewSource for MeshViews {
    fn subscribe(
        &self,
        node: &NodeInfo,
        _auth: &NodeAuth,
    ) -> Result<watch::Receiver<Arc<View>>, tonic::Status> {
        let mut engine = self
            .engine
            .lock()
            .map_err(|_| tonic::Status::internal("view registry poisoned"))?;
        Ok(engine.subscribe(&node.namespace, &node.service))
    }

    fn subscribe_scoped(
        &self,
        node: &NodeInfo,
        _auth: &NodeAuth,
        scope: &Scope,
    ) -> Result<watch::Receiver<Arc<View>>, tonic::Status> {
        // xDS names are `namespace/name`; a name of any other shape names no service.
        let scope = scope
            .iter()
            .filter_map(|n| n.split_once('/'))
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
            .collect();
        let mut engine = self
            .engine
            .lock()
            .map_err(|_| tonic::Status::internal("view registry poisoned"))?;
        Ok(engine.subscribe_scoped(&node.namespace, &node.service, scope))
    }
}
