//! What the dashboard shows of one service: its instances (address, zone, health, identity and
//! the certificate this replica last issued for it, and each instance's proxy: connected, in
//! sync, its last rejected config), the Routes with their split as percentages, and the
//! destination, authorization and authentication policies that name it, as stored.
//!
//! Read from the model and the proxies' status (`GET /api/v1/proxies`'s answer), never from the
//! store directly: a page refresh costs no store read.
use crate::model::Model;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use trellis_api::Resource;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The service page's data; `None` when the model has no such Service.
///
/// `proxies` is the `proxies` array of the mesh status report; `certificate` answers the latest
/// (not before, not after) this replica issued for an identity.
pub fn build(
    model: &Model,
    namespace: &str,
    name: &str,
    proxies: &[Value],
    certificate: impl Fn(&str) -> Option<(SystemTime, SystemTime)>,
) -> Option<Value> {
    let service = model.service(namespace, name)?;
    let mut instances = Vec::new();
    let mut routes = Vec::new();
    let mut destination = Vec::new();
    let mut authorization = Vec::new();
    let mut authentication = Vec::new();
    for r in model.resources() {
        let m = r.metadata();
        if m.namespace != namespace {
            continue;
        }
        match r {
            Resource::Workload(w) if service.selects(w) => {
                instances.push(instance(w, proxies, &certificate));
            }
            Resource::Route(x) if x.spec.service == name => routes.push(route(r)),
            Resource::DestinationPolicy(x) if x.spec.service == name => {
                destination.push(as_json(r))
            }
            Resource::AuthorizationPolicy(x) if x.spec.service == name => {
                authorization.push(as_json(r))
            }
            Resource::RequestAuthentication(x) if x.spec.service == name => {
                authentication.push(as_json(r))
            }
            _ => {}
        }
    }
    Some(json!({
        "id": format!("{namespace}/{name}"),
        "namespace": namespace,
        "name": name,
        "spec": serde_json::to_value(&service.spec).unwrap_or_default(),
        "instances": instances,
        "routes": routes,
        "destinationPolicies": destination,
        "authorizationPolicies": authorization,
        "requestAuthentications": authentication,
        "revision": model.revision,
    }))
}

/// Sets each instance's `ejectedBy`: the proxies whose outlier detection has ejected it.
pub fn mark_ejected(page: &mut Value, ejections: &[super::ejections::Ejection]) {
    let (ns, name) = (page["namespace"].clone(), page["name"].clone());
    let Some(instances) = page["instances"].as_array_mut() else {
        return;
    };
    for i in instances {
        let by: Vec<&str> = ejections
            .iter()
            .filter(|e| ns == e.namespace.as_str() && name == e.service.as_str())
            .filter(|e| i["address"] == e.address.as_str())
            .map(|e| e.by.as_str())
            .collect();
        i["ejectedBy"] = json!(by);
    }
}

fn as_json(r: &Resource) -> Value {
    json!({
        "name": r.metadata().name,
        "spec": serde_json::to_value(r).map(|v| v["spec"].clone()).unwrap_or_default(),
    })
}

/// A Route as stored, plus each rule's split: `backends[i].percent` of the rule's traffic.
fn route(r: &Resource) -> Value {
    let mut v = as_json(r);
    if let Some(rules) = v["spec"]["rules"].as_array_mut() {
        for rule in rules {
            let Some(backends) = rule["backends"].as_array_mut() else {
                continue;
            };
            let weight = |b: &Value| b["weight"].as_f64().unwrap_or(1.0).max(0.0);
            let total: f64 = backends.iter().map(weight).sum();
            for b in backends.iter_mut() {
                let share = if total > 0.0 {
                    weight(b) / total * 100.0
                } else {
                    0.0
                };
                b["percent"] = json!((share * 10.0).round() / 10.0);
            }
        }
    }
    v
}

