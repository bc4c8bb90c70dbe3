//! The incremental views against the reference: random change sequences, and after every
//! update each subscribed view must equal [`super::compute`] on the same model. Services come
//! with and without egress scopes (`spec.egress`), which change as Services are put again.
use super::*;
use crate::store::{ResourceKey, Stored, WatchEvent};
use index::SvcKey;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use trellis_api::Resource;

const NAMESPACES: [&str; 2] = ["default", "other"];
/// Services that may exist; `ghost` never does, but routes point at it and a proxy claims it.
const SERVICES: [&str; 5] = ["a", "b", "c", "d", "e"];
const TARGETS: [&str; 6] = ["a", "b", "c", "d", "e", "ghost"];
const DOMAINS: [&str; 2] = ["cluster.local", "example.org"];
/// Egress entries beyond the bare names of `TARGETS`: other namespaces, whole namespaces, and
/// names that never exist.
const EGRESS: [&str; 6] = [
    "other/a",
    "default/c",
    "other/ghost",
    "default/*",
    "other/*",
    "nowhere/*",
];

/// `egress: [...], ` (sometimes empty), or nothing, for a generated Service.
fn random_egress(rng: &mut StdRng) -> String {
    if rng.random_bool(0.5) {
        return String::new();
    }
    let entries: Vec<String> = (0..rng.random_range(0..4))
        .map(|_| match rng.random_bool(0.5) {
            true => pick(rng, &TARGETS).to_string(),
            false => format!("'{}'", pick(rng, &EGRESS)),
        })
        .collect();
    format!("egress: [{}], ", entries.join(", "))
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from.choose(rng).copied().unwrap_or_default()
}

