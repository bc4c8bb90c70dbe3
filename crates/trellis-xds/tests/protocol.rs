//! The server's wire behaviour, seen from hand-driven ADS streams over loopback TCP: what is
//! sent on subscribe, on change, on removal, on reconnect; how ACK, NACK and stale nonces are
//! handled; how bad requests end a stream.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use trellis_api::Resource;
use trellis_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use trellis_xds::pb::google::rpc::Status as RpcStatus;
use trellis_xds::resource::{ROUTE, SERVICE, WORKLOAD};
use trellis_xds::server::{Mode, SharedViews};
use trellis_xds::{decode, resource_name};

const QUIET: Duration = Duration::from_millis(300);

fn sotw(type_url: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

fn sotw_ack(r: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        ..sotw(&r.type_url)
    }
}

fn delta(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

fn delta_ack(r: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        response_nonce: r.nonce.clone(),
        ..delta(&r.type_url)
    }
}

fn nack(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 3,
        message: message.into(),
        details: Vec::new(),
    })
}

fn sotw_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| resource_name(&decode(a).expect("valid resource")))
        .collect()
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

fn route_timeout(any: &prost_types::Any) -> String {
    match decode(any).expect("valid route") {
        Resource::Route(r) => r.spec.rules[0]
            .timeout
            .map(|t| t.to_string())
            .unwrap_or_default(),
        other => panic!("expected a route, got {}", other.kind()),
    }
}

