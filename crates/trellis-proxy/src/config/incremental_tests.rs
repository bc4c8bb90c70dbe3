//! The incremental build's property: whatever sequence of changes arrives, the snapshot built
//! from the previous one and the changes describes the same config as a full build of the
//! resulting resources, fails with the same error when it fails, and keeps the same live state
//! (the same `Arc`) for every endpoint that survives. Random sequences from fixed seeds.
use super::{Snapshot, WeightedBackend};
use crate::settings::LocalIdentity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;
use trellis_api::Resource;
use trellis_xds::client::{Held, TypeResources};
use trellis_xds::resource::{
    DESTINATION_POLICY, GRPC_ROUTE, HTTP_ROUTE, MESH_CONFIG, ROUTE, SERVICE, SERVICE_ADDRESS,
    WORKLOAD,
};
use trellis_xds::{Resources, TypeChange};

const NAMESPACES: [&str; 2] = ["default", "shop"];
const SERVICES: usize = 6;
const WORKLOADS: usize = 24;
const ROUTES: usize = 5;
const POLICIES: usize = 5;

fn parse(yaml: &str) -> Resource {
    let set = trellis_api::parse_documents("t.yaml", yaml).expect("generated resources are valid");
    set.resources.into_iter().next().expect("one resource")
}

fn pick<'a>(rng: &mut StdRng, of: &[&'a str]) -> &'a str {
    of[rng.random_range(0..of.len())]
}

fn service(rng: &mut StdRng, ns: &str, i: usize) -> Resource {
    let selector = match rng.random_range(0..3) {
        0 => String::new(),
        1 => format!("selector: {{app: s{i}}}, "),
        _ => format!(
            "selector: {{app: s{}, version: v1}}, ",
            rng.random_range(0..SERVICES)
        ),
    };
    let ports = if rng.random_bool(0.5) {
        "[{port: 80}]"
    } else {
        "[{port: 80}, {port: 9090, protocol: http2}]"
    };
    parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ns}}}\nspec: {{{selector}ports: {ports}}}\n"
    ))
}

fn workload(rng: &mut StdRng, ns: &str, i: usize) -> Resource {
    let app = rng.random_range(0..SERVICES);
    let version = pick(rng, &["v1", "v2"]);
    let field = rng.random_range(0..SERVICES);
    // Few addresses, so several workloads and services share one.
    let addr = format!("10.0.0.{}", rng.random_range(1..12));
    let port = pick(rng, &["8080", "8081"]);
    let mut spec = format!("service: s{field}, address: {addr}, port: {port}");
    if rng.random_bool(0.2) {
        spec.push_str(", health: Unhealthy");
    }
    if rng.random_bool(0.3) {
        spec.push_str(&format!(", zone: {}", pick(rng, &["z1", "z2"])));
    }
    if rng.random_bool(0.3) {
        spec.push_str(&format!(
            ", identity: spiffe://cluster.local/ns/{ns}/sa/s{app}"
        ));
    }
    if rng.random_bool(0.2) {
        spec.push_str(", weight: 3");
    }
    if rng.random_bool(0.3) {
        spec.push_str(", appPort: 9080");
    }
    let mut r = parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: w{i}, namespace: {ns}, labels: {{app: s{app}, version: {version}}}}}\nspec: {{{spec}}}\n"
    ));
    // Now and then one a build refuses (validation would too; the builder must still say so).
    if rng.random_bool(0.03) {
        if let Resource::Workload(w) = &mut r {
            w.spec.address = "not-an-address".into();
        }
    }
    r
}

fn route(rng: &mut StdRng, ns: &str, i: usize) -> Resource {
    let svc = rng.random_range(0..SERVICES);
    let other = rng.random_range(0..SERVICES);
    let subset = pick(rng, &["v1", "v2", "v3"]);
    let weight = rng.random_range(1..100);
    let timeout = rng.random_range(1..5);
    parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: r{i}, namespace: {ns}}}\nspec:\n  service: s{svc}\n  rules:\n    - name: split\n      backends: [{{service: s{svc}, subset: {subset}, weight: {weight}}}, {{service: s{other}, weight: {}}}]\n      timeout: {timeout}s\n    - backends: [{{service: s{svc}}}]\n",
        100 - weight
    ))
}

