//! The mesh's names and addresses as this sidecar knows them: mesh DNS names to service VIPs
//! (for the DNS answerer), and addresses to services (for captured connections: a VIP, or an
//! endpoint's own address).
//!
//! Part of each snapshot, and built with it: a query or a captured connection costs a map
//! lookup, never a walk over the config, and never a lock. An update moves it along instead of
//! rebuilding it: the names and VIPs are rebuilt only when a Service or ServiceAddress changed,
//! and the endpoint maps (persistent) change only for the services the update touched.
//!
//! Names follow Kubernetes' service names: `svc.ns.svc.<dnsDomain>` and `svc.ns` for any
//! namespace, a bare `svc` for the proxy's own namespace (a pod's search path makes the same
//! names work there). Matching ignores ASCII case and a trailing dot.
use super::Snapshot;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use trellis_api::Workload;
use trellis_xds::Resources;

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

/// Names and VIPs of the services that have both a Service and a ServiceAddress.
#[derive(Debug, Default)]
struct Names {
    /// Lowercase names without a trailing dot.
    names: HashMap<String, (ServiceKey, Ipv4Addr)>,
    vips: HashMap<Ipv4Addr, ServiceKey>,
}

/// The services that claim an address, sorted; the first answers. Almost always one: a small
/// shared slice costs about a tenth of a persistent set's node per address and clones (when the
/// map copies a node on change) by reference count.
type Claims = Arc<[ServiceKey]>;

#[derive(Debug, Default, Clone)]
pub struct Directory {
    names: Arc<Names>,
    /// Endpoint addresses; the port-less entry is used when the port does not match any.
    endpoints: imbl::HashMap<SocketAddr, Claims>,
    endpoint_ips: imbl::HashMap<IpAddr, Claims>,
}

impl Directory {
    /// The directory of the snapshot in force (empty when there is none yet).
    pub fn of(snapshot: Option<&Arc<Snapshot>>) -> Arc<Directory> {
        snapshot.map(|s| s.directory.clone()).unwrap_or_default()
    }

    /// Rebuilds the names and VIPs (after a Service, ServiceAddress or MeshConfig change).
    pub(crate) fn rename(
        &mut self,
        resources: &Resources,
        dns_domain: &str,
        local_namespace: &str,
    ) {
        let domain = dns_domain.to_ascii_lowercase();
        let mut d = Names::default();
        for a in resources.service_addresses() {
            let key = (a.metadata.namespace.clone(), a.metadata.name.clone());
            let has_service = resources
                .get(
                    trellis_xds::resource::SERVICE,
                    &format!("{}/{}", key.0, key.1),
                )
                .is_some();
            let (Some(vip), true) = (a.spec.ip(), has_service) else {
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
        self.names = Arc::new(d);
    }

    /// The addresses of a service's workloads, with and without the port.
    fn addresses<'a>(
        workloads: impl Iterator<Item = &'a Workload>,
    ) -> (Vec<SocketAddr>, Vec<IpAddr>) {
        let (mut addrs, mut ips) = (Vec::new(), Vec::new());
        for w in workloads {
            let Ok(ip) = w.spec.address.parse::<IpAddr>() else {
                continue;
            };
            addrs.push(SocketAddr::new(ip, w.spec.port));
            if let Some(app) = w.spec.app_port {
                addrs.push(SocketAddr::new(ip, app));
            }
            ips.push(ip);
        }
        (addrs, ips)
    }

    /// Takes a service's claims on its workloads' addresses back.
    pub(crate) fn remove_service<'a>(
        &mut self,
        key: &ServiceKey,
        workloads: impl Iterator<Item = &'a Workload>,
    ) {
        let (addrs, ips) = Self::addresses(workloads);
        for a in addrs {
            unclaim(&mut self.endpoints, &a, key);
        }
        for ip in ips {
            unclaim(&mut self.endpoint_ips, &ip, key);
        }
    }

