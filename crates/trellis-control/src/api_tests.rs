//! The API's authentication and its handling of the CA kinds, against an embedded store.
use crate::api::{router, ApiState};
use crate::ca::MeshCa;
use crate::model;
use crate::test_support::{open_store, TempDir};
use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const TOKEN: &str = "unit-test-token";

struct Api {
    router: axum::Router,
    _dir: TempDir,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self._tasks.iter().for_each(|t| t.abort());
    }
}

impl Api {
    async fn new() -> Self {
        Self::build(false).await
    }

    /// With the VIP allocator running, as `trellis control` has it.
    async fn with_vips() -> Self {
        Self::build(true).await
    }

    async fn build(vips: bool) -> Self {
        let dir = TempDir::new("api");
        let store = open_store(&dir).await;
        let model = model::follow(store.clone());
        let mut tasks = Vec::new();
        if vips {
            tasks.push(crate::vip::spawn(store.clone(), model.clone()));
        }
        let ca = MeshCa::start(store.clone(), model.clone(), None, Some(TOKEN))
            .await
            .unwrap();
        let state = Arc::new(ApiState {
            telemetry: None,
            store,
            model,
            lease_ttl: Duration::from_secs(10),
            status: None,
            ca,
            max_apply_documents: None,
        });
        Self {
            router: router(state),
            _dir: dir,
            _tasks: tasks,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        self.call_with(method, path, token, &[], body).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let rsp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = rsp.status().as_u16();
        let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }

    async fn ok(&self, method: &str, path: &str, body: &str) -> Value {
        let (status, v) = self.call(method, path, Some(TOKEN), body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }
}

#[tokio::test]
async fn every_route_but_health_needs_the_token() {
    let api = Api::new().await;
    assert_eq!(api.call("GET", "/api/v1/health", None, "").await.0, 200);
    for (method, path) in [
        ("GET", "/api/v1/resources"),
        ("GET", "/api/v1/ca"),
        ("POST", "/api/v1/ca/roots"),
        ("POST", "/api/v1/certificates"),
        ("POST", "/api/v1/apply"),
        ("GET", "/api/v1/proxies"),
    ] {
        let (status, v) = api.call(method, path, None, "").await;
        assert_eq!(status, 401, "{method} {path}");
        assert!(v["error"].as_str().unwrap().contains("missing"), "{v}");
        assert_eq!(v["details"], serde_json::json!([]));
        let (status, v) = api.call(method, path, Some("wrong-token"), "").await;
        assert_eq!(status, 401, "{method} {path}");
        assert!(!v.to_string().contains("wrong-token"), "never echoed: {v}");
    }
    api.ok("GET", "/api/v1/resources", "").await;
}

#[tokio::test]
async fn ca_kinds_are_managed_and_the_ca_is_never_shown() {
    let api = Api::new().await;
    let items = api.ok("GET", "/api/v1/resources", "").await;
    let kinds: Vec<&str> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"TrustBundle"), "{kinds:?}");
    assert!(!kinds.contains(&"CertificateAuthority"), "{kinds:?}");
    assert!(!items.to_string().contains("PRIVATE KEY"));
    for kind in ["CertificateAuthority", "ca", "certificateauthorities"] {
        let v = api
            .ok("GET", &format!("/api/v1/resources?kind={kind}"), "")
            .await;
        assert_eq!(v["items"], serde_json::json!([]), "{kind}");
        let (status, v) = api
            .call(
                "GET",
                &format!("/api/v1/resources/{kind}/default/mesh"),
                Some(TOKEN),
                "",
            )
            .await;
        assert_eq!(status, 404, "{v}");
    }
    api.ok("GET", "/api/v1/resources/TrustBundle/default/mesh", "")
        .await;

    let bundle = "apiVersion: trellis.dev/v1\nkind: TrustBundle\nmetadata: {name: mesh}\nspec:\n  trustDomain: cluster.local\n  roots: [\"-----BEGIN CERTIFICATE-----\\nAA==\\n-----END CERTIFICATE-----\\n\"]\n";
    let (status, v) = api.call("POST", "/api/v1/apply", Some(TOKEN), bundle).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("kind TrustBundle is managed by the control plane"),
        "{v}"
    );
    for method in ["PUT", "DELETE"] {
        let (status, v) = api
            .call(
                method,
                "/api/v1/resources/CertificateAuthority/default/mesh",
                Some(TOKEN),
                bundle,
            )
            .await;
        assert_eq!(status, 400, "{method}: {v}");
        assert!(v["error"].as_str().unwrap().contains("trellis ca"), "{v}");
    }
}