/// An HTTPRoute or GRPCRoute with one or two Service parents; backends that may not exist
/// (`s{SERVICES}` never does), so a Service change moves them between valid and 500.
fn gateway_route(rng: &mut StdRng, ns: &str, i: usize) -> (&'static str, Resource) {
    let parent = rng.random_range(0..SERVICES);
    let second = rng.random_range(0..SERVICES);
    let a = rng.random_range(0..=SERVICES);
    let b = rng.random_range(0..=SERVICES);
    let parents = format!(
        "[{{group: \"\", kind: Service, name: s{parent}}}, {{group: \"\", kind: Service, name: s{second}}}]"
    );
    if rng.random_bool(0.7) {
        let prefix = pick(rng, &["/", "/a", "/a/b"]);
        (
            HTTP_ROUTE,
            parse(&format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: h{i}, namespace: {ns}}}\nspec:\n  parentRefs: {parents}\n  rules:\n    - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n      backendRefs: [{{name: s{a}, port: 80, weight: 3}}, {{name: s{b}, port: 80}}]\n    - matches: [{{path: {{type: Exact, value: /r}}}}]\n      filters: [{{type: RequestRedirect, requestRedirect: {{statusCode: 301}}}}]\n"
            )),
        )
    } else {
        (
            GRPC_ROUTE,
            parse(&format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g{i}, namespace: {ns}}}\nspec:\n  parentRefs: {parents}\n  rules:\n    - matches: [{{method: {{service: a.B, method: C}}}}]\n      backendRefs: [{{name: s{a}, port: 80}}]\n"
            )),
        )
    }
}

fn policy(rng: &mut StdRng, ns: &str, i: usize) -> Resource {
    let svc = rng.random_range(0..SERVICES);
    let lb = pick(rng, &["RoundRobin", "LeastRequest", "PeakEwma"]);
    let mut subsets = String::new();
    for v in ["v1", "v2", "v3"] {
        if rng.random_bool(0.6) {
            subsets.push_str(&format!("{{name: {v}, labels: {{version: {v}}}}}, "));
        }
    }
    let extra = match rng.random_range(0..3) {
        0 => "  outlierDetection: {consecutive5xxErrors: 3}\n",
        1 => "  tls: {mode: Disable}\n",
        _ => "",
    };
    parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: DestinationPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n  service: s{svc}\n  loadBalancer: {{algorithm: {lb}}}\n  subsets: [{subsets}]\n{extra}"
    ))
}

