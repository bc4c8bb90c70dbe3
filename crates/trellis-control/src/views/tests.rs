//! The incremental views against the reference: random change sequences, and after every
//! update each subscribed view must equal [`super::compute`] on the same model.
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
        format!("kind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{selector}ports: [{{port: {}}}]}}\n", rng.random_range(80..83))
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
    } else if kind < 95 {
        let name = format!("q{}", rng.random_range(0..2));
        format!(
            "kind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{service: {svc}, jwtRules: [{{issuer: i{}, jwks: {{uri: 'https://idp.example/jwks'}}}}]}}\n",
            rng.random_range(0..3)
        )
    } else {
        format!(
            "kind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{trustDomain: {}}}\n",
            pick(rng, &DOMAINS)
        )
    };
    let yaml = format!("apiVersion: trellis.dev/v1\n{doc}");
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
            for e in random_revision(&mut rng, &model, revision) {
                model.apply(e);
            }
            revision += 1;
        }
        let mut engine = ViewEngine::new(Arc::new(model.clone()));
        let mut views: Vec<_> = nodes
            .iter()
            .map(|&(ns, svc)| ((ns, svc), engine.subscribe(ns, svc)))
            .collect();
        assert_views_match(&model, &views, &format!("seed {seed}, subscribed"));
        for step in 0..120 {
            for e in random_revision(&mut rng, &model, revision) {
                model.apply(e);
            }
            revision += 1;
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
    let mut model = Model::default();
    for (i, r) in trellis_api::parse_documents("t.yaml", yaml)
        .expect("valid")
        .resources
        .into_iter()
        .enumerate()
    {
        model.apply(WatchEvent::Put(Stored {
            resource: r,
            version: i as u64 + 1,
            lease: None,
        }));
    }
    let mut engine = ViewEngine::new(Arc::new(model.clone()));
    let a = engine.subscribe("default", "a");
    let b = engine.subscribe("default", "b");
    assert_eq!(engine.groups(), 1, "both may call both: one shared group");
    let before = a.borrow().clone();
    let moved = trellis_api::parse_documents(
        "t.yaml",
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {name: b-0, labels: {app: b}}\nspec: {address: 10.0.0.3, port: 80}\n",
    )
    .expect("valid")
    .resources
    .remove(0);
    model.apply(WatchEvent::Put(Stored {
        resource: moved,
        version: 10,
        lease: None,
    }));
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
            for e in random_revision(&mut rng, &model, revision) {
                model.apply(e);
            }
            revision += 1;
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
            for e in random_revision(&mut rng, &model, revision) {
                model.apply(e);
            }
            revision += 1;
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
