//! Gateway API routes (GAMMA: an HTTPRoute/GRPCRoute whose parent is a Service) end to end: a
//! real control plane, real sidecars registering real demo apps, and a caller sidecar steered
//! by the control plane. Each test re-expresses cases of the Gateway API conformance suite
//! (kubernetes-sigs/gateway-api, `conformance/tests/...`, named above each test) and asserts
//! from the protected side: what the app that answered saw (the demo app echoes its service
//! name, path and headers), or what the caller got back when the sidecar answers itself.
//!
//! Services: `echo`, `echo-v1`, `echo-v2`, one instance each (the conformance suite's mesh
//! apps). Every wait is bounded; every process is stopped by PID when its test ends.
mod common;

use common::mesh::*;
use common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Mesh {
    dir: PathBuf,
    url: String,
    _cp: Proc,
    instances: Vec<(String, Proc, Proc, SocketAddr)>,
    caller: Caller,
}

fn services(protocol: &str) -> String {
    ["echo", "echo-v1", "echo-v2"]
        .iter()
        .map(|s| service(s, protocol))
        .collect()
}

/// A demo app of `service` and its sidecar, registering with the control plane.
fn instance_of(dir: &std::path::Path, url: &str, svc: &str) -> (String, Proc, Proc, SocketAddr) {
    let p = Ports::free();
    let app = Proc::spawn(
        dir,
        &format!("{svc}-app"),
        &[
            "demo-app".into(),
            format!("--listen={}", p.app),
            format!("--name={svc}"),
            format!("--version={svc}"),
            format!("--instance={svc}-0"),
        ],
    );
    let sidecar = Proc::spawn(
        dir,
        &format!("{svc}-proxy"),
        &[
            "proxy".into(),
            format!("--control={url}"),
            format!("--node-id={svc}-0"),
            format!("--service={svc}"),
            "--outbound=off".into(),
            format!("--inbound={}", p.inbound),
            format!("--app={}", p.app),
            format!("--admin={}", p.admin),
            "--lease-ttl=5s".into(),
        ],
    );
    (svc.to_string(), app, sidecar, p.admin)
}

async fn mesh(tag: &str, protocol: &str) -> Mesh {
    let dir = tempdir(tag);
    let cp_addr = free_addr();
    let url = format!("http://{cp_addr}");
    let cp = mesh_control(&dir, cp_addr);
    wait_api(cp_addr).await;
    apply(&url, &dir, &services(protocol));
    let instances: Vec<_> = ["echo", "echo-v1", "echo-v2"]
        .iter()
        .map(|s| instance_of(&dir, &url, s))
        .collect();
    let caller = caller(&dir, &url);
    for (_, _, _, admin) in &instances {
        wait_ready(*admin).await;
    }
    wait_ready(caller.admin).await;
    for s in ["echo", "echo-v1", "echo-v2"] {
        wait_for_workload(caller.admin, s).await;
    }
    // Each service answers through the caller before a test starts (bounded).
    if protocol == "http" {
        for s in ["echo", "echo-v1", "echo-v2"] {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let a = get(&http1(), caller.outbound, Some(s), "/", &[]).await;
                if a.status == 200 {
                    break;
                }
                assert!(Instant::now() < deadline, "{s} never answered: {}", a.body);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Mesh {
        dir,
        url,
        _cp: cp,
        instances,
        caller,
    }
}

fn mesh_control(dir: &std::path::Path, addr: SocketAddr) -> Proc {
    control(dir, "control", addr, "embedded")
}

impl Mesh {
    /// `trellis ARGS` against the control plane: (success, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .env("TRELLIS_TOKEN", TOKEN)
            .env("TRELLIS_CONTROL", &self.url)
            .args(args)
            .output()
            .expect("run trellis");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Applies `text` and waits (bounded) until the caller holds `kind/name` of it; returns
    /// what `trellis apply` printed.
    async fn apply_and_wait(&self, text: &str, kind: &str, name: &str) -> String {
        let file = self
            .dir
            .join(format!("apply-{}.yaml", rand::random::<u32>()));
        std::fs::write(&file, text).expect("write manifest");
        let (ok, out, err) = self.ctl(&["apply", "-f", file.to_str().unwrap_or_default()]);
        assert!(ok, "apply failed: {err}");
        self.wait_holds(kind, name, true).await;
        // Notices go to standard error.
        format!("{out}{err}")
    }

    async fn wait_holds(&self, kind: &str, name: &str, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let config = config_of(self.caller.admin).await;
            let holds = config["resources"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["kind"] == kind && r["metadata"]["name"] == name)
            });
            if holds == present {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the caller never {} {kind} {name}",
            if present { "got" } else { "dropped" }
        );
    }

    /// `GET path` to `Host: host` through the caller's sidecar.
    async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        get(&http1(), self.caller.outbound, Some(host), path, headers).await
    }

    /// Requests the app of `svc` has been sent through its sidecar so far.
    async fn served(&self, svc: &str) -> f64 {
        counter(
            self.admin_of(svc),
            "trellis_requests_total",
            &[("direction", "inbound")],
        )
        .await
    }

    fn admin_of(&self, svc: &str) -> SocketAddr {
        self.instances
            .iter()
            .find(|(s, ..)| s == svc)
            .map(|(_, _, _, a)| *a)
            .unwrap_or_else(|| panic!("no instance of {svc}"))
    }
}

