//! Explicit scoping: which services the proxies of a Service that declares `spec.egress` are
//! sent, read once here for the reference view ([`crate::view`]) and the incremental engine
//! ([`crate::views`]) alike.
//!
//! Why: without it a proxy is sent every service its AuthorizationPolicies let it call — in a
//! mesh without policies, the whole mesh — so its memory, and the control plane's work on every
//! change, grow with the mesh rather than with what its app calls. On-demand discovery bounds
//! that at the price of a wait on each first call; an explicit list (Istio's Sidecar
//! `egress.hosts`) bounds it ahead of time, with no wait, for services whose callees are known.
//!
//! The scope holds the named services, every service of the namespaces named `NAMESPACE/*` (as
//! they come and go), and the proxy's own service, as if listed: its own service is held in any
//! case, and this way its routes are followed exactly as without a list. What a proxy then
//! holds is the scope's existing services it may call, closed over route backends and mirrors
//! (so a route never points at a service its proxy lacks), plus its own.
use crate::model::Model;
use std::collections::BTreeSet;
use trellis_api::service::EgressTarget;

/// A service by (namespace, name).
pub type SvcKey = (String, String);

/// The egress scope of one service's proxies, resolved against its namespace. Equal scopes are
/// equal values (`[shop/*]` of any service of shop, `[b]` of a and `[a]` of b), so the engine
/// computes what they reach once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Egress {
    /// Services named one by one, the own service included, but none of `namespaces`.
    services: BTreeSet<SvcKey>,
    /// Namespaces named as `NAMESPACE/*`.
    namespaces: BTreeSet<String>,
}

impl Egress {
    /// The scope of the proxies of `own`: `None` (no scoping) when its Service does not exist
    /// or declares no `egress`.
    pub fn of(model: &Model, own: &SvcKey) -> Option<Egress> {
        let entries = model.service(&own.0, &own.1)?.spec.egress.as_deref()?;
        Some(Self::read(own, entries))
    }

    /// `entries` of the Service `own`. Stored entries were validated; one that does not read
    /// (which only a store written around validation could hold) names nothing.
    fn read(own: &SvcKey, entries: &[String]) -> Egress {
        let mut scope = Egress {
            services: BTreeSet::from([own.clone()]),
            namespaces: BTreeSet::new(),
        };
        for target in entries
            .iter()
            .filter_map(|e| e.parse::<EgressTarget>().ok())
        {
            match target {
                EgressTarget::Service { namespace, name } => {
                    let namespace = namespace.unwrap_or_else(|| own.0.clone());
                    scope.services.insert((namespace, name));
                }
                EgressTarget::Namespace(ns) => {
                    scope.namespaces.insert(ns);
                }
            }
        }
        let namespaces = &scope.namespaces;
        scope.services.retain(|s| !namespaces.contains(&s.0));
        scope
    }

    /// Whether `svc` is in scope (whether or not it exists).
    pub fn contains(&self, svc: &SvcKey) -> bool {
        self.namespaces.contains(&svc.0) || self.services.contains(svc)
    }

    /// The services in scope that exist in `model`, each once, at a cost that follows the
    /// scope rather than the mesh.
    pub fn services<'m>(&'m self, model: &'m Model) -> impl Iterator<Item = SvcKey> + 'm {
        let named = self
            .services
            .iter()
            .filter(|s| model.service(&s.0, &s.1).is_some())
            .cloned();
        let whole = self.namespaces.iter().flat_map(|ns| {
            model
                .services_in(ns)
                .map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()))
        });
        named.chain(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::model;

    fn key(ns: &str, name: &str) -> SvcKey {
        (ns.to_string(), name.to_string())
    }

    const MESH: &str = "
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: a}
spec: {ports: [{port: 80}], egress: [b, other/c, \"shop/*\", nowhere, other/ghost]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: b}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: c}
spec: {ports: [{port: 80}], egress: []}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: c, namespace: other}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: d, namespace: other}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: x, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: y, namespace: shop}
spec: {ports: [{port: 80}]}
";

    #[test]
    fn a_scope_expands_to_the_existing_services_it_names() {
        let m = model(MESH);
        let a = Egress::of(&m, &key("default", "a")).expect("a declares egress");
        let got: BTreeSet<SvcKey> = a.services(&m).collect();
        let want = BTreeSet::from([
            key("default", "a"),
            key("default", "b"),
            key("other", "c"),
            key("shop", "x"),
            key("shop", "y"),
        ]);
        assert_eq!(got, want);
        assert_eq!(a.services(&m).count(), want.len(), "each once");
        assert!(a.contains(&key("other", "ghost")), "named, though absent");
        assert!(
            a.contains(&key("shop", "later")),
            "NAMESPACE/* covers services to come"
        );
        assert!(!a.contains(&key("other", "d")));
        assert!(!a.contains(&key("default", "c")));
    }

    #[test]
    fn equal_scopes_are_equal() {
        let scope = |own: &str, entries: &[&str]| {
            let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
            Egress::read(&key("shop", own), &entries)
        };
        assert_eq!(scope("a", &["shop/*"]), scope("b", &["shop/*", "b"]));
        assert_eq!(scope("a", &["b"]), scope("b", &["a", "shop/a"]));
        assert_ne!(scope("a", &["b"]), scope("a", &["other/b"]));
    }

    #[test]
    fn an_empty_list_is_the_own_service_and_no_list_is_no_scope() {
        let m = model(MESH);
        let c = Egress::of(&m, &key("default", "c")).expect("an empty list scopes");
        let got: Vec<SvcKey> = c.services(&m).collect();
        assert_eq!(got, [key("default", "c")]);
        assert_eq!(Egress::of(&m, &key("default", "b")), None);
        assert_eq!(Egress::of(&m, &key("default", "ghost")), None, "no Service");
    }
}