/// One instance with its proxy (matched by node id = workload name) and certificate.
fn instance(
    w: &trellis_api::Workload,
    proxies: &[Value],
    certificate: &impl Fn(&str) -> Option<(SystemTime, SystemTime)>,
) -> Value {
    let proxy = proxies
        .iter()
        .find(|p| p["id"].as_str() == Some(w.metadata.name.as_str()));
    let nacks: Vec<Value> = proxy
        .and_then(|p| p["types"].as_object())
        .into_iter()
        .flatten()
        .filter(|(_, t)| !t["last_nack"].is_null())
        .map(|(url, t)| json!({ "type": url, "nack": t["last_nack"] }))
        .collect();
    let cert = w
        .spec
        .identity
        .as_deref()
        .and_then(certificate)
        .map(|(from, until)| json!({ "notBeforeUnixMs": unix_ms(from), "notAfterUnixMs": unix_ms(until) }));
    json!({
        "name": w.metadata.name,
        "address": format!("{}:{}", w.spec.address, w.spec.port),
        "zone": w.spec.zone,
        "version": w.metadata.labels.get("version"),
        "labels": w.metadata.labels,
        "health": format!("{:?}", w.spec.health),
        "identity": w.spec.identity,
        "certificate": cert,
        "proxy": proxy.map(|p| json!({
            "connected": true,
            "inSync": p["inSync"],
            "replica": p["replica"],
            "connectedSinceUnixMs": p["connected_since_unix_ms"],
            "nacks": nacks,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::model;

    #[test]
    fn a_service_page_has_instances_splits_and_policies() {
        let m = model(
            "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: reviews}
spec: {ports: [{port: 80, protocol: http}]}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: reviews-0, labels: {version: v1}}
spec: {service: reviews, address: 127.0.0.1, port: 1, zone: z1, identity: 'spiffe://cluster.local/ns/default/sa/reviews'}
---
apiVersion: trellis.dev/v1
kind: Route
metadata: {name: reviews}
spec:
  service: reviews
  rules:
    - backends: [{service: reviews, subset: v1, weight: 90}, {service: reviews, subset: v2, weight: 10}]
---
apiVersion: trellis.dev/v1
kind: AuthorizationPolicy
metadata: {name: reviews}
spec: {service: reviews, rules: [{name: all, action: Allow, from: {namespaces: [default]}}]}
",
        );
        let proxies = vec![json!({
            "id": "reviews-0", "inSync": true, "replica": "r1",
            "types": {"t.Route": {"last_nack": {"version": "v9", "error": "bad route", "at_unix_ms": 1}}},
        })];
        let now = SystemTime::now();
        let page = build(&m, "default", "reviews", &proxies, |_| Some((now, now))).unwrap();
        let i = &page["instances"][0];
        assert_eq!(i["address"], "127.0.0.1:1");
        assert_eq!(i["zone"], "z1");
        assert_eq!(i["version"], "v1");
        assert_eq!(i["proxy"]["inSync"], true);
        assert_eq!(i["proxy"]["nacks"][0]["nack"]["error"], "bad route");
        assert!(i["certificate"]["notAfterUnixMs"].as_u64().is_some());
        let backends = &page["routes"][0]["spec"]["rules"][0]["backends"];
        assert_eq!(backends[0]["percent"], 90.0);
        assert_eq!(backends[1]["percent"], 10.0);
        assert_eq!(page["authorizationPolicies"][0]["name"], "reviews");
        assert!(build(&m, "default", "nope", &proxies, |_| None).is_none());
        let mut page = page;
        let ejected = |service: &str, address: &str| crate::dashboard::ejections::Ejection {
            by: "caller-0".into(),
            service: service.into(),
            namespace: "default".into(),
            address: address.into(),
            ejections: 1,
        };
        mark_ejected(
            &mut page,
            &[
                ejected("reviews", "127.0.0.1:1"),
                ejected("other", "127.0.0.1:1"),
            ],
        );
        assert_eq!(page["instances"][0]["ejectedBy"], json!(["caller-0"]));
    }
}