/// The service whose app answered (the demo app's JSON `service`).
#[track_caller]
fn backend(a: &Answer) -> String {
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["service"].as_str().unwrap_or_default().to_string()
}

fn http_route(name: &str, parent: &str, rules: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: {parent}, port: 80}}]
  rules:
{rules}"
    )
}

// conformance/tests/mesh/mesh-basic.go (no route: the service itself answers) and
// conformance/tests/mesh/mesh-split.yaml (Exact /v1 → echo-v1, Exact /v2 → echo-v2).
#[tokio::test]
async fn mesh_basic_and_mesh_split() {
    let m = mesh("gw-split", "http").await;
    assert_eq!(backend(&m.get("echo", "/v1", &[]).await), "echo");
    let route = http_route(
        "mesh-split",
        "echo",
        "  - matches: [{path: {type: Exact, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 80}]
",
    );
    m.apply_and_wait(&route, "HTTPRoute", "mesh-split").await;
    assert_eq!(backend(&m.get("echo", "/v1", &[]).await), "echo-v1");
    assert_eq!(backend(&m.get("echo", "/v2", &[]).await), "echo-v2");
    // No rule matches anything else: the sidecar says so (Gateway API: 404).
    let a = m.get("echo", "/other", &[]).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.header("trellis-error"), Some("no-route"));
    // Deleting the route gives the service back its own default rule.
    let (ok, _, err) = m.ctl(&["delete", "httproute", "mesh-split"]);
    assert!(ok, "{err}");
    m.wait_holds("HTTPRoute", "mesh-split", false).await;
    assert_eq!(backend(&m.get("echo", "/v1", &[]).await), "echo");
}

// conformance/tests/mesh/httproute-weight.yaml (70/30 across echo-v1 and echo-v2), and
// conformance/tests/mesh/mesh-ports.yaml (a ResponseHeaderModifier per parent service).
#[tokio::test]
async fn mesh_weighted_backends_and_mesh_ports() {
    let m = mesh("gw-weight", "http").await;
    let route = http_route(
        "mesh-weighted-backends",
        "echo",
        "  - backendRefs:
    - {name: echo-v1, port: 80, weight: 70}
    - {name: echo-v2, port: 80, weight: 30}
",
    );
    m.apply_and_wait(&route, "HTTPRoute", "mesh-weighted-backends")
        .await;
    let n = 400;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        *seen
            .entry(backend(&m.get("echo", "/", &[]).await))
            .or_default() += 1;
    }
    let v2 = *seen.get("echo-v2").unwrap_or(&0) as f64 / n as f64;
    println!("70/30 over {n}: {seen:?}");
    assert_eq!(seen.get("echo").copied().unwrap_or(0), 0, "{seen:?}");
    // Binomial(400, 0.3): sd ≈ 0.023; ±5 sd.
    assert!(
        (0.185..=0.415).contains(&v2),
        "echo-v2 share {v2}: {seen:?}"
    );

    let ports = format!(
        "{}{}",
        http_route(
            "mesh-split-v1",
            "echo-v1",
            "  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}
    backendRefs: [{name: echo-v1, port: 80}]
"
        ),
        http_route(
            "mesh-split-v2",
            "echo-v2",
            "  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}
    backendRefs: [{name: echo-v2, port: 80}]
"
        )
    );
    m.apply_and_wait(&ports, "HTTPRoute", "mesh-split-v2").await;
    m.wait_holds("HTTPRoute", "mesh-split-v1", true).await;
    for svc in ["echo-v1", "echo-v2"] {
        let a = m.get(svc, "/", &[]).await;
        assert_eq!(backend(&a), svc);
        assert_eq!(a.header("x-header-set"), Some(&svc[5..]), "{:?}", a.headers);
    }
}