fn random_resource(rng: &mut StdRng) -> Resource {
    let ns = pick(rng, &NAMESPACES);
    let svc = pick(rng, &TARGETS);
    let kind = rng.random_range(0..100);
    let doc = if kind < 15 {
        let name = pick(rng, &SERVICES);
        let selector = match rng.random_range(0..4) {
            0 => String::new(),
            1 => format!("selector: {{app: {name}}}, "),
            2 => format!("selector: {{app: {svc}}}, "),
            _ => format!("selector: {{app: {svc}, tier: back}}, "),
        };
        let egress = random_egress(rng);
        format!("kind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{selector}{egress}ports: [{{port: {}}}]}}\n", rng.random_range(80..83))
    } else if kind < 45 {
        let name = format!("w{}", rng.random_range(0..12));
        let mut labels = Vec::new();
        if rng.random_bool(0.7) {
            labels.push(format!("app: {}", pick(rng, &TARGETS)));
        }
        if rng.random_bool(0.3) {
            labels.push("tier: back".to_string());
        }
        let service = if labels.is_empty() || rng.random_bool(0.3) {
            format!("service: {svc}, ")
        } else {
            String::new()
        };
        format!(
            "kind: Workload\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{}}}}}\nspec: {{{service}address: 10.0.0.{}, port: 80}}\n",
            labels.join(", "),
            rng.random_range(1..200)
        )
    } else if kind < 60 {
        let name = format!("r{}", rng.random_range(0..4));
        let mut rules = Vec::new();
        for _ in 0..rng.random_range(1..3) {
            let backends: Vec<String> = (0..rng.random_range(0..3))
                .map(|_| format!("{{service: {}}}", pick(rng, &TARGETS)))
                .collect();
            let mirror = if rng.random_bool(0.3) {
                format!(", mirror: {{service: {}}}", pick(rng, &TARGETS))
            } else {
                String::new()
            };
            rules.push(format!("{{backends: [{}]{mirror}}}", backends.join(", ")));
        }
        format!(
            "kind: Route\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{service: {svc}, rules: [{}]}}\n",
            rules.join(", ")
        )
    } else if kind < 78 {
        let name = format!("p{}", rng.random_range(0..4));
        let default = match rng.random_range(0..3) {
            0 => "defaultAction: Allow, ",
            1 => "defaultAction: Deny, ",
            _ => "",
        };
        let mut rules = Vec::new();
        for _ in 0..rng.random_range(0..3) {
            let action = if rng.random_bool(0.7) {
                "Allow"
            } else {
                "Deny"
            };
            let from = match rng.random_range(0..5) {
                0 => String::new(),
                1 => format!(", from: {{namespaces: [{}]}}", pick(rng, &NAMESPACES)),
                2 => format!(
                    ", from: {{principals: ['spiffe://{}/ns/{}/sa/{}']}}",
                    pick(rng, &DOMAINS),
                    pick(rng, &NAMESPACES),
                    pick(rng, &TARGETS)
                ),
                3 => format!(
                    ", from: {{principals: ['spiffe://{}/ns/{}/*']}}",
                    pick(rng, &DOMAINS),
                    pick(rng, &NAMESPACES)
                ),
                _ => format!(
                    ", from: {{namespaces: [{}], principals: ['spiffe://cluster.local/*']}}",
                    pick(rng, &NAMESPACES)
                ),
            };
            rules.push(format!("{{action: {action}{from}}}"));
        }
        format!(
            "kind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{service: {svc}, {default}rules: [{}]}}\n",
            rules.join(", ")
        )
    } else if kind < 85 {
        let name = format!("d{}", rng.random_range(0..3));
        format!("kind: DestinationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{service: {svc}}}\n")
    } else if kind < 90 {
        format!(
            "kind: ServiceAddress\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec: {{address: 240.240.0.{}}}\n",
            rng.random_range(1..50)
        )
    } else if kind < 93 {
        let name = format!("q{}", rng.random_range(0..2));
        format!(
            "kind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{service: {svc}, jwtRules: [{{issuer: i{}, jwks: {{uri: 'https://idp.example/jwks'}}}}]}}\n",
            rng.random_range(0..3)
        )
    } else if kind < 95 {
        let name = format!("l{}", rng.random_range(0..2));
        format!(
            "kind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{service: {svc}, identity: {{requestsPerSecond: {}}}}}\n",
            rng.random_range(1..100)
        )
    } else if kind < 97 {
        let name = format!("x{}", rng.random_range(0..2));
        format!(
            "kind: ExternalService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{hosts: [h{}.example.com], ports: [{{port: {}}}]}}\n",
            rng.random_range(0..3),
            rng.random_range(1..1000)
        )
    } else if kind < 98 {
        let name = format!("h{}", rng.random_range(0..2));
        let to = pick(rng, &TARGETS);
        format!(
            "kind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{parentRefs: [{{group: '', kind: Service, name: {svc}}}], rules: [{{backendRefs: [{{name: {to}, port: 80}}]}}]}}\n"
        )
    } else {
        format!(
            "kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{trustDomain: {}}}\n",
            pick(rng, &DOMAINS)
        )
    };
    let api_version = match doc.starts_with("kind: HTTPRoute") {
        true => "gateway.networking.k8s.io/v1",
        false => "trellis.dev/v1",
    };
    let yaml = format!("apiVersion: {api_version}\n{doc}");
    let mut set = trellis_api::parse_documents("random.yaml", &yaml)
        .unwrap_or_else(|e| panic!("generated an invalid resource: {e}\n{yaml}"));
    assert_eq!(set.resources.len(), 1, "{yaml}");
    set.resources.remove(0)
}

/// One revision: a few puts and deletes.
fn random_revision(rng: &mut StdRng, model: &Model, revision: u64) -> Vec<WatchEvent> {
    (0..rng.random_range(1..4))
        .map(|_| {
            let existing: Vec<&ResourceKey> = model.items.keys().collect();
            if rng.random_bool(0.25) && !existing.is_empty() {
                let key = existing[rng.random_range(0..existing.len())].clone();
                WatchEvent::Delete { key, revision }
            } else {
                WatchEvent::Put(Stored {
                    resource: random_resource(rng),
                    version: revision,
                    lease: None,
                })
            }
        })
        .collect()
}

