//! On-demand discovery on the wire: a node that says it discovers on demand starts with nothing
//! but its own config, the view follows the Services it names, a name that does not exist is
//! reported as removed once (so the first call fails at once), and a named Service arrives after
//! what it depends on.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use trellis_api::Resource;
use trellis_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use trellis_xds::resource::{SERVICE, WORKLOAD};
use trellis_xds::server::{NodeAuth, Scope, ServerConfig, View, ViewSource};
use trellis_xds::NodeInfo;

const QUIET: Duration = Duration::from_millis(300);

/// Serves the services a scope names and their workloads (the mesh of `common::mesh`), and
/// records every scope it was asked for.
type Subscribed = (Option<Scope>, watch::Sender<Arc<View>>);

struct ScopedSource {
    mesh: Mutex<Vec<Resource>>,
    asked: Mutex<Vec<Option<Scope>>>,
    /// Each stream's scope and the sender of its view.
    senders: Mutex<Vec<Subscribed>>,
}

impl ScopedSource {
    fn new(mesh: Vec<Resource>) -> Arc<Self> {
        Arc::new(ScopedSource {
            mesh: Mutex::new(mesh),
            asked: Mutex::new(Vec::new()),
            senders: Mutex::new(Vec::new()),
        })
    }

    /// Replaces the mesh; every open stream gets its view of the new one.
    fn set_mesh(&self, mesh: Vec<Resource>) {
        *self.mesh.lock().unwrap() = mesh;
        for (scope, tx) in self.senders.lock().unwrap().iter() {
            tx.send_replace(Arc::new(self.view_of(scope.as_ref())));
        }
    }
}

impl ScopedSource {
    fn view_of(&self, scope: Option<&Scope>) -> View {
        let wanted =
            |service: &str| scope.is_none_or(|s| s.contains(&format!("default/{service}")));
        let picked: Vec<Resource> = self
            .mesh
            .lock()
            .unwrap()
            .iter()
            .filter(|r| match r {
                Resource::Service(s) => wanted(&s.metadata.name),
                Resource::Workload(w) => wanted(w.spec.service.as_deref().unwrap_or_default()),
                Resource::MeshConfig(_) => true,
                _ => false,
            })
            .cloned()
            .collect();
        View::from_resources(&picked)
    }

    fn answer(&self, scope: Option<&Scope>) -> watch::Receiver<Arc<View>> {
        self.asked.lock().unwrap().push(scope.cloned());
        let (tx, rx) = watch::channel(Arc::new(self.view_of(scope)));
        self.senders.lock().unwrap().push((scope.cloned(), tx));
        rx
    }
}

/// The server owns its source; the test keeps a handle to read what was asked.
struct Shared(Arc<ScopedSource>);

impl ViewSource for Shared {
    fn subscribe(
        &self,
        _: &NodeInfo,
        _: &NodeAuth,
    ) -> Result<watch::Receiver<Arc<View>>, tonic::Status> {
        Ok(self.0.answer(None))
    }

    fn subscribe_scoped(
        &self,
        _: &NodeInfo,
        _: &NodeAuth,
        scope: &Scope,
    ) -> Result<watch::Receiver<Arc<View>>, tonic::Status> {
        Ok(self.0.answer(Some(scope)))
    }
}

fn delta(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

fn ack(r: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: r.nonce.clone(),
        ..delta(&r.type_url)
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

fn on_demand_node() -> NodeInfo {
    let mut n = node("p-1");
    n.set_on_demand();
    n
}

fn scope(names: &[&str]) -> Option<Scope> {
    Some(names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>())
}

#[tokio::test]
async fn the_view_follows_the_named_services_and_absent_names_are_said_once() {
    let source = ScopedSource::new(mesh("2s", 2));
    let server = TestServer::start_with(
        Shared(source.clone()),
        ServerConfig::default(),
        "127.0.0.1:0",
    );
    let mut d = RawDelta::open(server.uri()).await.expect("open");

    // Workloads first (wildcard), then Services named one by one, as an on-demand proxy does.
    d.send(DeltaDiscoveryRequest {
        node: Some(on_demand_node().to_node()),
        ..delta(WORKLOAD)
    })
    .await;
    let w = d.recv().await;
    assert!(names(&w).is_empty(), "nothing named yet: {:?}", names(&w));
    assert_eq!(source.asked.lock().unwrap().clone(), vec![scope(&[])]);
    d.send(ack(&w)).await;
    // The first Service request names the node's own service (an empty one would be a
    // wildcard); it is not in this mesh.
    d.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["default/productpage".into()],
        ..delta(SERVICE)
    })
    .await;
    let s = d.recv().await;
    assert!(names(&s).is_empty(), "{:?}", names(&s));
    assert_eq!(s.removed_resources, ["default/productpage"]);
    d.send(ack(&s)).await;
    d.expect_silence(QUIET).await;

    // Naming reviews (which exists) and nope (which does not).
    d.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["default/reviews".into(), "default/nope".into()],
        ..delta(SERVICE)
    })
    .await;
    let first = d.recv().await;
    assert_eq!(
        first.type_url, WORKLOAD,
        "what the service needs comes first"
    );
    assert_eq!(names(&first), ["default/reviews-0", "default/reviews-1"]);
    d.send(ack(&first)).await;
    let second = d.recv().await;
    assert_eq!(second.type_url, SERVICE);
    assert_eq!(names(&second), ["default/reviews"]);
    assert_eq!(
        second.removed_resources,
        ["default/nope"],
        "absent, said at once"
    );
    d.send(ack(&second)).await;
    assert_eq!(
        source.asked.lock().unwrap().last().cloned().flatten(),
        scope(&["default/nope", "default/productpage", "default/reviews"])
    );
    // Said once: a later push does not repeat it.
    d.expect_silence(QUIET).await;

    // Naming ratings too (no workloads): only the new service is sent.
    d.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["default/ratings".into()],
        ..delta(SERVICE)
    })
    .await;
    let r = d.recv().await;
    assert_eq!(r.type_url, SERVICE);
    assert_eq!(names(&r), ["default/ratings"]);
    assert!(r.removed_resources.is_empty(), "{:?}", r.removed_resources);
    d.send(ack(&r)).await;

    // Dropping reviews removes it and its workloads.
    d.send(DeltaDiscoveryRequest {
        resource_names_unsubscribe: vec!["default/reviews".into()],
        ..delta(SERVICE)
    })
    .await;
    let w = d.recv().await;
    assert_eq!(w.type_url, WORKLOAD);
    assert_eq!(
        w.removed_resources,
        ["default/reviews-0", "default/reviews-1"]
    );
    d.send(ack(&w)).await;
    d.expect_silence(QUIET).await;
    let all = source.asked.lock().unwrap().clone();
    assert_eq!(
        all.last().cloned().flatten(),
        scope(&["default/nope", "default/productpage", "default/ratings"])
    );
    assert!(
        all.iter().all(Option::is_some),
        "never the whole view: {all:?}"
    );
}