#[tokio::test]
async fn certificates_and_rotation_over_the_api() {
    let api = Api::new().await;
    let key = trellis_identity::WorkloadKey::generate().unwrap();
    let wish = trellis_identity::SpiffeId::new("cluster.local", "default", "admin").unwrap();
    let csr = key.csr_pem(&wish).unwrap();
    let body = serde_json::json!({"csr": csr, "namespace": "shop", "service": "web"}).to_string();
    let v = api.ok("POST", "/api/v1/certificates", &body).await;
    assert_eq!(v["spiffeId"], "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(v["trustDomain"], "cluster.local");
    assert!(v["certChainPem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(v["trustBundlePem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    for field in ["notBefore", "notAfter", "serial"] {
        assert!(!v[field].is_null(), "{field}: {v}");
    }

    for (body, needle) in [
        (
            serde_json::json!({"csr": csr, "namespace": "Shop", "service": "web"}),
            "namespace",
        ),
        (
            serde_json::json!({"csr": csr, "service": "web_1"}),
            "service",
        ),
        (serde_json::json!({"csr": "junk", "service": "web"}), "CSR"),
        (serde_json::json!({"service": "web"}), "csr"),
    ] {
        let (status, v) = api
            .call(
                "POST",
                "/api/v1/certificates",
                Some(TOKEN),
                &body.to_string(),
            )
            .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
    }

    let ca = api.ok("GET", "/api/v1/ca", "").await;
    let old = ca["active"].as_str().unwrap().to_string();
    assert_eq!(ca["signers"].as_array().unwrap().len(), 1);
    assert!(!ca.to_string().contains("PRIVATE KEY"));
    let new = api.ok("POST", "/api/v1/ca/roots", "").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, v) = api
        .call(
            "DELETE",
            &format!("/api/v1/ca/roots/{old}"),
            Some(TOKEN),
            "",
        )
        .await;
    assert_eq!(status, 409, "retiring the active signer: {v}");
    let (status, _) = api
        .call("POST", "/api/v1/ca/roots/nope/activate", Some(TOKEN), "")
        .await;
    assert_eq!(status, 404);
    let v = api
        .ok("POST", &format!("/api/v1/ca/roots/{new}/activate"), "")
        .await;
    assert_eq!(v["active"], new.as_str());
    let v = api
        .ok("DELETE", &format!("/api/v1/ca/roots/{old}"), "")
        .await;
    assert_eq!(v["signers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn registration_sets_the_granted_identity() {
    let api = Api::new().await;
    let body = serde_json::json!({
        "workload": {
            "apiVersion": "trellis.dev/v1",
            "kind": "Workload",
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {
                "service": "web",
                "address": "127.0.0.1",
                "port": 8080,
                "identity": "spiffe://cluster.local/ns/default/sa/admin"
            }
        }
    })
    .to_string();
    api.ok("POST", "/api/v1/workloads", &body).await;
    let w = api
        .ok("GET", "/api/v1/resources/Workload/shop/web-0", "")
        .await;
    assert_eq!(
        w["spec"]["identity"], "spiffe://cluster.local/ns/shop/sa/web",
        "{w}"
    );
}

#[tokio::test]
async fn state_changes_a_browser_could_send_are_refused_even_with_the_token() {
    let api = Api::new().await;
    let doc = "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80, protocol: http}]}\n";
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let mut req =
            http::Request::post("/api/v1/apply").header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let router = api.router.clone();
        async move {
            let rsp = router
                .oneshot(req.body(Body::from(doc)).unwrap())
                .await
                .unwrap();
            let status = rsp.status().as_u16();
            let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    for headers in [
        &[("origin", "http://evil.example")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("content-type", "text/plain")][..],
        &[("content-type", "application/x-www-form-urlencoded")][..],
    ] {
        let (status, body) = send(headers).await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert!(body.contains("refused"), "{body}");
    }
    let web = "/api/v1/resources/Service/default/web";
    let (status, v) = api.call("GET", web, Some(TOKEN), "").await;
    assert_eq!(status, 404, "nothing was written: {v}");
    // The CLI's way: JSON or no content type, no browser headers. A read with an Origin is fine.
    let (status, body) = send(&[("content-type", "application/json")]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(&[]).await;
    assert_eq!(status, 200, "{body}");
    api.ok("GET", web, "").await;
}

/// The resources the store holds of the kinds users write (the CA kinds left out).
async fn user_resources(api: &Api) -> Vec<String> {
    let items = api.ok("GET", "/api/v1/resources", "").await;
    items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap().to_string())
        .filter(|k| !trellis_api::parse::MANAGED_KINDS.contains(&k.as_str()))
        .collect()
}

#[tokio::test]
async fn apply_reports_the_implicit_deny_of_allow_lists() {
    let api = Api::new().await;
    let body = "apiVersion: trellis.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: reviews-policy}\nspec:\n  service: reviews\n  rules: [{action: Allow, from: {namespaces: [default]}}]\n---\napiVersion: trellis.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: explicit}\nspec:\n  service: reviews\n  defaultAction: Deny\n  rules: [{action: Allow, from: {namespaces: [default]}}]\n";
    let v = api.ok("POST", "/api/v1/apply", body).await;
    assert_eq!(
        v["notices"],
        serde_json::json!([
            "AuthorizationPolicy default/reviews-policy: no defaultAction and it has ALLOW rules, so requests no rule allows are denied (set defaultAction: Allow to allow them)"
        ])
    );
    // Stored as written: no defaultAction.
    let p = api
        .ok(
            "GET",
            "/api/v1/resources/AuthorizationPolicy/default/reviews-policy",
            "",
        )
        .await;
    assert!(p["spec"].get("defaultAction").is_none(), "{p}");
    let v = api.ok("POST", "/api/v1/apply", "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n").await;
    assert_eq!(v["notices"], serde_json::json!([]));
}

#[tokio::test]
async fn bodies_past_a_limit_are_refused_and_nothing_is_stored() {
    let api = Api::new().await;
    let service = "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: first}\nspec: {ports: [{port: 80}]}\n---\n";
    for (body, limit) in [
        (format!("{service}{}", "[".repeat(100_000)), "max-depth"),
        (format!("{service}{}", "{a: ".repeat(100_000)), "max-depth"),
        ("---\n".repeat(100_000), "max-documents"),
    ] {
        let (status, v) = api.call("POST", "/api/v1/apply", Some(TOKEN), &body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["limit"], limit, "{v}");
        assert!(v["error"].as_str().unwrap().contains(limit), "{v}");
        assert!(
            v["details"][0].as_str().unwrap().starts_with("request"),
            "{v}"
        );
        let (status, v) = api
            .call(
                "PUT",
                "/api/v1/resources/Service/default/first",
                Some(TOKEN),
                &body,
            )
            .await;
        assert_eq!((status, v["limit"].as_str()), (400, Some(limit)), "{v}");
    }
    assert!(user_resources(&api).await.is_empty());

    // The body limit is the parser's source limit, explicitly: past it, 413...
    let huge = "#".repeat(trellis_api::limits::MAX_SOURCE_BYTES + 1);
    let (status, v) = api.call("POST", "/api/v1/apply", Some(TOKEN), &huge).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["limit"], "max-source-bytes", "{v}");
    // ... while a manifest larger than axum's 2 MB default is read.
    let padded = format!(
        "{}{service}",
        format!("# {}\n", "x".repeat(1000)).repeat(3000)
    );
    assert!(padded.len() > 2_500_000);
    api.ok("POST", "/api/v1/apply", &padded).await;
    assert_eq!(user_resources(&api).await, ["Service"]);
    // Other routes read at most MAX_BODY_BYTES.
    let big = format!(
        "{{\"workload\": {{}}, \"pad\": \"{}\"}}",
        "x".repeat(crate::api::MAX_BODY_BYTES)
    );
    let (status, v) = api
        .call("POST", "/api/v1/workloads", Some(TOKEN), &big)
        .await;
    assert_eq!(status, 413, "{v}");
}

fn service_doc(name: &str, port: u16, version: Option<&str>) -> String {
    let version = version.map_or(String::new(), |v| format!(", resourceVersion: \"{v}\""));
    format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: {name}{version}}}\nspec: {{ports: [{{port: {port}}}]}}\n"
    )
}

#[tokio::test]
async fn an_apply_is_all_or_nothing_at_one_revision() {
    let api = Api::new().await;
    let first = api
        .ok("POST", "/api/v1/apply", &service_doc("a", 80, None))
        .await;
    let version = first["results"][0]["version"].as_u64().unwrap();
    let before = user_resources(&api).await;
    // A stale resourceVersion on the last document refuses the documents before it too.
    let stale = (version + 100).to_string();
    let body = format!(
        "{}---\n{}---\n{}",
        service_doc("b", 80, None),
        service_doc("c", 80, None),
        service_doc("a", 81, Some(&stale))
    );
    let (status, v) = api.call("POST", "/api/v1/apply", Some(TOKEN), &body).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(
        user_resources(&api).await,
        before,
        "a refused apply wrote something"
    );
    // The same key twice: refused, nothing written.
    let body = format!(
        "{}---\n{}",
        service_doc("d", 80, None),
        service_doc("d", 81, None)
    );
    let (status, v) = api.call("POST", "/api/v1/apply", Some(TOKEN), &body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(user_resources(&api).await, before);
    // A good one: every written document at the answer's revision.
    let body = format!(
        "{}---\n{}---\n{}",
        service_doc("b", 80, None),
        service_doc("c", 80, None),
        service_doc("a", 81, Some(&version.to_string()))
    );
    let v = api.ok("POST", "/api/v1/apply", &body).await;
    let revision = v["revision"].as_u64().unwrap();
    assert_eq!(v["replayed"], false);
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["version"].as_u64(), Some(revision), "{v}");
    }
}

