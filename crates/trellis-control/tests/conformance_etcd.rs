//! The conformance suite on etcd (a real `etcd` per test), and what only etcd has: several
//! replicas on one etcd, several endpoints, and etcd going away and coming back.
mod support;
#[macro_use]
mod suite;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::etcd::{free_port, Etcd};
use support::{eventually, next_event, next_item, service, workload, Backend};
use trellis_control::{EtcdOptions, EtcdStore, Store, StoreError, StoreSpec, WatchEvent};

struct EtcdBackend {
    etcd: Etcd,
}

impl EtcdBackend {
    async fn new() -> Self {
        Self {
            etcd: Etcd::start().await,
        }
    }
}

async fn connect(options: EtcdOptions) -> Arc<dyn Store> {
    match EtcdStore::connect(options).await {
        Ok(store) => Arc::new(store),
        Err(e) => panic!("cannot connect to etcd: {e}"),
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn open(&self) -> Arc<dyn Store> {
        connect(self.etcd.options()).await
    }

    async fn restart(&mut self) {
        self.etcd.restart().await;
    }
}

conformance!(EtcdBackend::new());

/// How long an operation against a dead etcd may take to fail: the 2 s request timeout, plus
/// scheduling slack.
const PROMPT: Duration = Duration::from_secs(4);

fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>, url: &str) {
    match result {
        Err(e @ StoreError::Unavailable { .. }) => {
            assert!(e.to_string().contains(url), "{what}: {e}");
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_going_away_gives_prompt_errors_and_nothing_is_lost() {
    let mut etcd = Etcd::start().await;
    let url = etcd.url();
    let store = connect(etcd.options()).await;
    let web = store
        .create(service("default", "web", 80))
        .await
        .expect("create");
    let lease = store
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    let mut stream = store.watch(web.version).await.expect("watch");

    etcd.kill();
    let started = Instant::now();
    let item = next_item(&mut stream, Duration::from_secs(10)).await;
    assert!(
        matches!(&item, Some(Err(StoreError::Unavailable { .. }))),
        "the watch must end with Unavailable: {item:?}"
    );
    assert!(next_item(&mut stream, Duration::from_secs(1))
        .await
        .is_none());
    for (what, result) in [
        (
            "get",
            store.get("Service", "default", "web").await.map(drop),
        ),
        ("list", store.list(None, None).await.map(drop)),
        (
            "create",
            store.create(service("default", "api", 80)).await.map(drop),
        ),
        (
            "replace",
            store
                .replace(service("default", "web", 81), Some(web.version))
                .await
                .map(drop),
        ),
        (
            "delete",
            store
                .delete("Service", "default", "web", None)
                .await
                .map(drop),
        ),
        ("watch", store.watch(0).await.map(drop)),
        (
            "grant",
            store.grant_lease(Duration::from_secs(5)).await.map(drop),
        ),
        ("keep alive", store.keep_alive(lease.id).await),
    ] {
        let t = Instant::now();
        assert_unavailable(what, result, &url);
        assert!(t.elapsed() < PROMPT, "{what} took {:?}", t.elapsed());
    }
    assert!(started.elapsed() < Duration::from_secs(40));

    etcd.resume().await;
    let got = eventually(Duration::from_secs(20), "store works again", || {
        let store = store.clone();
        async move { store.get("Service", "default", "web").await.ok() }
    })
    .await;
    assert_eq!(
        got,
        Some(web.clone()),
        "the write before the outage is there"
    );
    let listing = store.list(None, None).await.expect("list");
    assert_eq!(
        listing.items,
        vec![web.clone()],
        "failed writes left nothing"
    );
    store
        .keep_alive(lease.id)
        .await
        .expect("the lease survived");
    let api = store
        .create(service("default", "api", 80))
        .await
        .expect("create");
    let mut resumed = store.watch(web.version).await.expect("watch again");
    assert_eq!(next_event(&mut resumed).await, WatchEvent::Put(api));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_one_etcd_see_every_change() {
    let etcd = Etcd::start().await;
    let one = connect(etcd.options()).await;
    let two = connect(etcd.options()).await;
    let start = two.list(None, None).await.expect("list").revision;
    let mut seen_by_two = two.watch(start).await.expect("watch");
    let a = one
        .create(service("default", "a", 80))
        .await
        .expect("create");
    let a2 = one
        .replace(service("default", "a", 81), Some(a.version))
        .await
        .expect("replace");
    let err = two
        .replace(service("default", "a", 82), Some(a.version))
        .await
        .expect_err("two has a stale version");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let lease = one
        .grant_lease(Duration::from_secs(2))
        .await
        .expect("grant");
    let w = one
        .put_with_lease(workload("default", "w", 8080), lease.id)
        .await
        .expect("put");
    two.keep_alive(lease.id)
        .await
        .expect("leases are cluster-wide");
    assert_eq!(next_event(&mut seen_by_two).await, WatchEvent::Put(a));
    assert_eq!(next_event(&mut seen_by_two).await, WatchEvent::Put(a2));
    assert_eq!(
        next_event(&mut seen_by_two).await,
        WatchEvent::Put(w.clone())
    );
    match next_event(&mut seen_by_two).await {
        WatchEvent::Delete { key, .. } => assert_eq!(key, w.key()),
        other => panic!("expected the lapsed workload's Delete, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_and_one_is_dead() {
    let etcd = Etcd::start().await;
    let flag = format!(
        "etcd://127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        etcd.client_port
    );
    let spec = StoreSpec::from_flags(Some(&flag), std::path::Path::new("/unused")).expect("flag");
    let store = trellis_control::open(&spec)
        .await
        .expect("open with one live endpoint");
    store
        .create(service("default", "web", 80))
        .await
        .expect("create");
    assert!(store.describe().contains(&etcd.url()));
    for _ in 0..10 {
        let got = store.get("Service", "default", "web").await.expect("get");
        assert!(got.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_promptly() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut options = EtcdOptions::new(vec![url.clone()]);
    options.request_timeout = Duration::from_secs(2);
    let t = Instant::now();
    let result = EtcdStore::connect(options).await.map(drop);
    assert_unavailable("connect", result, &url);
    assert!(t.elapsed() < PROMPT, "took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_are_errors_naming_the_key() {
    let etcd = Etcd::start().await;
    let store = connect(etcd.options()).await;
    let start = store.list(None, None).await.expect("list").revision;
    let mut stream = store.watch(start).await.expect("watch");
    let mut raw = etcdv3client::EtcdClient::new(vec![etcd.url()], None)
        .await
        .expect("raw client");
    raw.put("/trellis/v1/resources/Service/default/bad", "{not json")
        .await
        .expect("raw put");
    let err = store
        .get("Service", "default", "bad")
        .await
        .expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("Service/default/bad"), "{err}");
    let err = store
        .list(Some("Service"), None)
        .await
        .expect_err("corrupt");
    assert!(err.to_string().contains("Service/default/bad"), "{err}");
    match next_item(&mut stream, Duration::from_secs(10)).await {
        Some(Err(e @ StoreError::Corrupt { .. })) => {
            assert!(e.to_string().contains("Service/default/bad"), "{e}");
        }
        other => panic!("expected Corrupt from the watch, got {other:?}"),
    }
    raw.delete("/trellis/v1/resources/Service/default/bad")
        .await
        .expect("raw delete");
    raw.put("/trellis/v1/resources/nonsense", "{}")
        .await
        .expect("raw put");
    let err = store.list(None, None).await.expect_err("bad key");
    assert!(
        err.to_string().contains("/trellis/v1/resources/nonsense"),
        "{err}"
    );
}

/// A registration on etcd outlives its lease: the presence lapses, the workload stays until a
/// reaper expires it; a sidecar that registers again in time is never expired; deregistering
/// removes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_outlive_their_lease_until_expired() {
    let backend = EtcdBackend::new().await;
    let store = backend.open().await;
    let lease = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("lease");
    let w = store
        .register(workload("default", "web-1", 8080), lease)
        .await
        .expect("register");
    assert_eq!(w.lease, None, "the workload itself is not under the lease");
    assert!(store
        .lapsed_registrations()
        .await
        .expect("lapsed")
        .is_empty());
    // Nobody renews (every replica away): etcd drops the presence, not the workload.
    let lapsed = lapsed_soon(&*store).await;
    assert_eq!(lapsed.len(), 1);
    assert_eq!(lapsed[0].key.name, "web-1");
    assert_eq!(lapsed[0].ttl, lease.ttl);
    assert!(store
        .get("Workload", "default", "web-1")
        .await
        .expect("get")
        .is_some());
    // The sidecar comes back and registers again before the reaper acts: not expired.
    let again = store
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    store
        .register(workload("default", "web-1", 8080), again)
        .await
        .expect("register again");
    assert!(!store
        .expire_registration(&lapsed[0].key, lapsed[0].registration)
        .await
        .expect("expire"));
    assert!(store
        .get("Workload", "default", "web-1")
        .await
        .expect("get")
        .is_some());
    // Deregistering removes the workload at once.
    store.deregister(again.id).await.expect("deregister");
    assert!(store
        .get("Workload", "default", "web-1")
        .await
        .expect("get")
        .is_none());
    assert!(store
        .lapsed_registrations()
        .await
        .expect("lapsed")
        .is_empty());
    // A lapsed registration nobody renews is expired.
    let short = store
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("lease");
    store
        .register(workload("default", "web-2", 8080), short)
        .await
        .expect("register");
    let lapsed = lapsed_soon(&*store).await;
    assert!(store
        .expire_registration(&lapsed[0].key, lapsed[0].registration)
        .await
        .expect("expire"));
    assert!(store
        .get("Workload", "default", "web-2")
        .await
        .expect("get")
        .is_none());
    assert!(store
        .lapsed_registrations()
        .await
        .expect("lapsed")
        .is_empty());
}

/// The lapsed registrations, once there are some (within 20 s).
async fn lapsed_soon(store: &dyn Store) -> Vec<trellis_control::Lapsed> {
    eventually(Duration::from_secs(20), "presence to lapse", || async {
        let l = store.lapsed_registrations().await.expect("lapsed");
        (!l.is_empty()).then_some(l)
    })
    .await
}

/// A replica trims etcd's history: after two intervals, history before the first is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_store_history_is_compacted() {
    let backend = EtcdBackend::new().await;
    let store = backend.open().await;
    let first = store
        .create(service("default", "a", 80))
        .await
        .expect("create");
    store
        .create(service("default", "b", 80))
        .await
        .expect("create");
    let task = trellis_control::compaction::spawn_every(store.clone(), Duration::from_millis(500))
        .expect("etcd is a shared store");
    eventually(
        Duration::from_secs(20),
        "history to be compacted",
        || async {
            matches!(
                store.watch(first.version - 1).await,
                Err(StoreError::Compacted { .. })
            )
            .then_some(())
        },
    )
    .await;
    task.abort();
    // The data itself is untouched.
    assert_eq!(store.list(None, None).await.expect("list").items.len(), 2);
}