/// Applies one [`random_revision`] to `model` and moves `revision` on.
fn apply_random_revision(rng: &mut StdRng, model: &mut Model, revision: &mut u64) {
    for e in random_revision(rng, model, *revision) {
        model.apply(e);
    }
    *revision += 1;
}

/// A subscribed view: whose, and its receiver.
type Subscribed<'a> = ((&'a str, &'a str), watch::Receiver<Arc<View>>);

type Summary = BTreeMap<String, (String, Vec<(String, String)>)>;

fn summary(view: &View) -> Summary {
    view.types()
        .map(|(url, t)| {
            let entries = t
                .resources()
                .iter()
                .map(|(n, r)| (n.clone(), r.version.clone()))
                .collect();
            (url.clone(), (t.version().to_string(), entries))
        })
        .collect()
}

fn assert_views_match(model: &Model, views: &[Subscribed<'_>], context: &str) {
    for ((ns, svc), rx) in views {
        let want = summary(&compute(model, ns, svc));
        let got = summary(&rx.borrow());
        assert_eq!(got, want, "{context}: view of {ns}/{svc} differs");
    }
}

#[test]
fn incremental_views_equal_views_computed_from_scratch() {
    let nodes = [
        ("default", "a"),
        ("default", "b"),
        ("other", "c"),
        ("other", "a"),
        ("default", "ghost"),
        ("default", "c"),
        ("other", "b"),
        ("other", "ghost"),
    ];
    for seed in 0..24u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = Model::default();
        let mut revision = 1;
        // Start from a populated mesh, as after a listing.
        for _ in 0..20 {
            apply_random_revision(&mut rng, &mut model, &mut revision);
        }
        let mut engine = ViewEngine::new(Arc::new(model.clone()));
        let mut views: Vec<_> = nodes
            .iter()
            .map(|&(ns, svc)| ((ns, svc), engine.subscribe(ns, svc)))
            .collect();
        assert_views_match(&model, &views, &format!("seed {seed}, subscribed"));
        for step in 0..120 {
            apply_random_revision(&mut rng, &mut model, &mut revision);
            // Sometimes several revisions reach the engine at once, as when debounced.
            if rng.random_bool(0.3) {
                continue;
            }
            engine.update(Arc::new(model.clone()));
            let context = format!("seed {seed}, step {step}");
            assert_views_match(&model, &views, &context);
            if step == 50 {
                views.push((("default", "e"), engine.subscribe("default", "e")));
                views.remove(0);
                assert_views_match(&model, &views, &context);
            }
        }
    }
}

#[test]
fn an_endpoint_change_republishes_only_the_workload_type() {
    let yaml = "
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: a}
spec: {selector: {app: a}, ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: b}
spec: {selector: {app: b}, ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: b-0, labels: {app: b}}
spec: {address: 10.0.0.2, port: 80}
";
    let mut model = crate::test_support::model(yaml);
    let mut engine = ViewEngine::new(Arc::new(model.clone()));
    let a = engine.subscribe("default", "a");
    let b = engine.subscribe("default", "b");
    assert_eq!(engine.groups(), 1, "both may call both: one shared group");
    let before = a.borrow().clone();
    put(
        &mut model,
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {name: b-0, labels: {app: b}}\nspec: {address: 10.0.0.3, port: 80}\n",
        10,
    );
    engine.update(Arc::new(model.clone()));
    let after = a.borrow().clone();
    let workloads = trellis_xds::type_url("Workload");
    for (url, t) in after.types() {
        let old = before.get(url).expect("every type is present");
        assert_eq!(Arc::ptr_eq(t, old), *url != workloads, "{url}");
    }
    assert!(Arc::ptr_eq(
        after.get(&workloads).expect("workloads"),
        b.borrow().get(&workloads).expect("workloads"),
    ));
    assert_eq!(summary(&after), summary(&compute(&model, "default", "a")));
}

/// The reference view of an on-demand proxy of `ns/svc` that named `scope`.
fn compute_scoped(model: &Model, ns: &str, svc: &str, scope: &BTreeSet<SvcKey>) -> View {
    let node = ViewNode {
        namespace: ns.to_string(),
        service: svc.to_string(),
    };
    let stored = view::view_scoped(model, &node, scope);
    View::from_resources(stored.iter().map(|s| &s.resource))
}