// conformance/tests/mesh/httproute-matching.yaml, conformance/tests/mesh/
// httproute-query-param-matching.yaml and conformance/tests/httproute-matching-across-routes.yaml
// (precedence across two routes of one parent).
#[tokio::test]
async fn mesh_httproute_matching_query_params_and_across_routes() {
    let m = mesh("gw-match", "http").await;
    let matching = http_route(
        "mesh-matching",
        "echo",
        "  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 80}]
",
    );
    m.apply_and_wait(&matching, "HTTPRoute", "mesh-matching")
        .await;
    for (path, headers, want) in [
        ("/", vec![], "echo-v1"),
        ("/example", vec![], "echo-v1"),
        ("/", vec![("Version", "one")], "echo-v1"),
        ("/v2", vec![], "echo-v2"),
        ("/v2/example", vec![], "echo-v2"),
        ("/", vec![("Version", "two")], "echo-v2"),
    ] {
        let a = m.get("echo", path, &headers).await;
        assert_eq!(backend(&a), want, "{path} {headers:?}");
        assert_eq!(a.json()["path"], path);
    }
    let (ok, _, err) = m.ctl(&["delete", "httproute", "mesh-matching"]);
    assert!(ok, "{err}");
    m.wait_holds("HTTPRoute", "mesh-matching", false).await;

    let query = http_route(
        "mesh-query-param-matching",
        "echo",
        "  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{queryParams: [{name: animal, value: dolphin}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{queryParams: [{name: ANIMAL, value: Whale}]}]
    backendRefs: [{name: echo, port: 80}]
",
    );
    m.apply_and_wait(&query, "HTTPRoute", "mesh-query-param-matching")
        .await;
    for (path, want) in [
        ("/?animal=whale", "echo-v1"),
        ("/?animal=dolphin", "echo-v2"),
        // More query matches first, whatever the rule order.
        ("/?animal=dolphin&color=blue", "echo"),
        ("/?ANIMAL=Whale", "echo"),
    ] {
        assert_eq!(backend(&m.get("echo", path, &[]).await), want, "{path}");
    }
    let a = m.get("echo", "/?animal=shark", &[]).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let (ok, _, err) = m.ctl(&["delete", "httproute", "mesh-query-param-matching"]);
    assert!(ok, "{err}");
    m.wait_holds("HTTPRoute", "mesh-query-param-matching", false)
        .await;

    // Two routes, one parent: the longer prefix of the second route wins over the first
    // route's `/`, and a header match beats a bare `/` across routes.
    let across = format!(
        "{}{}",
        http_route(
            "matching-part1",
            "echo",
            "  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 80}]
"
        ),
        http_route(
            "matching-part2",
            "echo",
            "  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 80}]
"
        )
    );
    m.apply_and_wait(&across, "HTTPRoute", "matching-part2")
        .await;
    m.wait_holds("HTTPRoute", "matching-part1", true).await;
    for (path, headers, want) in [
        ("/", vec![], "echo-v1"),
        ("/example", vec![], "echo-v1"),
        ("/v2", vec![], "echo-v2"),
        ("/v2/example", vec![], "echo-v2"),
        ("/", vec![("Version", "two")], "echo-v2"),
        ("/v2", vec![("Version", "one")], "echo-v2"),
    ] {
        assert_eq!(
            backend(&m.get("echo", path, &headers).await),
            want,
            "{path} {headers:?}"
        );
    }
}