#[tokio::test]
async fn sotw_sync_ack_nack_stale_nonce_and_resume() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
    let server = TestServer::start(views.clone());
    let mut s = RawSotw::open(server.uri()).await.expect("open");
    s.send(DiscoveryRequest {
        node: Some(node("p-1").to_node()),
        ..sotw(SERVICE)
    })
    .await;
    s.send(sotw(ROUTE)).await;
    let services = s.recv().await;
    assert_eq!(services.type_url, SERVICE);
    assert_eq!(
        sotw_names(&services),
        ["default/ratings", "default/reviews"]
    );
    let routes = s.recv().await;
    assert_eq!(routes.type_url, ROUTE);
    assert_eq!(sotw_names(&routes), ["default/reviews"]);
    assert_ne!(services.nonce, routes.nonce);
    assert!(!routes.version_info.is_empty());

    wait_until("the node is registered", || server.registry.len() == 1).await;
    let st = server.registry.nodes().remove(0);
    assert_eq!((st.node.id.as_str(), st.mode), ("p-1", Mode::Sotw));
    assert_eq!(
        st.types[ROUTE].sent_version.as_ref(),
        Some(&routes.version_info)
    );
    assert!(!st.in_sync(), "nothing acknowledged yet");

    s.send(sotw_ack(&services)).await;
    s.send(sotw_ack(&routes)).await;
    wait_until("both types ACKed", || server.registry.nodes()[0].in_sync()).await;

    // A route change sends the route type, and nothing else.
    views.set(view(&mesh("3s", 1)));
    let routes2 = s.recv().await;
    assert_eq!(routes2.type_url, ROUTE);
    assert_ne!(routes2.version_info, routes.version_info);
    assert_eq!(route_timeout(&routes2.resources[0]), "3s");
    s.expect_silence(QUIET).await;

    // NACK: the text is kept, the acknowledged version stays, the bad version is not re-sent.
    s.send(DiscoveryRequest {
        version_info: routes.version_info.clone(),
        response_nonce: routes2.nonce.clone(),
        error_detail: nack("route reviews: bad timeout"),
        ..sotw(ROUTE)
    })
    .await;
    wait_until("the NACK is recorded", || {
        server.registry.nodes()[0].types[ROUTE].last_nack.is_some()
    })
    .await;
    let t = server.registry.nodes()[0].types[ROUTE].clone();
    let rejected = t.last_nack.expect("nack");
    assert_eq!(rejected.error, "route reviews: bad timeout");
    assert_eq!(rejected.version, routes2.version_info);
    assert_eq!(t.acked_version.as_ref(), Some(&routes.version_info));
    s.expect_silence(QUIET).await;

    // A reply carrying a superseded nonce is ignored.
    s.send(DiscoveryRequest {
        version_info: routes2.version_info.clone(),
        response_nonce: routes.nonce.clone(),
        ..sotw(ROUTE)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = server.registry.nodes()[0].types[ROUTE].clone();
    assert_eq!(t.acked_version.as_ref(), Some(&routes.version_info));

    // The next change goes out and is acknowledged.
    views.set(view(&mesh("4s", 1)));
    let routes3 = s.recv().await;
    assert_eq!(route_timeout(&routes3.resources[0]), "4s");
    s.send(sotw_ack(&routes3)).await;
    wait_until("in sync again", || server.registry.nodes()[0].in_sync()).await;

    // Reconnecting with the current service version and an old route version: only the route.
    drop(s);
    wait_until("the old stream is gone", || server.registry.is_empty()).await;
    let mut s = RawSotw::open(server.uri()).await.expect("reopen");
    s.send(DiscoveryRequest {
        node: Some(node("p-1").to_node()),
        version_info: services.version_info.clone(),
        ..sotw(SERVICE)
    })
    .await;
    s.send(DiscoveryRequest {
        version_info: routes2.version_info.clone(),
        ..sotw(ROUTE)
    })
    .await;
    let r = s.recv().await;
    assert_eq!(
        (r.type_url.as_str(), &r.version_info),
        (ROUTE, &routes3.version_info)
    );
    s.expect_silence(QUIET).await;
    let st = server.registry.nodes().remove(0);
    assert_eq!(
        st.types[SERVICE].acked_version.as_ref(),
        Some(&services.version_info)
    );
}

#[tokio::test]
async fn delta_pushes_only_changes_and_removals() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 2))));
    let server = TestServer::start(views.clone());
    let mut d = RawDelta::open(server.uri()).await.expect("open");
    d.send(DeltaDiscoveryRequest {
        node: Some(node("p-1").to_node()),
        ..delta(ROUTE)
    })
    .await;
    d.send(delta(SERVICE)).await;
    d.send(delta(WORKLOAD)).await;
    let mut first = BTreeMap::new();
    for _ in 0..3 {
        let r = d.recv().await;
        assert!(r.removed_resources.is_empty());
        d.send(delta_ack(&r)).await;
        first.insert(r.type_url.clone(), delta_names(&r));
    }
    assert_eq!(first[SERVICE], ["default/ratings", "default/reviews"]);
    assert_eq!(first[WORKLOAD], ["default/reviews-0", "default/reviews-1"]);
    assert_eq!(first[ROUTE], ["default/reviews"]);
    wait_until("all ACKed", || {
        server.registry.nodes().first().is_some_and(|n| n.in_sync())
    })
    .await;

    // One workload added and the route changed: exactly those two resources travel.
    views.set(view(&mesh("3s", 3)));
    let workloads = d.recv().await;
    assert_eq!(workloads.type_url, WORKLOAD, "workloads go before routes");
    assert_eq!(delta_names(&workloads), ["default/reviews-2"]);
    assert!(workloads.removed_resources.is_empty());
    let routes = d.recv().await;
    assert_eq!(routes.type_url, ROUTE);
    assert_eq!(delta_names(&routes), ["default/reviews"]);
    let body = routes.resources[0].resource.as_ref().expect("body");
    assert_eq!(route_timeout(body), "3s");
    d.expect_silence(QUIET).await;
    d.send(delta_ack(&workloads)).await;
    d.send(delta_ack(&routes)).await;

    // Two workloads removed: a removal, no resources.
    views.set(view(&mesh("3s", 1)));
    let removal = d.recv().await;
    assert_eq!(removal.type_url, WORKLOAD);
    assert!(removal.resources.is_empty());
    assert_eq!(
        removal.removed_resources,
        ["default/reviews-1", "default/reviews-2"]
    );
    let expected = views
        .current()
        .get(WORKLOAD)
        .expect("type")
        .version()
        .to_string();
    assert_eq!(removal.system_version_info, expected);

    // NACK it: recorded with its text, not re-sent.
    d.send(DeltaDiscoveryRequest {
        error_detail: nack("cannot drop the last workloads"),
        ..delta_ack(&removal)
    })
    .await;
    wait_until("the NACK is recorded", || {
        server.registry.nodes()[0].types[WORKLOAD]
            .last_nack
            .is_some()
    })
    .await;
    let t = server.registry.nodes()[0].types[WORKLOAD].clone();
    assert_eq!(
        t.last_nack.expect("nack").error,
        "cannot drop the last workloads"
    );
    assert_ne!(t.acked_version, t.sent_version);
    d.expect_silence(QUIET).await;
}

#[tokio::test]
async fn delta_reconnect_sends_only_what_differs() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 2))));
    let server = TestServer::start(views.clone());
    let current = views.current();
    let versions = |type_url: &str| -> BTreeMap<String, String> {
        current
            .get(type_url)
            .expect("type")
            .resources()
            .iter()
            .map(|(n, r)| (n.clone(), r.version.clone()))
            .collect()
    };
    let mut held_workloads = versions(WORKLOAD);
    held_workloads.insert("default/reviews-1".into(), "stale".into());
    held_workloads.insert("default/reviews-9".into(), "gone".into());

    let mut d = RawDelta::open(server.uri()).await.expect("open");
    d.send(DeltaDiscoveryRequest {
        node: Some(node("p-1").to_node()),
        initial_resource_versions: versions(SERVICE),
        ..delta(SERVICE)
    })
    .await;
    d.send(DeltaDiscoveryRequest {
        initial_resource_versions: held_workloads,
        ..delta(WORKLOAD)
    })
    .await;
    // Services: all current, so an empty answer that says "in sync" with the set's version.
    let services = d.recv().await;
    assert_eq!(services.type_url, SERVICE);
    assert!(services.resources.is_empty() && services.removed_resources.is_empty());
    let expected = current.get(SERVICE).expect("type").version().to_string();
    assert_eq!(services.system_version_info, expected);
    // Workloads: the stale one again, the vanished one removed.
    let workloads = d.recv().await;
    assert_eq!(delta_names(&workloads), ["default/reviews-1"]);
    assert_eq!(workloads.removed_resources, ["default/reviews-9"]);
    d.expect_silence(QUIET).await;
}

