//! The VIP planner's rules, and reconcile passes against a real embedded store, concurrent ones
//! included.
use super::*;
use crate::test_support::{open_store, resource, TempDir};

fn key(name: &str) -> ServiceKey {
    ("default".into(), name.into())
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn range(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn services(names: &[&str]) -> BTreeSet<ServiceKey> {
    names.iter().map(|n| key(n)).collect()
}

fn held(name: &str, version: u64, addr: &str) -> Held {
    Held {
        service: key(name),
        version,
        ip: addr.parse().ok(),
    }
}

#[test]
fn new_services_take_the_lowest_free_addresses_in_key_order() {
    let p = plan(
        range("240.240.0.0/16"),
        &services(&["c", "a", "b"]),
        &[held("b", 5, "240.240.0.1")],
    );
    assert_eq!(
        p.create,
        [(key("a"), ip("240.240.0.2")), (key("c"), ip("240.240.0.3"))]
    );
    assert!(p.moves.is_empty() && p.release.is_empty() && p.unplaced.is_empty());
}

#[test]
fn a_collision_keeps_the_first_holder_and_moves_the_later_one() {
    let p = plan(
        range("240.240.0.0/16"),
        &services(&["a", "b"]),
        &[held("b", 7, "240.240.0.1"), held("a", 9, "240.240.0.1")],
    );
    assert!(p.create.is_empty());
    assert_eq!(p.moves, [(key("a"), 9, ip("240.240.0.2"))]);
}

#[test]
fn addresses_of_deleted_services_are_released_and_reused() {
    let p = plan(
        range("240.240.0.0/16"),
        &services(&["a", "c"]),
        &[held("a", 1, "240.240.0.1"), held("b", 2, "240.240.0.2")],
    );
    assert_eq!(p.release, [(key("b"), 2)]);
    // The released address is free again at once: the next service takes it.
    assert_eq!(p.create, [(key("c"), ip("240.240.0.2"))]);
}

#[test]
fn addresses_outside_a_new_range_move_into_it() {
    let p = plan(
        range("10.99.0.0/24"),
        &services(&["a", "b"]),
        &[held("a", 1, "240.240.0.1"), held("b", 2, "10.99.0.5")],
    );
    assert_eq!(p.moves, [(key("a"), 1, ip("10.99.0.1"))]);
    // The network and broadcast addresses are never handed out, even if stored.
    let p = plan(
        range("10.99.0.0/24"),
        &services(&["a"]),
        &[held("a", 1, "10.99.0.255")],
    );
    assert_eq!(p.moves, [(key("a"), 1, ip("10.99.0.1"))]);
}

#[test]
fn a_full_range_leaves_services_unplaced_and_names_them() {
    let p = plan(range("10.0.0.0/30"), &services(&["a", "b", "c"]), &[]);
    assert_eq!(p.create.len(), 2);
    assert_eq!(p.unplaced, [key("c")]);
}

fn service_yaml(name: &str, port: u16) -> String {
    format!("apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: {port}}}]}}\n")
}

async fn addresses(store: &dyn Store) -> BTreeMap<String, String> {
    store
        .list(Some(KIND), None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| match s.resource {
            Resource::ServiceAddress(a) => (a.metadata.name, a.spec.address),
            other => panic!("listed {}", other.kind()),
        })
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn reconcile_allocates_keeps_and_releases_in_the_store() {
    let dir = TempDir::new("vip");
    let store = open_store(&dir).await;
    let r = range("240.240.0.0/16");
    for n in ["ratings", "reviews", "cache"] {
        store.create(resource(&service_yaml(n, 80))).await.unwrap();
    }
    let o = reconcile(&*store, r).await.unwrap();
    assert_eq!(o.written, 3);
    let want = map(&[
        ("cache", "240.240.0.1"),
        ("ratings", "240.240.0.2"),
        ("reviews", "240.240.0.3"),
    ]);
    assert_eq!(addresses(&*store).await, want);
    // Nothing to do: a second pass writes nothing.
    assert_eq!(reconcile(&*store, r).await.unwrap(), Outcome::default());
    // A user's re-apply of a Service (another port) changes nothing here, and is not refused.
    store
        .replace(resource(&service_yaml("ratings", 9080)), None)
        .await
        .unwrap();
    assert_eq!(reconcile(&*store, r).await.unwrap().written, 0);
    assert_eq!(addresses(&*store).await, want);
    // Deleted: released, and the next service takes the lowest free address.
    store
        .delete("Service", "default", "ratings", None)
        .await
        .unwrap();
    reconcile(&*store, r).await.unwrap();
    assert_eq!(
        addresses(&*store).await,
        map(&[("cache", "240.240.0.1"), ("reviews", "240.240.0.3")])
    );
    store
        .create(resource(&service_yaml("details", 80)))
        .await
        .unwrap();
    reconcile(&*store, r).await.unwrap();
    assert_eq!(addresses(&*store).await["details"], "240.240.0.2");
}

#[tokio::test]
async fn concurrent_passes_converge_on_unique_addresses() {
    let dir = TempDir::new("vip-race");
    let store = open_store(&dir).await;
    let r = range("240.240.0.0/16");
    for i in 0..20 {
        store
            .create(resource(&service_yaml(&format!("s{i:02}"), 80)))
            .await
            .unwrap();
    }
    // A collision as two replicas reading at different moments could leave it.
    store
        .create(address_resource(&key("s05"), ip("240.240.0.1")))
        .await
        .unwrap();
    store
        .create(address_resource(&key("s07"), ip("240.240.0.1")))
        .await
        .unwrap();
    let (a, b) = tokio::join!(reconcile(&*store, r), reconcile(&*store, r));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.written + b.written >= 19, "{a:?} {b:?}");
    for _ in 0..PASSES {
        if reconcile(&*store, r).await.unwrap() == Outcome::default() {
            break;
        }
    }
    let got = addresses(&*store).await;
    assert_eq!(got.len(), 20);
    let unique: HashSet<&String> = got.values().collect();
    assert_eq!(unique.len(), 20, "{got:?}");
    assert_eq!(
        got["s05"], "240.240.0.1",
        "the first holder keeps its address"
    );
    assert!(got.values().all(|a| r.contains(ip(a))));
}

#[tokio::test]
async fn the_follower_allocates_and_releases_on_model_changes() {
    let dir = TempDir::new("vip-follow");
    let store = open_store(&dir).await;
    let model = crate::model::follow(store.clone());
    let task = spawn(store.clone(), model);
    store
        .create(resource(&service_yaml("ratings", 80)))
        .await
        .unwrap();
    let mut got = BTreeMap::new();
    for _ in 0..100 {
        got = addresses(&*store).await;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, map(&[("ratings", "240.240.0.1")]));
    store
        .delete("Service", "default", "ratings", None)
        .await
        .unwrap();
    for _ in 0..100 {
        got = addresses(&*store).await;
        if got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(got.is_empty(), "released: {got:?}");
    task.abort();
}