// conformance/tests/mesh/httproute-redirect-port.yaml, httproute-redirect-host-and-status.yaml,
// httproute-redirect-path.yaml, httproute-redirect-scheme.yaml, httproute-303-redirect.yaml,
// httproute-307-redirect.yaml and httproute-308-redirect.yaml (all under conformance/tests/mesh/).
#[tokio::test]
async fn mesh_httproute_redirects() {
    let m = mesh("gw-redirect", "http").await;
    let route = http_route(
        "mesh-redirect",
        "echo",
        "  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-port}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443}}]
  - matches: [{path: {type: PathPrefix, value: /s303}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303, path: {type: ReplaceFullPath, replaceFullPath: /see-other}}}]
  - matches: [{path: {type: PathPrefix, value: /s307}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]
  - matches: [{path: {type: PathPrefix, value: /s308}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308, hostname: example.org}}]
",
    );
    m.apply_and_wait(&route, "HTTPRoute", "mesh-redirect").await;
    let mut before = HashMap::new();
    for svc in ["echo", "echo-v1", "echo-v2"] {
        before.insert(svc, m.served(svc).await);
    }
    for (host, path, status, location) in [
        ("echo", "/port", 302, "http://echo:8083/port"),
        (
            "echo",
            "/port-and-host",
            302,
            "http://example.org:8083/port-and-host",
        ),
        (
            "echo",
            "/port-and-status",
            301,
            "http://echo:8083/port-and-status",
        ),
        (
            "echo:80",
            "/hostname-redirect",
            302,
            "http://example.org/hostname-redirect",
        ),
        (
            "echo",
            "/host-and-status",
            301,
            "http://example.org/host-and-status",
        ),
        (
            "echo",
            "/original-prefix/lemon?x=1",
            302,
            "http://echo/replacement-prefix/lemon?x=1",
        ),
        (
            "echo",
            "/full/path/original",
            302,
            "http://echo/full-path-replacement",
        ),
        ("echo", "/scheme", 302, "https://echo/scheme"),
        (
            "echo:80",
            "/scheme-and-port",
            302,
            "https://echo:8443/scheme-and-port",
        ),
        ("echo", "/s303", 303, "http://echo/see-other"),
        ("echo", "/s307", 307, "http://echo/s307"),
        ("echo", "/s308", 308, "http://example.org/s308"),
    ] {
        let a = m.get(host, path, &[]).await;
        assert_eq!(a.status, status, "{path}: {}", a.body);
        assert_eq!(a.header("location"), Some(location), "{path}");
    }
    // The sidecar answered itself: no app saw a request.
    for svc in ["echo", "echo-v1", "echo-v2"] {
        assert_eq!(m.served(svc).await, before[svc], "{svc} was called");
    }
}

// conformance/tests/mesh/httproute-rewrite-path.yaml and
// conformance/tests/mesh/httproute-request-header-modifier.yaml.
#[tokio::test]
async fn mesh_httproute_rewrite_path_and_request_header_modifier() {
    let m = mesh("gw-rewrite", "http").await;
    let route = http_route(
        "mesh-rewrite-path",
        "echo",
        "  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add-Append, value: append}], remove: [X-Header-Remove]}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /set}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /add}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /remove}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {remove: [X-Header-Remove]}
    backendRefs: [{name: echo-v2, port: 80}]
",
    );
    m.apply_and_wait(&route, "HTTPRoute", "mesh-rewrite-path")
        .await;
    for (path, want) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/full/one/two?q=1", "/one?q=1"),
    ] {
        let a = m.get("echo", path, &[]).await;
        assert_eq!(backend(&a), "echo-v1");
        assert_eq!(a.json()["path"], want, "{path}");
    }
    let a = m
        .get(
            "echo",
            "/full/rewrite-path-and-modify-headers/x",
            &[("X-Header-Set", "original"), ("X-Header-Remove", "gone")],
        )
        .await;
    assert_eq!(backend(&a), "echo-v1");
    let j = a.json();
    assert_eq!(j["path"], "/test");
    assert_eq!(j["headers"]["x-header-set"], "set-overwrites-values");
    assert_eq!(j["headers"]["x-header-add-append"], "append");
    assert!(j["headers"].get("x-header-remove").is_none(), "{j}");

    let a = m
        .get("echo", "/set", &[("X-Header-Set", "some-other-value")])
        .await;
    assert_eq!(backend(&a), "echo-v2");
    assert_eq!(a.json()["headers"]["x-header-set"], "set-overwrites-values");
    let a = m
        .get("echo", "/add", &[("X-Header-Add", "some-other-value")])
        .await;
    let added = a.json()["headers"]["x-header-add"].to_string();
    assert!(
        added.contains("some-other-value") && added.contains("add-appends-values"),
        "{added}"
    );
    let a = m
        .get("echo", "/remove", &[("X-Header-Remove", "val")])
        .await;
    assert!(
        a.json()["headers"].get("x-header-remove").is_none(),
        "{}",
        a.body
    );
}