fn mesh(rng: &mut StdRng) -> Resource {
    let mode = pick(rng, &["Permissive", "Strict", "Off"]);
    parse(&format!(
        "apiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    ))
}

/// A random change to one resource: a new version of it, or its removal (`None`).
fn mutation(rng: &mut StdRng) -> (&'static str, String, Option<Resource>) {
    let ns = pick(rng, &NAMESPACES);
    let remove = rng.random_bool(0.25);
    let (t, name, r) = match rng.random_range(0..112) {
        100..=111 => {
            let i = rng.random_range(0..ROUTES);
            let (t, r) = gateway_route(rng, ns, i);
            let name = match t {
                HTTP_ROUTE => format!("h{i}"),
                _ => format!("g{i}"),
            };
            (t, name, r)
        }
        0..=44 => {
            let i = rng.random_range(0..WORKLOADS);
            (WORKLOAD, format!("w{i}"), workload(rng, ns, i))
        }
        45..=59 => {
            let i = rng.random_range(0..SERVICES);
            (SERVICE, format!("s{i}"), service(rng, ns, i))
        }
        60..=77 => {
            let i = rng.random_range(0..ROUTES);
            (ROUTE, format!("r{i}"), route(rng, ns, i))
        }
        95..=97 => {
            let i = rng.random_range(0..SERVICES);
            let ip = rng.random_range(1..5);
            let r = parse(&format!(
                "apiVersion: trellis.dev/v1\nkind: ServiceAddress\nmetadata: {{name: s{i}, namespace: {ns}}}\nspec: {{address: 240.240.0.{ip}}}\n"
            ));
            (SERVICE_ADDRESS, format!("s{i}"), r)
        }
        78..=94 => {
            let i = rng.random_range(0..POLICIES);
            (DESTINATION_POLICY, format!("p{i}"), policy(rng, ns, i))
        }
        _ => return (MESH_CONFIG, "default/mesh".into(), Some(mesh(rng))),
    };
    (t, format!("{ns}/{name}"), (!remove).then_some(r))
}

/// `resources` with `mutations` applied, and the changes as the xDS client reports them (each
/// name whose final state differs from the original, once).
fn apply(
    resources: &Resources,
    mutations: Vec<(&'static str, String, Option<Resource>)>,
) -> (Resources, Vec<TypeChange>) {
    let mut next = resources.clone();
    let mut touched: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (t, name, r) in mutations {
        let mut map: TypeResources = next.type_map(t).cloned().unwrap_or_default();
        match r {
            Some(r) => {
                let held = Held {
                    version: Arc::from(""),
                    resource: Arc::new(r),
                };
                map.insert(name.clone(), held);
            }
            None => {
                map.remove(&name);
            }
        }
        next.set_type(t, map);
        touched.entry(t).or_default().insert(name);
    }
    let mut changes = Vec::new();
    for (t, names) in touched {
        let mut change = TypeChange {
            type_url: t.to_string(),
            version: String::new(),
            updated: Vec::new(),
            removed: Vec::new(),
        };
        for name in names {
            match (resources.get(t, &name), next.get(t, &name)) {
                (Some(_), None) => change.removed.push(name),
                (None, Some(_)) => change.updated.push(name),
                (Some(a), Some(b)) if !Arc::ptr_eq(a, b) => change.updated.push(name),
                _ => {}
            }
        }
        changes.push(change);
    }
    (next, changes)
}

fn backends(bs: &[WeightedBackend]) -> String {
    bs.iter()
        .map(|b| format!("{:?}*{}", b.backend, b.weight))
        .collect::<Vec<_>>()
        .join(",")
}

/// Everything of a snapshot that config decides, in a canonical order.
fn describe(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "inbound {:?} trust {:?} health {:?} mesh {:?}",
        s.inbound, s.trust_roots, s.health_check, s.mesh
    );
    for e in s.directory.entries() {
        let _ = writeln!(out, "directory {e}");
    }
    let keys: BTreeSet<_> = s.services.keys().cloned().collect();
    for key in keys {
        let t = &s.services[&key];
        let _ = writeln!(
            out,
            "service {key:?} ports {:?} connect {:?} outlier {:?} limits {:?} locality {:?} mtls {}",
            t.ports, t.connect_timeout, t.outlier, t.limits, t.locality, t.mtls
        );
        for r in &t.rules {
            let _ = writeln!(
                out,
                "  rule {} [{}] total {} timeout {:?} mirror {:?} redirect {:?} direct {:?} matches {:?}",
                r.name,
                backends(&r.backends),
                r.total_weight,
                r.timeout,
                r.mirror.as_ref().map(|m| (&m.backend, m.percent)),
                r.redirect,
                r.direct_response.as_ref().map(|d| d.status),
                r.matches.len()
            );
        }
        let subsets: BTreeSet<_> = t.groups.keys().cloned().collect();
        for subset in subsets {
            let g = &t.groups[&subset];
            let _ = writeln!(out, "  group {subset:?} hash {:?}", g.hash_on);
            for e in &g.endpoints {
                let _ = writeln!(
                    out,
                    "    {} w{} zone {:?} labels {:?} id {:?}",
                    e.addr,
                    e.weight,
                    e.zone,
                    e.labels,
                    e.identity.as_ref().map(|i| i.to_string())
                );
            }
        }
    }
    out
}

/// The carried state is exactly the endpoints' and services', and each endpoint's state is the
/// one the previous snapshot had for its address, when it had one.
fn check_live_state(s: &Snapshot, previous: &Snapshot) {
    let mut addrs = BTreeSet::new();
    for (key, t) in s.services.iter() {
        assert!(Arc::ptr_eq(&s.carried.limit_states[key], &t.limit_state));
        if let Some(old) = previous.services.get(key) {
            assert!(Arc::ptr_eq(&old.limit_state, &t.limit_state), "{key:?}");
        }
        for g in t.groups.values() {
            for e in &g.endpoints {
                addrs.insert(e.addr);
                let live = &s.carried.endpoints[&e.addr];
                assert!(Arc::ptr_eq(&live.load, &e.load) && Arc::ptr_eq(&live.outlier, &e.outlier));
                if let Some(old) = previous.carried.endpoints.get(&e.addr) {
                    assert!(Arc::ptr_eq(&old.load, &e.load), "{}", e.addr);
                    assert!(Arc::ptr_eq(&old.outlier, &e.outlier), "{}", e.addr);
                }
            }
        }
    }
    let carried: BTreeSet<_> = s.carried.endpoints.keys().copied().collect();
    assert_eq!(carried, addrs);
    assert_eq!(s.carried.limit_states.len(), s.services.len());
}

fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let local = LocalIdentity {
        service: "s0".into(),
        namespace: "default".into(),
        zone: Some("z1".into()),
    };
    let mut initial = Vec::new();
    for ns in NAMESPACES {
        for i in 0..SERVICES {
            initial.push((
                SERVICE,
                format!("{ns}/s{i}"),
                Some(service(&mut rng, ns, i)),
            ));
        }
        for i in 0..WORKLOADS / 2 {
            initial.push((
                WORKLOAD,
                format!("{ns}/w{i}"),
                Some(workload(&mut rng, ns, i)),
            ));
        }
        initial.push((ROUTE, format!("{ns}/r0"), Some(route(&mut rng, ns, 0))));
        initial.push((
            DESTINATION_POLICY,
            format!("{ns}/p0"),
            Some(policy(&mut rng, ns, 0)),
        ));
    }
    // Fix the bad addresses the generator may have made: the first config must build.
    for (_, _, r) in &mut initial {
        if let Some(Resource::Workload(w)) = r {
            w.spec.address = w.spec.address.replace("not-an-address", "10.0.0.99");
        }
    }
    let (mut resources, _) = apply(&Resources::default(), initial);
    let mut current = Snapshot::build(1, "t".into(), resources.clone(), None, &local)
        .expect("the first config builds");
    let (mut applied, mut refused) = (0, 0);
    for step in 0..steps {
        let n = rng.random_range(1..4);
        let mutations = (0..n).map(|_| mutation(&mut rng)).collect();
        let (next, changes) = apply(&resources, mutations);
        let version = current.version + 1;
        let incremental = current.update(version, "t".into(), next.clone(), &changes, &local);
        let full = Snapshot::build(version, "t".into(), next.clone(), Some(&current), &local);
        match (incremental, full) {
            (Ok(inc), Ok(full)) => {
                assert_eq!(
                    describe(&inc),
                    describe(&full),
                    "seed {seed} step {step}: {changes:?}"
                );
                check_live_state(&inc, &current);
                check_live_state(&full, &current);
                // Untouched services are the previous snapshot's, not copies.
                let touched: BTreeSet<String> = changes
                    .iter()
                    .flat_map(|c| c.updated.iter().chain(&c.removed).cloned())
                    .collect();
                if touched.is_empty() {
                    for (key, t) in inc.services.iter() {
                        assert!(Arc::ptr_eq(t, &current.services[key]));
                    }
                }
                current = inc;
                resources = next;
                applied += 1;
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "seed {seed} step {step}");
                refused += 1;
            }
            (a, b) => panic!(
                "seed {seed} step {step}: incremental {:?} but full {:?} for {changes:?}",
                a.err(),
                b.err()
            ),
        }
    }
    assert!(
        applied > steps / 2,
        "seed {seed}: {applied} applied, {refused} refused"
    );
}