    /// Lets a service claim its workloads' addresses.
    pub(crate) fn add_service<'a>(
        &mut self,
        key: &ServiceKey,
        workloads: impl Iterator<Item = &'a Workload>,
    ) {
        let (addrs, ips) = Self::addresses(workloads);
        for a in addrs {
            claim(&mut self.endpoints, a, key);
        }
        for ip in ips {
            claim(&mut self.endpoint_ips, ip, key);
        }
    }

    /// What `name` (as asked: any case, maybe a trailing dot) means.
    pub fn lookup(&self, name: &str) -> NameAnswer {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() > 253 {
            return NameAnswer::Unknown;
        }
        match self.names.names.get(&name.to_ascii_lowercase()) {
            Some((key, vip)) => NameAnswer::Service {
                key: key.clone(),
                vip: *vip,
            },
            None => NameAnswer::Unknown,
        }
    }

    /// The service whose VIP is `ip`.
    pub fn service_of_vip(&self, ip: Ipv4Addr) -> Option<&ServiceKey> {
        self.names.vips.get(&ip)
    }

    /// The service an endpoint address belongs to: by address and port, else by address; the
    /// first in key order when several services have it.
    pub fn service_of_endpoint(&self, addr: SocketAddr) -> Option<&ServiceKey> {
        self.endpoints
            .get(&addr)
            .or_else(|| self.endpoint_ips.get(&addr.ip()))
            .and_then(|c| c.first())
    }

    /// Everything it answers, sorted (for tests comparing two directories).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .names
            .names
            .iter()
            .map(|(n, v)| format!("name {n} {v:?}"))
            .chain(
                self.names
                    .vips
                    .iter()
                    .map(|(v, k)| format!("vip {v} {k:?}")),
            )
            .chain(
                self.endpoints
                    .iter()
                    .map(|(a, c)| format!("endpoint {a} {:?}", c.first())),
            )
            .chain(
                self.endpoint_ips
                    .iter()
                    .map(|(a, c)| format!("ip {a} {:?}", c.first())),
            )
            .collect();
        out.sort();
        out
    }

    /// How many names it answers (for logs and tests).
    pub fn name_count(&self) -> usize {
        self.names.names.len()
    }
}

fn claim<K: std::hash::Hash + Eq + Clone>(
    map: &mut imbl::HashMap<K, Claims>,
    at: K,
    key: &ServiceKey,
) {
    let claims = match map.get(&at) {
        None => Arc::from([key.clone()]),
        Some(c) => match c.binary_search(key) {
            Ok(_) => return,
            Err(i) => {
                let mut v = c.to_vec();
                v.insert(i, key.clone());
                Arc::from(v)
            }
        },
    };
    map.insert(at, claims);
}

fn unclaim<K: std::hash::Hash + Eq + Clone>(
    map: &mut imbl::HashMap<K, Claims>,
    at: &K,
    key: &ServiceKey,
) {
    let Some(c) = map.get(at) else { return };
    let Ok(i) = c.binary_search(key) else { return };
    if c.len() == 1 {
        map.remove(at);
    } else {
        let mut v = c.to_vec();
        v.remove(i);
        map.insert(at.clone(), Arc::from(v));
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
        (*snapshot.directory).clone()
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

    #[test]
    fn shared_addresses_answer_the_first_claim_in_key_order_until_it_is_taken_back() {
        let mut map: imbl::HashMap<IpAddr, Claims> = imbl::HashMap::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, b, c) = (svc("ns", "a"), svc("ns", "b"), svc("other", "a"));
        for key in [&c, &b, &a, &b] {
            claim(&mut map, ip, key);
        }
        assert_eq!(
            &*map[&ip],
            [a.clone(), b.clone(), c.clone()],
            "sorted, each once"
        );
        // A snapshot taken now keeps its claims whatever happens to the map later.
        let before = map.clone();
        unclaim(&mut map, &ip, &a);
        assert_eq!(map[&ip].first(), Some(&b));
        unclaim(&mut map, &ip, &svc("ns", "never"));
        unclaim(&mut map, &ip, &c);
        unclaim(&mut map, &ip, &b);
        assert!(map.get(&ip).is_none(), "no claims left: no entry");
        assert_eq!(before[&ip].first(), Some(&a));
    }
}