#[tokio::test]
async fn a_node_that_does_not_say_on_demand_gets_its_whole_view() {
    let source = ScopedSource::new(mesh("2s", 1));
    let server = TestServer::start_with(
        Shared(source.clone()),
        ServerConfig::default(),
        "127.0.0.1:0",
    );
    let mut d = RawDelta::open(server.uri()).await.expect("open");
    d.send(DeltaDiscoveryRequest {
        node: Some(node("p-2").to_node()),
        resource_names_subscribe: vec!["default/reviews".into()],
        ..delta(SERVICE)
    })
    .await;
    let s = d.recv().await;
    assert_eq!(names(&s), ["default/reviews"]);
    assert_eq!(source.asked.lock().unwrap().clone(), vec![None]);
}

/// The latest update a real client applied.
type Latest = Arc<Mutex<Option<trellis_xds::Update>>>;

fn has_service(latest: &Latest, name: &str) -> bool {
    latest
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|u| u.resources.services().any(|s| s.metadata.name == name))
}

fn workloads(latest: &Latest) -> usize {
    latest
        .lock()
        .unwrap()
        .as_ref()
        .map_or(0, |u| u.resources.workloads().count())
}

#[tokio::test]
async fn a_real_client_resolves_names_learns_absent_ones_and_sees_deletions() {
    let source = ScopedSource::new(mesh("2s", 2));
    let server = TestServer::start_with(
        Shared(source.clone()),
        ServerConfig::default(),
        "127.0.0.1:0",
    );
    let discovery = trellis_xds::Discovery::new();
    let mut config = trellis_xds::ClientConfig::new(vec![server.uri()], node("p-3"));
    config.discovery = Some(discovery.clone());
    let latest: Latest = Arc::default();
    let l = latest.clone();
    let client = trellis_xds::AdsClient::spawn(config, move |u| {
        *l.lock().unwrap() = Some(u);
        Ok(())
    })
    .expect("client starts");
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready")
        .expect("running");
    assert!(!has_service(&latest, "reviews"), "nothing named yet");
    assert_eq!(workloads(&latest), 0);

    let found = discovery
        .resolve("default/reviews", WAIT, || has_service(&latest, "reviews"))
        .await;
    assert_eq!(found, trellis_xds::Resolution::Found);
    assert_eq!(
        workloads(&latest),
        2,
        "endpoints arrive with (before) the service"
    );

    let absent = discovery
        .resolve("default/nope", WAIT, || has_service(&latest, "nope"))
        .await;
    assert_eq!(absent, trellis_xds::Resolution::Absent);
    assert!(!has_service(&latest, "ratings"), "never named, never sent");

    // An app calling made-up names does not grow the subscription: each is answered absent and
    // dropped again, and the stream keeps working.
    for i in 0..50 {
        let name = format!("default/made-up-{i}");
        let r = discovery.resolve(&name, WAIT, || false).await;
        assert_eq!(r, trellis_xds::Resolution::Absent, "{name}");
    }
    wait_until("made-up names dropped", || {
        discovery.wanted().iter().all(|n| !n.contains("made-up"))
    })
    .await;
    assert!(
        discovery.wanted().contains("default/productpage"),
        "its own stays named"
    );
    let found = discovery
        .resolve("default/ratings", WAIT, || has_service(&latest, "ratings"))
        .await;
    assert_eq!(found, trellis_xds::Resolution::Found);

    // Deleting the subscribed service (and its workloads) takes it away from the proxy.
    let without: Vec<Resource> = mesh("2s", 0)
        .into_iter()
        .filter(|r| !matches!(r, Resource::Service(s) if s.metadata.name == "reviews"))
        .collect();
    source.set_mesh(without);
    wait_until("reviews removed", || {
        !has_service(&latest, "reviews") && workloads(&latest) == 0
    })
    .await;
}