#[test]
fn scoped_views_equal_their_reference_after_every_change() {
    // (proxy, the services it named)
    type Named<'a> = ((&'a str, &'a str), Vec<(&'a str, &'a str)>);
    let scopes: Vec<Named<'_>> = vec![
        (("default", "a"), vec![]),
        (("default", "a"), vec![("default", "b")]),
        (
            ("other", "c"),
            vec![("default", "b"), ("other", "d"), ("default", "ghost")],
        ),
        (("default", "ghost"), vec![("other", "a"), ("default", "e")]),
    ];
    for seed in 0..24u64 {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let mut model = Model::default();
        let mut revision = 1;
        for _ in 0..20 {
            apply_random_revision(&mut rng, &mut model, &mut revision);
        }
        let mut engine = ViewEngine::new(Arc::new(model.clone()));
        let views: Vec<_> = scopes
            .iter()
            .map(|((ns, svc), named)| {
                let scope: BTreeSet<SvcKey> = named
                    .iter()
                    .map(|(n, s)| (n.to_string(), s.to_string()))
                    .collect();
                let rx = engine.subscribe_scoped(ns, svc, scope.clone());
                ((*ns, *svc), scope, rx)
            })
            .collect();
        for step in 0..80 {
            apply_random_revision(&mut rng, &mut model, &mut revision);
            engine.update(Arc::new(model.clone()));
            for ((ns, svc), scope, rx) in &views {
                let want = summary(&compute_scoped(&model, ns, svc, scope));
                let got = summary(&rx.borrow());
                assert_eq!(
                    got, want,
                    "seed {seed}, step {step}: scoped view of {ns}/{svc}"
                );
            }
        }
    }
}

/// Puts every resource of `yaml` into `model` at `version`.
fn put(model: &mut Model, yaml: &str, version: u64) {
    let set = trellis_api::parse_documents("t.yaml", yaml).expect("valid");
    for resource in set.resources {
        model.apply(WatchEvent::Put(Stored {
            resource,
            version,
            lease: None,
        }));
    }
}

/// The Services a view holds, as `namespace/name`.
fn held(view: &View) -> Vec<String> {
    view.get(&trellis_xds::type_url("Service"))
        .map(|t| t.resources().keys().cloned().collect())
        .unwrap_or_default()
}

fn service(name: &str, egress: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]{egress}}}\n"
    )
}

fn workload(name: &str, app: &str, address: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec: {{address: {address}, port: 80}}\n"
    )
}

/// a lists only b; b routes to d. With c and d in the mesh, a's proxies get a, b and d.
fn scoped_mesh() -> Model {
    let mut model = Model::default();
    let mesh = [
        service("a", ", egress: [b]"),
        service("b", ""),
        service("c", ""),
        service("d", ""),
        workload("b-0", "b", "10.0.0.2"),
        workload("c-0", "c", "10.0.0.3"),
        workload("d-0", "d", "10.0.0.4"),
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {name: b}\nspec: {service: b, rules: [{backends: [{service: d}]}]}\n".to_string(),
    ];
    put(&mut model, &mesh.join("---\n"), 1);
    model
}

/// Brings `engine` to `model`; a's view must hold `want`, and equal the reference.
#[track_caller]
fn check(
    engine: &mut ViewEngine,
    model: &Model,
    a: &mut watch::Receiver<Arc<View>>,
    want: &[&str],
) {
    engine.update(Arc::new(model.clone()));
    let view = a.borrow_and_update().clone();
    assert_eq!(held(&view), want);
    assert_eq!(summary(&view), summary(&compute(model, "default", "a")));
}

