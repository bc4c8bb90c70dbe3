//! The proxy's client against real servers over loopback TCP: first sync in both modes, NACK
//! with the previous config kept, resync after a server restart, failover between replicas,
//! and the join-token hook.
mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;
use trellis_xds::client::{AdsClient, Backoff, ClientConfig, Update};
use trellis_xds::resource::{ROUTE, SERVICE, WORKLOAD};
use trellis_xds::server::{NodeAuth, ServerConfig, SharedViews, TypeResources, VersionedResource};
use trellis_xds::Mode;

type Updates = Arc<Mutex<Vec<Update>>>;

fn config(servers: &[&TestServer], mode: Mode) -> ClientConfig {
    let mut c = ClientConfig::new(servers.iter().map(|s| s.uri()).collect(), node("p-1"));
    c.mode = mode;
    c.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c.connect_timeout = Duration::from_secs(2);
    c
}

/// A client whose `apply` records every update and refuses routes with a 13s timeout.
fn spawn(config: ClientConfig) -> (AdsClient, Updates) {
    let updates: Updates = Arc::default();
    let seen = updates.clone();
    let client = AdsClient::spawn(config, move |u: Update| {
        if u.resources
            .routes()
            .any(|r| r.spec.rules[0].timeout.map(|t| t.to_string()).as_deref() == Some("13s"))
        {
            return Err("route default/reviews: 13s is an unlucky timeout".into());
        }
        seen.lock().expect("lock").push(u);
        Ok(())
    })
    .expect("client starts");
    (client, updates)
}

fn last(updates: &Updates) -> Update {
    updates
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("an update")
}

fn count(updates: &Updates) -> usize {
    updates.lock().expect("lock").len()
}