// conformance/tests/httproute-invalid-backendref-unknown-kind.yaml and
// conformance/tests/httproute-invalid-nonexistent-backendref.yaml: a rule with no valid
// backendRef answers 500, and ResolvedRefs is False with the spec's reason.
#[tokio::test]
async fn invalid_backend_refs_answer_500_and_status_says_why() {
    let m = mesh("gw-invalid", "http").await;
    let route = http_route(
        "invalid-backend-ref",
        "echo",
        "  - matches: [{path: {type: PathPrefix, value: /unknown-kind}}]
    backendRefs: [{group: unknownkind.example.com, kind: NonExistent, name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /nonexistent}}]
    backendRefs: [{name: nonexistent, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /fine}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /half}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: nonexistent, port: 80, weight: 1}]
",
    );
    m.apply_and_wait(&route, "HTTPRoute", "invalid-backend-ref")
        .await;
    let mut before = HashMap::new();
    for svc in ["echo", "echo-v2"] {
        before.insert(svc, m.served(svc).await);
    }
    for path in ["/unknown-kind", "/nonexistent"] {
        let a = m.get("echo", path, &[]).await;
        assert_eq!(a.status, 500, "{path}: {}", a.body);
    }
    assert_eq!(backend(&m.get("echo", "/fine", &[]).await), "echo-v1");
    // Half the weight is an invalid backend: about half the requests answer 500 (the spec:
    // the invalid backend's share), the rest reach echo-v1.
    let n = 200;
    let mut failed = 0;
    for _ in 0..n {
        let a = m.get("echo", "/half", &[]).await;
        match a.status {
            500 => failed += 1,
            _ => assert_eq!(backend(&a), "echo-v1"),
        }
    }
    // Binomial(200, 0.5): sd ≈ 0.035; ±5 sd.
    let share = failed as f64 / n as f64;
    assert!((0.32..=0.68).contains(&share), "500 share {share}");
    for svc in ["echo", "echo-v2"] {
        assert_eq!(m.served(svc).await, before[svc], "{svc} was called");
    }
    let (ok, out, err) = m.ctl(&["get", "httproute", "invalid-backend-ref", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let conditions = &v["status"]["parents"][0]["conditions"];
    let cond = |t: &str| {
        conditions
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .cloned()
            .unwrap_or_else(|| panic!("no {t} in {v}"))
    };
    assert_eq!(cond("Accepted")["status"], "True", "{v}");
    assert_eq!(cond("ResolvedRefs")["status"], "False", "{v}");
    assert_eq!(cond("ResolvedRefs")["reason"], "InvalidKind", "{v}");
    assert_eq!(v["status"]["parents"][0]["parentRef"]["name"], "echo");

    // Once the missing Service exists, a rule that named only it still answers from the
    // route; the status moves to BackendNotFound-free once every ref resolves.
    let only_missing = http_route(
        "missing-only",
        "echo-v2",
        "  - backendRefs: [{name: nonexistent, port: 80}]
",
    );
    m.apply_and_wait(&only_missing, "HTTPRoute", "missing-only")
        .await;
    assert_eq!(m.get("echo-v2", "/", &[]).await.status, 500);
    let (ok, out, err) = m.ctl(&["get", "httproute", "missing-only", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(out.contains("reason: BackendNotFound"), "{out}");
}

// conformance/tests/httproute-request-mirror.yaml: the request goes to echo-v1 and a copy to
// echo-v2; the mirror's answer is dropped.
#[tokio::test]
async fn httproute_request_mirror_copies_to_the_mirror_backend() {
    let m = mesh("gw-mirror", "http").await;
    let route = http_route(
        "request-mirror",
        "echo",
        "  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 80}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /never}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 80}, percent: 0}
    backendRefs: [{name: echo-v1, port: 80}]
",
    );
    m.apply_and_wait(&route, "HTTPRoute", "request-mirror")
        .await;
    let before = m.served("echo-v2").await;
    for _ in 0..5 {
        assert_eq!(backend(&m.get("echo", "/never", &[]).await), "echo-v1");
    }
    assert_eq!(
        m.served("echo-v2").await,
        before,
        "percent 0 mirrors nothing"
    );
    let n = 5;
    for _ in 0..n {
        assert_eq!(backend(&m.get("echo", "/mirror", &[]).await), "echo-v1");
    }
    // Mirrors are sent beside the request: wait (bounded) until all arrived.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut mirrored = 0.0;
    while Instant::now() < deadline {
        mirrored = m.served("echo-v2").await - before;
        if mirrored >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mirrored, n as f64, "every /mirror request reached echo-v2");
}

// conformance/tests/httproute-timeout-request.yaml and
// conformance/tests/httproute-timeout-backend-request.yaml: a backend slower than the
// timeout is answered 504 by the sidecar; a fast one passes.
#[tokio::test]
async fn httproute_timeouts_answer_504() {
    let m = mesh("gw-timeout", "http").await;
    let route = http_route(
        "request-timeout",
        "echo",
        "  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /backend}}]
    timeouts: {backendRequest: 500ms}
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /delay/3000}}
    backendRefs: [{name: echo-v1, port: 80}]
",
    );
    m.apply_and_wait(&route, "HTTPRoute", "request-timeout")
        .await;
    let a = m.get("echo", "/delay/3000", &[]).await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.header("trellis-error"), Some("timeout"));
    let a = m.get("echo", "/delay/1", &[]).await;
    assert_eq!(backend(&a), "echo-v1");
    let a = m.get("echo", "/backend", &[]).await;
    assert_eq!(a.status, 504, "{}", a.body);
}