#[test]
fn egress_scopes_a_view_to_its_list_closed_over_routes() {
    let mut model = scoped_mesh();
    let mut engine = ViewEngine::new(Arc::new(model.clone()));
    let mut a = engine.subscribe("default", "a");
    let b = engine.subscribe("default", "b");
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/b", "default/d"],
    );
    assert_eq!(held(&b.borrow()).len(), 4, "b declares nothing: everything");

    // An endpoint outside the scope moves: a's view does not; one inside: only its workloads.
    put(&mut model, &workload("c-0", "c", "10.0.0.30"), 2);
    engine.update(Arc::new(model.clone()));
    assert!(!a.has_changed().unwrap_or(true), "c is not a's business");
    let before = a.borrow_and_update().clone();
    put(&mut model, &workload("d-0", "d", "10.0.0.40"), 3);
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/b", "default/d"],
    );
    let workloads = trellis_xds::type_url("Workload");
    for (url, t) in a.borrow().types() {
        let old = before.get(url).expect("every type is present");
        assert_eq!(Arc::ptr_eq(t, old), *url != workloads, "{url}");
    }

    // No list: everything again; back to the list: b, and d through b's route.
    put(&mut model, &service("a", ""), 4);
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/b", "default/c", "default/d"],
    );
    put(&mut model, &service("a", ", egress: [b]"), 5);
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/b", "default/d"],
    );

    // b's policies can never allow a: b goes, and d with it, reached only through b's route.
    let deny = "apiVersion: trellis.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec: {service: b, defaultAction: Deny, rules: [{action: Allow, from: {principals: ['spiffe://cluster.local/ns/default/sa/admin']}}]}\n";
    put(&mut model, deny, 6);
    check(&mut engine, &model, &mut a, &["default/a"]);

    // `default/*` follows the namespace: every service a may call, those created later too.
    put(&mut model, &service("a", ", egress: ['default/*']"), 7);
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/c", "default/d"],
    );
    put(&mut model, &service("e", ""), 8);
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/c", "default/d", "default/e"],
    );

    // An empty list: its own service only.
    put(&mut model, &service("a", ", egress: []"), 9);
    check(&mut engine, &model, &mut a, &["default/a"]);
}

/// An HTTPRoute's backends are in reach of its parent's callers, as a Route's are: a lists only
/// b; an HTTPRoute on b sends to c.
#[test]
fn egress_scopes_close_over_httproute_backends() {
    let mut model = Model::default();
    let mesh = [
        service("a", ", egress: [b]"),
        service("b", ""),
        service("c", ""),
        service("d", ""),
        workload("b-0", "b", "10.0.0.2"),
        workload("c-0", "c", "10.0.0.3"),
    ];
    put(&mut model, &mesh.join("---\n"), 1);
    let mut engine = ViewEngine::new(Arc::new(model.clone()));
    let mut a = engine.subscribe("default", "a");
    check(&mut engine, &model, &mut a, &["default/a", "default/b"]);
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: b}\nspec: {parentRefs: [{group: '', kind: Service, name: b}], rules: [{backendRefs: [{name: c, port: 80}]}]}\n";
    put(&mut model, route, 2);
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/b", "default/c"],
    );
    let moved = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: b}\nspec: {parentRefs: [{group: '', kind: Service, name: b}], rules: [{backendRefs: [{name: d, port: 80}]}]}\n";
    put(&mut model, moved, 3);
    check(
        &mut engine,
        &model,
        &mut a,
        &["default/a", "default/b", "default/d"],
    );
}

#[test]
fn an_on_demand_proxy_gets_only_named_services_in_its_egress_scope() {
    let model = scoped_mesh();
    let mut engine = ViewEngine::new(Arc::new(model.clone()));
    let scope: BTreeSet<SvcKey> = [("default", "b"), ("default", "c")]
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    let a = engine.subscribe_scoped("default", "a", scope.clone());
    let view = a.borrow().clone();
    assert_eq!(
        held(&view),
        ["default/a", "default/b", "default/d"],
        "c was named but is outside a's egress"
    );
    assert_eq!(
        summary(&view),
        summary(&compute_scoped(&model, "default", "a", &scope))
    );
    // A proxy of a service with no list gets what it named.
    let b = engine.subscribe_scoped("default", "b", scope);
    assert_eq!(held(&b.borrow()), ["default/b", "default/c", "default/d"]);
}