fn timeout_of(u: &Update) -> String {
    let route = u.resources.routes().next().expect("a route");
    route.spec.rules[0]
        .timeout
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// How many of `b`'s resources are the very ones `a` held (shared, not decoded again).
fn shared(a: &Update, b: &Update) -> usize {
    b.resources
        .iter()
        .filter(|r| a.resources.iter().any(|x| Arc::ptr_eq(x, r)))
        .count()
}

async fn ready(client: &AdsClient) {
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready in time")
        .expect("client running");
}

#[tokio::test]
async fn first_sync_is_one_complete_update_in_both_modes() {
    let resources = mesh("2s", 2);
    let views = Arc::new(SharedViews::new(view(&resources)));
    let server = TestServer::start(views.clone());
    for mode in [Mode::Delta, Mode::Sotw] {
        let (client, updates) = spawn(config(&[&server], mode));
        ready(&client).await;
        assert_eq!(count(&updates), 1, "{mode:?}: one update with every type");
        let u = last(&updates);
        assert_eq!(u.resources.len(), resources.len());
        assert_eq!(u.changes.len(), trellis_xds::TYPE_URLS.len());
        let status = client.status();
        assert_eq!(status.mode, mode);
        assert_eq!(
            status.endpoint.as_deref(),
            Some(server.uri().to_string().as_str())
        );
        let expected = views
            .current()
            .get(ROUTE)
            .expect("routes")
            .version()
            .to_string();
        assert_eq!(status.versions[ROUTE], expected);
        wait_until("the server sees every type ACKed", || {
            server
                .registry
                .node("p-1")
                .first()
                .is_some_and(|n| n.in_sync() && n.types.len() == trellis_xds::TYPE_URLS.len())
        })
        .await;
        // A change is one update naming only what changed.
        let first = last(&updates);
        views.set(view(&mesh("3s", 2)));
        wait_until("the change is applied", || count(&updates) == 2).await;
        let u = last(&updates);
        assert_eq!(timeout_of(&u), "3s");
        assert_eq!(u.changes.len(), 1);
        assert_eq!(u.changes[0].type_url, ROUTE);
        assert_eq!(u.changes[0].updated, ["default/reviews"]);
        // Every other resource is the one already held (in SotW too, where the whole type is
        // resent): shared, not decoded again.
        assert_eq!(shared(&first, &u), u.resources.len() - 1, "{mode:?}");
        // A workload more: in SotW every workload is resent; only the new one is decoded.
        views.set(view(&mesh("3s", 3)));
        wait_until("the workload is applied", || count(&updates) == 3).await;
        let (before, u) = (u, last(&updates));
        assert_eq!(u.resources.len(), before.resources.len() + 1);
        assert_eq!(shared(&before, &u), before.resources.len(), "{mode:?}");
        client.shutdown();
        wait_until("the stream is gone", || server.registry.is_empty()).await;
        views.set(view(&resources));
    }
}

#[tokio::test]
async fn a_rejected_update_is_nacked_and_the_previous_config_stays() {
    for mode in [Mode::Delta, Mode::Sotw] {
        let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
        let server = TestServer::start(views.clone());
        let (client, updates) = spawn(config(&[&server], mode));
        ready(&client).await;

        views.set(view(&mesh("13s", 1)));
        wait_until("the NACK reaches the server", || {
            server
                .registry
                .node("p-1")
                .first()
                .is_some_and(|n| n.types[ROUTE].last_nack.is_some())
        })
        .await;
        let t = server.registry.node("p-1")[0].types[ROUTE].clone();
        let nack = t.last_nack.expect("nack");
        assert!(
            nack.error.contains("13s is an unlucky timeout"),
            "{mode:?}: {}",
            nack.error
        );
        assert_ne!(t.acked_version, t.sent_version);
        let status = client.status();
        assert!(status.last_nack.is_some_and(|n| n.type_url == ROUTE));
        assert_eq!(count(&updates), 1, "the rejected set was not recorded");

        // Another type changes: the update carries the last good route, not the rejected one.
        views.set(view(&mesh("13s", 2)));
        wait_until("the workload change is applied", || count(&updates) == 2).await;
        let u = last(&updates);
        assert_eq!(timeout_of(&u), "2s", "{mode:?}");
        assert_eq!(u.resources.workloads().count(), 2);

        // Fixed: the route is accepted and acknowledged.
        views.set(view(&mesh("4s", 2)));
        wait_until("the fix is applied", || count(&updates) == 3).await;
        assert_eq!(timeout_of(&last(&updates)), "4s");
        wait_until("in sync", || server.registry.node("p-1")[0].in_sync()).await;
    }
}

#[tokio::test]
async fn an_undecodable_resource_is_nacked_naming_it() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
    let server = TestServer::start(views.clone());
    let (client, updates) = spawn(config(&[&server], Mode::Delta));
    ready(&client).await;

    let mut broken = view(&mesh("2s", 1));
    let garbage = prost_types::Any {
        type_url: ROUTE.into(),
        value: b"\xff\xff not protobuf".to_vec(),
    };
    let routes: TypeResources = [(
        "default/broken".to_string(),
        VersionedResource::new(garbage),
    )]
    .into_iter()
    .collect();
    broken.set_type(ROUTE, Arc::new(routes));
    views.set(broken);
    wait_until("the NACK reaches the server", || {
        server.registry.node("p-1")[0].types[ROUTE]
            .last_nack
            .is_some()
    })
    .await;
    let nack = server.registry.node("p-1")[0].types[ROUTE]
        .last_nack
        .clone()
        .expect("nack");
    assert!(
        nack.error.contains(ROUTE) && nack.error.contains("default/broken"),
        "{}",
        nack.error
    );
    assert_eq!(count(&updates), 1);
    assert!(client.status().ready);
}

#[tokio::test]
async fn a_restarted_server_gets_a_resync_of_only_what_changed() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 2))));
    let mut server = TestServer::start(views.clone());
    let addr = server.addr.to_string();
    let (client, updates) = spawn(config(&[&server], Mode::Delta));
    ready(&client).await;

    server.kill();
    wait_until("the client notices", || client.status().endpoint.is_none()).await;
    assert!(client.status().ready, "still serving the last good config");
    assert!(
        client.status().last_error.is_some(),
        "the lost connection is reported"
    );
    // While the control plane is away, the route changes and a workload goes.
    let next = Arc::new(SharedViews::new(view(&mesh("5s", 1))));
    let server = TestServer::start_with(next.clone(), ServerConfig::default(), &addr);
    // Each type that differs is one update: the workload removal, then the route.
    wait_until("the resync is applied", || count(&updates) == 3).await;
    let resync: Vec<Update> = updates.lock().expect("lock")[1..].to_vec();
    let changes: Vec<_> = resync.iter().flat_map(|u| u.changes.clone()).collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].type_url, WORKLOAD);
    assert_eq!(changes[0].removed, ["default/reviews-1"]);
    assert!(changes[0].updated.is_empty());
    assert_eq!(changes[1].type_url, ROUTE);
    assert_eq!(changes[1].updated, ["default/reviews"]);
    let u = last(&updates);
    assert_eq!(timeout_of(&u), "5s");
    assert_eq!(client.status().connects, 2);
    assert_eq!(
        client.status().last_error,
        None,
        "the error of the lost connection is cleared once connected again"
    );
    // The new server sent nothing for the types the client already held.
    wait_until("in sync with the new server", || {
        server
            .registry
            .node("p-1")
            .first()
            .is_some_and(|n| n.in_sync())
    })
    .await;
    let n = server.registry.node("p-1").remove(0);
    assert_eq!(n.types[SERVICE].sent_resources, 0);
}