// The decided precedence: a Trellis Route for a service wins over an HTTPRoute for it; the
// HTTPRoute's status says Accepted=False naming the Route, and `trellis apply` says so too.
#[tokio::test]
async fn a_trellis_route_wins_over_an_httproute_and_status_says_so() {
    let m = mesh("gw-precedence", "http").await;
    let httproute = http_route(
        "portable",
        "echo",
        "  - backendRefs: [{name: echo-v2, port: 80}]
",
    );
    m.apply_and_wait(&httproute, "HTTPRoute", "portable").await;
    assert_eq!(backend(&m.get("echo", "/", &[]).await), "echo-v2");
    let trellis_route = "---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: echo-canary}
spec:
  service: echo
  rules: [{backends: [{service: echo-v1}]}]
";
    m.apply_and_wait(trellis_route, "Route", "echo-canary")
        .await;
    for _ in 0..10 {
        assert_eq!(backend(&m.get("echo", "/", &[]).await), "echo-v1");
    }
    let (ok, out, err) = m.ctl(&["get", "httproute", "portable", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(out.contains("reason: OverriddenByTrellisRoute"), "{out}");
    assert!(out.contains("echo-canary"), "{out}");
    // Applying the HTTPRoute again prints the notice.
    let printed = m.apply_and_wait(&httproute, "HTTPRoute", "portable").await;
    assert!(
        printed.contains("not applied to service default/echo") && printed.contains("echo-canary"),
        "{printed}"
    );
    // Without the Route, the HTTPRoute steers again.
    let (ok, _, err) = m.ctl(&["delete", "route", "echo-canary"]);
    assert!(ok, "{err}");
    m.wait_holds("Route", "echo-canary", false).await;
    assert_eq!(backend(&m.get("echo", "/", &[]).await), "echo-v2");
    let (_, out, _) = m.ctl(&["get", "httproute", "portable", "-o", "yaml"]);
    assert!(out.contains("reason: Accepted"), "{out}");

    // conformance/tests/mesh/mesh-consumer-route.yaml: a route in the caller's namespace with
    // the producer's Service as parent. Consumer routes are not supported: the status says so
    // and traffic is unchanged.
    let consumer = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: client}
spec:
  parentRefs: [{group: \"\", kind: Service, name: echo, namespace: default, port: 80}]
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
";
    m.apply_and_wait(consumer, "HTTPRoute", "consumer").await;
    assert_eq!(backend(&m.get("echo", "/", &[]).await), "echo-v2");
    let (ok, out, err) = m.ctl(&["get", "httproute", "consumer", "-n", "client", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(out.contains("reason: UnsupportedValue"), "{out}");
}

/// A grpcio unary call through the caller; prints code, the answering app's version (the
/// demo app's `x-demo-version` trailer) and details as JSON.
const GRPC_CLIENT: &str = r#"
import json, sys
import grpc
target, authority, method = sys.argv[1], sys.argv[2], sys.argv[3]
raw = lambda b: b
channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
call = channel.unary_unary(method, request_serializer=raw, response_deserializer=raw)
try:
    reply, rpc = call.with_call(b"\x01", timeout=10)
    out = {"code": "OK", "trailing": dict(rpc.trailing_metadata() or [])}
except grpc.RpcError as e:
    out = {"code": e.code().name, "details": e.details() or "", "trailing": dict(e.trailing_metadata() or [])}
print(json.dumps(out))
"#;

/// `n` grpcio unary calls on one channel; prints the answering versions as a JSON list.
const GRPC_COUNTER: &str = r#"
import json, sys
import grpc
target, authority, method, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
raw = lambda b: b
channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
call = channel.unary_unary(method, request_serializer=raw, response_deserializer=raw)
seen = []
for _ in range(n):
    reply, rpc = call.with_call(b"\x01", timeout=10)
    seen.append(dict(rpc.trailing_metadata() or []).get("x-demo-version", ""))
print(json.dumps(seen))
"#;

fn grpc_versions(m: &Mesh, authority: &str, method: &str, n: usize) -> Vec<String> {
    let script = m.dir.join("grpc_counter.py");
    std::fs::write(&script, GRPC_COUNTER).expect("write client");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            &m.caller.outbound.to_string(),
            authority,
            method,
            &n.to_string(),
        ])
        .output()
        .expect("python3 is not installed: run scripts/test.sh, which installs grpcio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grpcio client failed: {stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text} {stderr}"))
}

fn grpc_call(m: &Mesh, authority: &str, method: &str) -> serde_json::Value {
    let script = m.dir.join("grpc_client.py");
    std::fs::write(&script, GRPC_CLIENT).expect("write client");
    let out = Command::new("python3")
        .arg(&script)
        .args([&m.caller.outbound.to_string(), authority, method])
        .output()
        .expect("python3 is not installed: run scripts/test.sh, which installs grpcio");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grpcio client failed: {stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text} {stderr}"))
}

// conformance/tests/grpcroute-exact-method-matching.yaml (with a Service parent, as
// conformance/tests/mesh/grpcroute-weight.yaml attaches GRPCRoutes): exact service and method
// pick the backend; anything else has no route.
#[tokio::test]
async fn grpcroute_exact_method_matching_and_weight() {
    let m = mesh("gw-grpc", "grpc").await;
    let route = "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: exact-matching}
spec:
  parentRefs: [{group: \"\", kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: grpc.examples.echo.Echo, method: UnaryEcho}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{method: {type: Exact, service: grpc.examples.echo.Echo, method: ServerStreamingEcho}}]
    backendRefs: [{name: echo-v2, port: 80}]
";
    m.apply_and_wait(route, "GRPCRoute", "exact-matching").await;
    let a = grpc_call(&m, "echo", "/grpc.examples.echo.Echo/UnaryEcho");
    assert_eq!(a["code"], "OK", "{a}");
    assert_eq!(a["trailing"]["x-demo-version"], "echo-v1", "{a}");
    let a = grpc_call(&m, "echo", "/grpc.examples.echo.Echo/ServerStreamingEcho");
    assert_eq!(a["code"], "OK", "{a}");
    assert_eq!(a["trailing"]["x-demo-version"], "echo-v2", "{a}");
    let a = grpc_call(&m, "echo", "/grpc.examples.echo.Echo/Other");
    assert_eq!(a["code"], "UNIMPLEMENTED", "{a}");
    let (ok, out, err) = m.ctl(&["get", "grpcroute", "exact-matching", "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("reason: Accepted") && out.contains("reason: ResolvedRefs"),
        "{out}"
    );

    // conformance/tests/mesh/grpcroute-weight.yaml: a GRPCRoute splitting by weight.
    let weighted = "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-weight}
spec:
  parentRefs: [{group: \"\", kind: Service, name: echo-v2}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: echo-v2, port: 80, weight: 1}]
";
    m.apply_and_wait(weighted, "GRPCRoute", "grpc-weight").await;
    let n = 200;
    let seen = grpc_versions(&m, "echo-v2", "/demo.Echo/Say", n);
    assert_eq!(seen.len(), n);
    let v1 = seen.iter().filter(|v| *v == "echo-v1").count();
    let v2 = seen.iter().filter(|v| *v == "echo-v2").count();
    assert_eq!(v1 + v2, n, "{seen:?}");
    // Binomial(200, 0.5): sd ≈ 0.035; ±5 sd.
    let share = v1 as f64 / n as f64;
    assert!((0.32..=0.68).contains(&share), "echo-v1 share {share}");
}