#[tokio::test]
async fn an_apply_sent_twice_with_one_id_is_committed_once() {
    let api = Api::new().await;
    let id = [("trellis-apply-id", "0123456789abcdef0123456789abcdef")];
    let body = format!(
        "{}---\n{}",
        service_doc("a", 80, None),
        service_doc("b", 80, None)
    );
    let (status, first) = api
        .call_with("POST", "/api/v1/apply", Some(TOKEN), &id, &body)
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["replayed"], false);
    // Someone changes `a` in between; the repeated apply must not undo that.
    api.ok("POST", "/api/v1/apply", &service_doc("a", 90, None))
        .await;
    let (status, again) = api
        .call_with("POST", "/api/v1/apply", Some(TOKEN), &id, &body)
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["replayed"], true);
    assert_eq!(again["revision"], first["revision"]);
    assert_eq!(again["results"], first["results"]);
    let a = api
        .ok("GET", "/api/v1/resources/Service/default/a", "")
        .await;
    assert_eq!(
        a["spec"]["ports"][0]["port"], 90,
        "the replay wrote again: {a}"
    );
    for bad in ["", "has space", &"x".repeat(65)] {
        let (status, v) = api
            .call_with(
                "POST",
                "/api/v1/apply",
                Some(TOKEN),
                &[("trellis-apply-id", bad)],
                &body,
            )
            .await;
        assert_eq!(status, 400, "{bad:?}: {v}");
    }
}

