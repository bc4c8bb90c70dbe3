//! The mesh's names and addresses as this sidecar knows them: mesh DNS names to service VIPs
//! (for the DNS answerer), and addresses to services (for captured connections: a VIP, or an
//! endpoint's own address).
//!
//! Built from a snapshot (its services' members come from the snapshot's index, not from a scan
//! of every workload per service) and cached per snapshot ([`DirectoryCache`]), so a query or a
//! captured connection costs a map lookup, never a walk over the config, and never a lock: the
//! cache is an `ArcSwap` keyed by the snapshot it was built from.
//!
//! Names follow Kubernetes' service names: `svc.ns.svc.<dnsDomain>` and `svc.ns` for any
//! namespace, a bare `svc` for the proxy's own namespace (a pod's search path makes the same
//! names work there). Matching ignores ASCII case and a trailing dot.
use crate::config::Snapshot;
use arc_swap::ArcSwapOption;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};

/// `(namespace, service)`.
pub type ServiceKey = (String, String);

/// What a name means to the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameAnswer {
    /// A mesh service with its VIP.
    Service { key: ServiceKey, vip: Ipv4Addr },
    /// Not a name of a service this sidecar knows (with a VIP): ask the host's resolver.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Directory {
    /// Lowercase names without a trailing dot.
    names: HashMap<String, (ServiceKey, Ipv4Addr)>,
    vips: HashMap<Ipv4Addr, ServiceKey>,
    /// Endpoint addresses; the port-less entry is used when the port does not match any.
    endpoints: HashMap<SocketAddr, ServiceKey>,
    endpoint_ips: HashMap<IpAddr, ServiceKey>,
}

impl Directory {
    /// The directory of `snapshot` for a proxy in `local_namespace`.
    pub fn build(snapshot: &Snapshot, local_namespace: &str) -> Self {
        let resources = &snapshot.resources;
        let domain = snapshot.mesh.dns_domain.to_ascii_lowercase();
        let services: HashMap<ServiceKey, &trellis_api::Service> = resources
            .services()
            .map(|s| ((s.metadata.namespace.clone(), s.metadata.name.clone()), s))
            .collect();
        let mut d = Directory::default();
        for a in resources.service_addresses() {
            let key = (a.metadata.namespace.clone(), a.metadata.name.clone());
            let (Some(vip), true) = (a.spec.ip(), services.contains_key(&key)) else {
                continue;
            };
            let (ns, svc) = (&key.0, &key.1);
            let mut names = vec![
                format!("{svc}.{ns}.svc.{domain}"),
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}"),
            ];
            if ns == local_namespace {
                names.push(svc.clone());
            }
            for n in names {
                d.names.insert(n, (key.clone(), vip));
            }
            d.vips.insert(vip, key);
        }
        // Endpoints in key order, so an address shared by two services maps to the same one on
        // every rebuild.
        let mut keys: Vec<&ServiceKey> = services.keys().collect();
        keys.sort();
        for key in keys {
            for w in snapshot.members(key) {
                let Ok(ip) = w.spec.address.parse::<IpAddr>() else {
                    continue;
                };
                d.endpoints
                    .entry(SocketAddr::new(ip, w.spec.port))
                    .or_insert_with(|| key.clone());
                if let Some(app) = w.spec.app_port {
                    d.endpoints
                        .entry(SocketAddr::new(ip, app))
                        .or_insert_with(|| key.clone());
                }
                d.endpoint_ips.entry(ip).or_insert_with(|| key.clone());
            }
        }
        d
    }

    /// What `name` (as asked: any case, maybe a trailing dot) means.
    pub fn lookup(&self, name: &str) -> NameAnswer {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() > 253 {
            return NameAnswer::Unknown;
        }
        match self.names.get(&name.to_ascii_lowercase()) {
            Some((key, vip)) => NameAnswer::Service {
                key: key.clone(),
                vip: *vip,
            },
            None => NameAnswer::Unknown,
        }
    }

    /// The service whose VIP is `ip`.
    pub fn service_of_vip(&self, ip: Ipv4Addr) -> Option<&ServiceKey> {
        self.vips.get(&ip)
    }

    /// The service an endpoint address belongs to: by address and port, else by address.
    pub fn service_of_endpoint(&self, addr: SocketAddr) -> Option<&ServiceKey> {
        self.endpoints
            .get(&addr)
            .or_else(|| self.endpoint_ips.get(&addr.ip()))
    }

    /// How many names it answers (for logs and tests).
    pub fn name_count(&self) -> usize {
        self.names.len()
    }
}

/// The directory of the snapshot in force, rebuilt only when the snapshot changes.
pub struct DirectoryCache {
    local_namespace: String,
    current: ArcSwapOption<(Weak<Snapshot>, Arc<Directory>)>,
}