#[test]
fn incremental_builds_match_full_builds() {
    for seed in 0..16 {
        run(seed, 120);
    }
}

#[test]
fn an_update_that_touches_one_service_shares_the_others() {
    let local = LocalIdentity {
        service: "s0".into(),
        namespace: "default".into(),
        zone: None,
    };
    let mut initial = Vec::new();
    for i in 0..SERVICES {
        let svc = parse(&format!(
            "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{selector: {{app: s{i}}}, ports: [{{port: 80}}]}}\n"
        ));
        initial.push((SERVICE, format!("default/s{i}"), Some(svc)));
    }
    let (resources, _) = apply(&Resources::default(), initial);
    let first = Snapshot::build(1, "t".into(), resources.clone(), None, &local).expect("builds");
    let w = parse(
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {name: w, labels: {app: s2}}\nspec: {address: 10.0.0.1, port: 80}\n",
    );
    let (next, changes) = apply(&resources, vec![(WORKLOAD, "default/w".into(), Some(w))]);
    let second = first
        .update(2, "t".into(), next, &changes, &local)
        .expect("builds");
    for (key, t) in second.services.iter() {
        let same = Arc::ptr_eq(t, &first.services[key]);
        assert_eq!(same, key.1 != "s2", "{key:?}");
    }
    assert_eq!(
        second.services[&("default".into(), "s2".into())].groups[&None]
            .endpoints
            .len(),
        1
    );
    assert!(Arc::ptr_eq(&first.inbound, &second.inbound));
}