/// Polls `path` until `done` holds for (status, body); bounded to about 2 s.
async fn eventually(api: &Api, path: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let mut last = (0, Value::Null);
    for _ in 0..100 {
        last = api.call("GET", path, Some(TOKEN), "").await;
        if done(last.0, &last.1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last
}

#[tokio::test]
async fn services_get_a_stable_vip_that_users_cannot_write_and_that_goes_with_the_service() {
    let api = Api::with_vips().await;
    let svc = |port: u16| {
        format!("apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: ratings, namespace: shop}}\nspec: {{ports: [{{port: {port}}}]}}\n")
    };
    api.ok("POST", "/api/v1/apply", &svc(9080)).await;
    let path = "/api/v1/resources/ServiceAddress/shop/ratings";
    let (status, v) = eventually(&api, path, |s, _| s == 200).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["spec"]["address"], "240.240.0.1", "{v}");
    let version = v["metadata"]["resourceVersion"].clone();
    // Listed with the other kinds (what `trellis get` shows).
    let listed = api
        .ok("GET", "/api/v1/resources?kind=ServiceAddress", "")
        .await;
    assert_eq!(
        listed["items"][0]["metadata"]["name"], "ratings",
        "{listed}"
    );
    for spelling in ["serviceaddresses", "serviceaddress", "sa"] {
        let v = api
            .ok("GET", &format!("/api/v1/resources?kind={spelling}"), "")
            .await;
        assert_eq!(v["items"][0]["kind"], "ServiceAddress", "{spelling}: {v}");
    }

    // A user's re-apply of the Service (another port) is not refused and moves nothing.
    let v = api.ok("POST", "/api/v1/apply", &svc(9081)).await;
    assert!(!v.to_string().contains("conflict"), "{v}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = api.ok("GET", path, "").await;
    assert_eq!(again["spec"]["address"], "240.240.0.1");
    assert_eq!(
        again["metadata"]["resourceVersion"], version,
        "not rewritten"
    );

    // Users cannot write or delete one.
    let forged = "apiVersion: trellis.dev/v1\nkind: ServiceAddress\nmetadata: {name: ratings, namespace: shop}\nspec: {address: 240.240.0.9}\n";
    let (status, v) = api.call("POST", "/api/v1/apply", Some(TOKEN), forged).await;
    assert_eq!(status, 400, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("kind ServiceAddress is managed by the control plane"),
        "{v}"
    );
    assert!(error.contains("spec.serviceAddressRange"), "{v}");
    let (status, _) = api.call("DELETE", path, Some(TOKEN), "").await;
    assert_eq!(status, 400);

    // Deleting the Service releases its address.
    api.ok("DELETE", "/api/v1/resources/Service/shop/ratings", "")
        .await;
    let (status, v) = eventually(&api, path, |s, _| s == 404).await;
    assert_eq!(status, 404, "released: {v}");
}