impl DirectoryCache {
    pub fn new(local_namespace: &str) -> Self {
        Self {
            local_namespace: local_namespace.to_string(),
            current: ArcSwapOption::empty(),
        }
    }

    /// The directory of `snapshot` (empty when there is none yet).
    pub fn get(&self, snapshot: Option<&Arc<Snapshot>>) -> Arc<Directory> {
        let Some(snapshot) = snapshot else {
            return Arc::new(Directory::default());
        };
        if let Some(cached) = self.current.load().as_ref() {
            if Weak::ptr_eq(&cached.0, &Arc::downgrade(snapshot)) {
                return cached.1.clone();
            }
        }
        let built = Arc::new(Directory::build(snapshot, &self.local_namespace));
        self.current
            .store(Some(Arc::new((Arc::downgrade(snapshot), built.clone()))));
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "
apiVersion: trellis.dev/v1
kind: MeshConfig
metadata: {name: mesh}
spec: {dnsDomain: corp.example}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {selector: {app: ratings}, ports: [{port: 9080}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: cache, namespace: infra}
spec: {ports: [{port: 6379}]}
---
apiVersion: trellis.dev/v1
kind: Service
metadata: {name: novip, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1
kind: ServiceAddress
metadata: {name: ratings, namespace: shop}
spec: {address: 240.240.0.1}
---
apiVersion: trellis.dev/v1
kind: ServiceAddress
metadata: {name: cache, namespace: infra}
spec: {address: 240.240.0.2}
---
apiVersion: trellis.dev/v1
kind: ServiceAddress
metadata: {name: gone, namespace: shop}
spec: {address: 240.240.0.3}
---
apiVersion: trellis.dev/v1
kind: Workload
metadata: {name: ratings-0, namespace: shop, labels: {app: ratings}}
spec: {address: 10.1.0.5, port: 15006, appPort: 9080}
";

    fn dir() -> Directory {
        let set = trellis_api::parse_documents("t.yaml", MESH).unwrap();
        let local = crate::settings::LocalIdentity {
            service: "web".into(),
            namespace: "shop".into(),
            zone: None,
        };
        let snapshot = Snapshot::build(1, "t".into(), set, None, &local).unwrap();
        Directory::build(&snapshot, "shop")
    }

    fn svc(ns: &str, name: &str) -> ServiceKey {
        (ns.into(), name.into())
    }

    #[test]
    fn mesh_names_in_every_form_any_case() {
        let d = dir();
        let ratings = NameAnswer::Service {
            key: svc("shop", "ratings"),
            vip: Ipv4Addr::new(240, 240, 0, 1),
        };
        for name in [
            "ratings",
            "ratings.",
            "RATINGS",
            "ratings.shop",
            "ratings.shop.svc",
            "ratings.shop.svc.corp.example",
            "ratings.shop.svc.corp.example.",
        ] {
            assert_eq!(d.lookup(name), ratings, "{name}");
        }
        // Another namespace's service needs its namespace; the default domain is not this one's.
        assert_eq!(d.lookup("cache"), NameAnswer::Unknown);
        assert!(matches!(
            d.lookup("cache.infra"),
            NameAnswer::Service { .. }
        ));
        assert_eq!(
            d.lookup("ratings.shop.svc.cluster.local"),
            NameAnswer::Unknown
        );
        // No VIP yet, or a VIP whose service is not in the view: not a mesh answer.
        assert_eq!(d.lookup("novip"), NameAnswer::Unknown);
        assert_eq!(d.lookup("gone.shop"), NameAnswer::Unknown);
        assert_eq!(d.lookup("example.com"), NameAnswer::Unknown);
        assert_eq!(d.lookup(&"a.".repeat(200)), NameAnswer::Unknown);
    }

    #[test]
    fn addresses_to_services() {
        let d = dir();
        assert_eq!(
            d.service_of_vip(Ipv4Addr::new(240, 240, 0, 2)),
            Some(&svc("infra", "cache"))
        );
        assert_eq!(d.service_of_vip(Ipv4Addr::new(240, 240, 0, 3)), None);
        let ep: SocketAddr = "10.1.0.5:9080".parse().unwrap();
        assert_eq!(d.service_of_endpoint(ep), Some(&svc("shop", "ratings")));
        let other_port: SocketAddr = "10.1.0.5:22".parse().unwrap();
        assert_eq!(
            d.service_of_endpoint(other_port),
            Some(&svc("shop", "ratings"))
        );
        let stranger: SocketAddr = "10.1.0.6:9080".parse().unwrap();
        assert_eq!(d.service_of_endpoint(stranger), None);
    }
}
