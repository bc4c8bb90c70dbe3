//! The resources a proxy holds, shared between the client's cache and every config built from
//! it: each resource is decoded once and kept behind an `Arc`, in persistent maps (`imbl`), so
//! handing the proxy "the complete set after this change" copies a handful of map roots, not the
//! mesh, and two sets that differ by one resource share everything else.
use serde::ser::{Serialize, SerializeSeq, Serializer};
use std::collections::BTreeMap;
use std::sync::Arc;
use trellis_api::ca::TrustBundle;
use trellis_api::mesh::MeshConfigSpec;
use trellis_api::{
    AuthorizationPolicy, DestinationPolicy, ExternalService, MeshConfig, RateLimitPolicy,
    RequestAuthentication, Resource, ResourceSet, Route, Service, ServiceAddress, Workload,
};
use trellis_api::{GRPCRoute, Gateway, HTTPRoute, TLSRoute};

/// One resource as held: its xDS version and the decoded resource.
#[derive(Debug, Clone)]
pub struct Held {
    pub version: Arc<str>,
    pub resource: Arc<Resource>,
}

/// The resources of one type, by xDS name (`namespace/name`).
pub type TypeResources = imbl::OrdMap<String, Held>;

/// Every resource of a config, by type URL, then by name. Cloning is cheap (a few map roots).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    types: BTreeMap<String, TypeResources>,
}

macro_rules! accessor {
    ($fn:ident, $variant:ident, $ty:ty, $url:expr) => {
        pub fn $fn(&self) -> impl Iterator<Item = &$ty> + '_ {
            self.of_type($url).filter_map(|r| match r {
                Resource::$variant(x) => {
                    // Coerces a boxed kind to the kind.
                    let x: &$ty = x;
                    Some(x)
                }
                _ => None,
            })
        }
    };
}

impl Resources {
    /// A set read from elsewhere (a file), each resource under its kind's type URL and its
    /// `namespace/name`; a later duplicate replaces an earlier one. Versions are empty.
    pub fn from_set(set: ResourceSet) -> Self {
        let mut out = Resources::default();
        for r in set.resources {
            let held = Held {
                version: Arc::from(""),
                resource: Arc::new(r),
            };
            out.types
                .entry(crate::type_url(held.resource.kind()))
                .or_default()
                .insert(crate::resource_name(&held.resource), held);
        }
        out
    }

    /// Puts one type's resources in (replacing what the set had of that type).
    pub fn set_type(&mut self, type_url: &str, resources: TypeResources) {
        self.types.insert(type_url.to_string(), resources);
    }

    /// The resources of one type, by name.
    pub fn type_map(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.get(type_url)
    }

    /// The resources of one type, in name order.
    pub fn of_type(&self, type_url: &str) -> impl Iterator<Item = &Resource> + '_ {
        self.types
            .get(type_url)
            .into_iter()
            .flat_map(|m| m.values().map(|h| &*h.resource))
    }

    /// One resource by type URL and `namespace/name`.
    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.types
            .get(type_url)
            .and_then(|m| m.get(name))
            .map(|h| &h.resource)
    }

    /// Every resource: types in [`crate::TYPE_URLS`] order (any other after), then by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> + '_ {
        let known = crate::TYPE_URLS.iter().filter_map(|t| self.types.get(*t));
        let others = self
            .types
            .iter()
            .filter(|(t, _)| !crate::TYPE_URLS.contains(&t.as_str()))
            .map(|(_, m)| m);
        known
            .chain(others)
            .flat_map(|m| m.values().map(|h| &h.resource))
    }

    pub fn len(&self) -> usize {
        self.types.values().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A deep copy as a plain [`ResourceSet`] (for tools and tests, not the proxy's hot path).
    pub fn to_set(&self) -> ResourceSet {
        ResourceSet {
            resources: self.iter().map(|r| (**r).clone()).collect(),
        }
    }

    accessor!(services, Service, Service, crate::resource::SERVICE);
    accessor!(workloads, Workload, Workload, crate::resource::WORKLOAD);
    accessor!(routes, Route, Route, crate::resource::ROUTE);
    accessor!(
        destination_policies,
        DestinationPolicy,
        DestinationPolicy,
        crate::resource::DESTINATION_POLICY
    );
    accessor!(
        authorization_policies,
        AuthorizationPolicy,
        AuthorizationPolicy,
        crate::resource::AUTHORIZATION_POLICY
    );
    accessor!(
        request_authentications,
        RequestAuthentication,
        RequestAuthentication,
        crate::resource::REQUEST_AUTHENTICATION
    );
    accessor!(
        rate_limit_policies,
        RateLimitPolicy,
        RateLimitPolicy,
        crate::resource::RATE_LIMIT_POLICY
    );
    accessor!(
        external_services,
        ExternalService,
        ExternalService,
        crate::resource::EXTERNAL_SERVICE
    );
    accessor!(
        mesh_configs,
        MeshConfig,
        MeshConfig,
        crate::resource::MESH_CONFIG
    );
    accessor!(
        trust_bundles,
        TrustBundle,
        TrustBundle,
        crate::resource::TRUST_BUNDLE
    );
    accessor!(
        service_addresses,
        ServiceAddress,
        ServiceAddress,
        crate::resource::SERVICE_ADDRESS
    );

    accessor!(
        http_routes,
        HTTPRoute,
        HTTPRoute,
        crate::resource::HTTP_ROUTE
    );
    accessor!(
        grpc_routes,
        GRPCRoute,
        GRPCRoute,
        crate::resource::GRPC_ROUTE
    );
    accessor!(tls_routes, TLSRoute, TLSRoute, crate::resource::TLS_ROUTE);
    accessor!(gateways, Gateway, Gateway, crate::resource::GATEWAY);

    /// The mesh-wide settings: the first MeshConfig, or defaults.
    pub fn mesh_config(&self) -> MeshConfigSpec {
        self.mesh_configs()
            .next()
            .map(|m| m.spec.clone())
            .unwrap_or_default()
    }
}

impl From<ResourceSet> for Resources {
    fn from(set: ResourceSet) -> Self {
        Resources::from_set(set)
    }
}

/// As a list of resources, like a [`ResourceSet`].
impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for r in self.iter() {
            seq.serialize_element(&**r)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_every_resource() {
        let yaml = "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec: {ports: [{port: 80}]}\n---\napiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {}\n";
        let set = trellis_api::parse_documents("t.yaml", yaml).expect("valid");
        let r = Resources::from_set(set.clone());
        let copy = r.clone();
        let a = r.get(crate::resource::SERVICE, "shop/a").expect("held");
        let b = copy.get(crate::resource::SERVICE, "shop/a").expect("held");
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(r.len(), 2);
        // Type order: MeshConfig first, as the proxy receives them.
        assert_eq!(r.iter().next().map(|r| r.kind()), Some("MeshConfig"));
        assert_eq!(r.services().count(), 1);
        assert_eq!(r.to_set().resources.len(), 2);
    }
}
