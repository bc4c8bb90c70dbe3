//! Feeds the xDS server: one view per (namespace, service), shared by every proxy of that
//! service, recomputed from the model when it changes. A burst of store changes is coalesced by
//! the debouncer, but a lone change goes out at once; a view whose content did not change is not
//! republished, and unchanged resource types keep their versions, so proxies get only what moved.
use crate::model::Model;
use crate::view::{self, NodeInfo as ViewNode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use trellis_xds::server::{NodeAuth, View, ViewSource};
use trellis_xds::{Debouncer, NodeInfo};

/// Coalescing window for bursts of changes.
const DEBOUNCE: Duration = Duration::from_millis(5);

type Key = (String, String);

pub struct MeshViews {
    model: watch::Receiver<Arc<Model>>,
    senders: Mutex<HashMap<Key, watch::Sender<Arc<View>>>>,
}

fn compute(model: &Model, key: &Key) -> View {
    let node = ViewNode {
        namespace: key.0.clone(),
        service: key.1.clone(),
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
    let view = compute(model, &(namespace.to_string(), service.to_string()));
    view.types()
        .map(|(url, r)| (url.clone(), r.version().to_string()))
        .collect()
}

impl MeshViews {
    /// Starts following `model`; views are recomputed until the model's sender goes away.
    pub fn spawn(model: watch::Receiver<Arc<Model>>) -> Arc<Self> {
        let views = Arc::new(Self {
            model: model.clone(),
            senders: Mutex::new(HashMap::new()),
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
                views.recompute();
            }
        });
        views
    }

    fn recompute(&self) {
        let model = self.model.borrow().clone();
        let Ok(mut senders) = self.senders.lock() else {
            return;
        };
        senders.retain(|_, tx| tx.receiver_count() > 0);
        for (key, tx) in senders.iter() {
            let mut next = compute(&model, key);
            tx.send_if_modified(|current| {
                next.share_unchanged(current);
                if next.same_as(current) {
                    false
                } else {
                    *current = Arc::new(std::mem::take(&mut next));
                    true
                }
            });
        }
    }
}

impl ViewSource for MeshViews {
    fn subscribe(
        &self,
        node: &NodeInfo,
        _auth: &NodeAuth,
    ) -> Result<watch::Receiver<Arc<View>>, tonic::Status> {
        let key = (node.namespace.clone(), node.service.clone());
        let mut senders = self
            .senders
            .lock()
            .map_err(|_| tonic::Status::internal("view registry poisoned"))?;
        let tx = senders.entry(key.clone()).or_insert_with(|| {
            let model = self.model.borrow().clone();
            watch::channel(Arc::new(compute(&model, &key))).0
        });
        Ok(tx.subscribe())
    }
}