fn service(name: &str, port: u16) -> Resource {
    let yaml = format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: {port}}}]}}\n"
    );
    trellis_api::parse_documents("svc.yaml", &yaml)
        .expect("valid")
        .resources
        .remove(0)
}

#[tokio::test]
async fn delta_named_subscriptions() {
    let both = [service("reviews", 80), service("ratings", 80)];
    let views = Arc::new(SharedViews::new(view(&both)));
    let server = TestServer::start(views.clone());
    let mut d = RawDelta::open(server.uri()).await.expect("open");
    d.send(DeltaDiscoveryRequest {
        node: Some(node("p-1").to_node()),
        resource_names_subscribe: vec!["default/reviews".into()],
        ..delta(SERVICE)
    })
    .await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["default/reviews"]);
    d.send(DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["default/ratings".into()],
        ..delta_ack(&r)
    })
    .await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["default/ratings"]);
    d.send(DeltaDiscoveryRequest {
        resource_names_unsubscribe: vec!["default/reviews".into()],
        ..delta_ack(&r)
    })
    .await;
    d.expect_silence(QUIET).await;
    // A change to the unsubscribed service is not sent; one to the subscribed one is.
    views.set(view(&[service("reviews", 81), service("ratings", 80)]));
    d.expect_silence(QUIET).await;
    views.set(view(&[service("reviews", 81), service("ratings", 81)]));
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["default/ratings"]);
}

#[tokio::test]
async fn bad_requests_end_only_their_stream_with_a_clear_status() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
    let server = TestServer::start(views);
    let mut good = RawDelta::open(server.uri()).await.expect("open");
    good.send(DeltaDiscoveryRequest {
        node: Some(node("good").to_node()),
        ..delta(ROUTE)
    })
    .await;
    let _ = good.recv().await;

    // No node on the first request.
    let mut s = RawSotw::open(server.uri()).await.expect("open");
    s.send(sotw(ROUTE)).await;
    let status = s.next().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node.id"), "{status}");

    // An empty type URL later on.
    let mut d = RawDelta::open(server.uri()).await.expect("open");
    d.send(DeltaDiscoveryRequest {
        node: Some(node("bad").to_node()),
        ..delta(ROUTE)
    })
    .await;
    let _ = d.recv().await;
    d.send(delta("")).await;
    let status = d.next().await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("type_url"), "{status}");

    // Too many types on one stream.
    let mut d = RawDelta::open(server.uri()).await.expect("open");
    d.send(DeltaDiscoveryRequest {
        node: Some(node("greedy").to_node()),
        ..delta(ROUTE)
    })
    .await;
    let _ = d.recv().await;
    let mut result = None;
    for i in 0..100 {
        // Each new type is answered at once (empty); the 65th ends the stream.
        d.send(delta(&format!("type.googleapis.com/x.T{i}"))).await;
        if let Err(status) = d.next().await {
            result = Some(status);
            break;
        }
    }
    let result = result.expect("the stream ended");
    assert_eq!(result.code(), Code::ResourceExhausted, "{result}");

    // The good stream is untouched and still served.
    assert_eq!(server.registry.node("good").len(), 1);
}

#[tokio::test]
async fn delta_splits_a_type_too_big_for_one_response() {
    use prost::Message;
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 20_000))));
    let server = TestServer::start(views);
    let mut d = RawDelta::open(server.uri()).await.expect("open");
    d.send(DeltaDiscoveryRequest {
        node: Some(node("p-big").to_node()),
        ..delta(WORKLOAD)
    })
    .await;
    let mut names = std::collections::BTreeSet::new();
    let mut responses = 0;
    while names.len() < 20_000 {
        let r = d.recv().await;
        assert!(
            r.encoded_len() < 2 * 1024 * 1024,
            "a response of {} bytes",
            r.encoded_len()
        );
        responses += 1;
        for n in delta_names(&r) {
            assert!(names.insert(n.clone()), "{n} sent twice");
        }
        d.send(delta_ack(&r)).await;
    }
    assert!(
        responses >= 2,
        "20 000 workloads in {responses} response(s)"
    );
    d.expect_silence(QUIET).await;
}