#[test]
fn rate_limit_buckets_outlive_updates_that_leave_them_unchanged() {
    let local = LocalIdentity {
        service: "s0".into(),
        namespace: "default".into(),
        zone: None,
    };
    let svc = parse(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: s1}\nspec: {selector: {app: s1}, ports: [{port: 80}]}\n",
    );
    let route = |rps: u32| {
        parse(&format!(
            "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: r}}\nspec: {{service: s1, rules: [{{name: all, rateLimit: {{requestsPerSecond: {rps}}}}}]}}\n"
        ))
    };
    let (resources, _) = apply(
        &Resources::default(),
        vec![
            (SERVICE, "default/s1".into(), Some(svc)),
            (ROUTE, "default/r".into(), Some(route(5))),
        ],
    );
    let first = Snapshot::build(1, "t".into(), resources.clone(), None, &local).expect("builds");
    let bucket = |s: &Snapshot| {
        s.services[&("default".into(), "s1".into())].rules[0]
            .rate_limit
            .clone()
            .expect("a limit")
    };
    // A new endpoint recompiles s1; its rule's bucket is the same one.
    let w = parse(
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {name: w, labels: {app: s1}}\nspec: {address: 10.0.0.1, port: 80}\n",
    );
    let (next, changes) = apply(&resources, vec![(WORKLOAD, "default/w".into(), Some(w))]);
    let second = first
        .update(2, "t".into(), next.clone(), &changes, &local)
        .expect("builds");
    assert!(!Arc::ptr_eq(
        &first.services[&("default".into(), "s1".into())],
        &second.services[&("default".into(), "s1".into())]
    ));
    assert!(Arc::ptr_eq(&bucket(&first), &bucket(&second)));
    // A changed limit is a new bucket.
    let (last, changes) = apply(&next, vec![(ROUTE, "default/r".into(), Some(route(7)))]);
    let third = second
        .update(3, "t".into(), last, &changes, &local)
        .expect("builds");
    assert!(!Arc::ptr_eq(&bucket(&second), &bucket(&third)));
    assert_eq!(bucket(&third).config().requests_per_second, 7);
}

#[test]
fn gateway_api_routes_compile_with_their_timeouts() {
    let set = trellis_api::parse_documents(
        "t.yaml",
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {ports: [{port: 80}]}\n---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: echo-v1}\nspec: {ports: [{port: 80}]}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: t}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /delay}}]\n    timeouts: {request: 500ms}\n    backendRefs: [{name: echo-v1, port: 80}]\n",
    )
    .expect("valid");
    let local = LocalIdentity {
        service: "caller".into(),
        namespace: "default".into(),
        zone: None,
    };
    let s = Snapshot::build(1, "t".into(), set, None, &local).expect("builds");
    let echo = s.service("default", "echo").expect("echo");
    assert_eq!(&*echo.rules[0].name, "httproute/t/0");
    assert_eq!(
        echo.rules[0].timeout,
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(echo.rules[0].backends[0].backend.service, "echo-v1");
}

#[test]
fn a_port_scoped_gateway_api_route_leaves_other_ports_to_the_default_rule() {
    let set = trellis_api::parse_documents(
        "t.yaml",
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {ports: [{port: 80}, {port: 9090}]}\n---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: echo-v1}\nspec: {ports: [{port: 80}]}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: t}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 9090}]\n  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]\n",
    )
    .expect("valid");
    let local = LocalIdentity {
        service: "caller".into(),
        namespace: "default".into(),
        zone: None,
    };
    let s = Snapshot::build(1, "t".into(), set, None, &local).expect("builds");
    let echo = s.service("default", "echo").expect("echo");
    let names: Vec<&str> = echo.rules.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["httproute/t/0", "default"]);
    let first = Some(80);
    assert!(echo.rules[0].serves_port(Some(9090), first));
    assert!(
        !echo.rules[0].serves_port(None, first),
        "the first port is 80"
    );
    assert!(echo.rules[1].serves_port(None, first));
    assert!(
        !echo.rules[1].serves_port(Some(9090), first),
        "on the route's port, no match is a 404"
    );
}