#[tokio::test]
async fn the_client_fails_over_to_another_replica() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
    let mut a = TestServer::start(views.clone());
    let mut b = TestServer::start(views.clone());
    let (client, updates) = spawn(config(&[&a, &b], Mode::Delta));
    ready(&client).await;
    let first = client.status().endpoint.expect("connected");
    let (dead, alive) = if first == a.uri().to_string() {
        (&mut a, b.uri().to_string())
    } else {
        (&mut b, a.uri().to_string())
    };
    dead.kill();
    wait_until("the client moves to the other replica", || {
        client.status().endpoint.as_deref() == Some(alive.as_str())
    })
    .await;
    views.set(view(&mesh("6s", 1)));
    wait_until("the change arrives through the other replica", || {
        count(&updates) == 2
    })
    .await;
    let u = last(&updates);
    assert_eq!(u.endpoint, alive);
    assert_eq!(timeout_of(&u), "6s");
}

#[tokio::test]
async fn the_auth_hook_admits_the_right_token_only() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
    let config_with_hook = ServerConfig {
        auth: Some(Arc::new(|md: &tonic::metadata::MetadataMap| {
            match md.get("authorization").and_then(|v| v.to_str().ok()) {
                Some("Bearer s3cret") => Ok(NodeAuth {
                    principal: Some("join-token:p-1".into()),
                }),
                _ => Err(Status::unauthenticated("missing or wrong join token")),
            }
        })),
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(views, config_with_hook, "127.0.0.1:0");

    let mut wrong = config(&[&server], Mode::Delta);
    wrong.token = Some("guess".into());
    let (refused, _) = spawn(wrong);
    wait_until("the refusal is reported", || {
        refused
            .status()
            .last_error
            .is_some_and(|e| e.contains("wrong join token"))
    })
    .await;
    assert!(!refused.status().ready);

    let mut right = config(&[&server], Mode::Delta);
    right.token = Some("s3cret".into());
    let (admitted, _) = spawn(right);
    ready(&admitted).await;
    let n = server.registry.node("p-1").remove(0);
    assert_eq!(n.principal.as_deref(), Some("join-token:p-1"));
    // The refused client is not registered at all.
    assert_eq!(server.registry.len(), 1);
}

#[tokio::test]
async fn a_graceful_shutdown_ends_streams_with_unavailable() {
    let views = Arc::new(SharedViews::new(view(&mesh("2s", 1))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = trellis_xds::AdsServer::new(views.clone(), ServerConfig::default());
    let registry = server.registry();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let uri: tonic::transport::Uri = format!("http://{addr}").parse().expect("uri");
    let mut c = ClientConfig::new(vec![uri.clone()], node("p-1"));
    c.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    let (client, _) = spawn(c);
    ready(&client).await;
    let mut raw = RawDelta::open(uri).await.expect("open");
    raw.send(
        trellis_xds::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
            node: Some(node("raw").to_node()),
            type_url: ROUTE.into(),
            ..Default::default()
        },
    )
    .await;
    let _ = raw.recv().await;
    wait_until("both registered", || registry.len() == 2).await;

    let _ = stop.send(());
    let status = raw.next().await.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("shutting down"), "{status}");
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("serve returns once streams are closed")
        .expect("task")
        .expect("clean shutdown");
    wait_until("the client is disconnected", || {
        client.status().endpoint.is_none()
    })
    .await;
    assert!(client.status().ready, "the last good config stays");
    assert!(registry.is_empty());
}
