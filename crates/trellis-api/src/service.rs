//! `Service` (a name callers use, its ports and protocols, which workloads serve it and, when it
//! says so, which services its own sidecars may call) and `Workload` (one instance of a service:
//! where it listens, its labels, zone and health).
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

impl Service {
    /// Whether `w` is one of this service's workloads: same namespace, and its labels contain the
    /// selector, or (with no selector) its `spec.service` names this service. The one rule the
    /// control plane's views, the proxy's snapshot and its DNS directory share.
    pub fn selects(&self, w: &Workload) -> bool {
        if self.metadata.namespace != w.metadata.namespace {
            return false;
        }
        if self.spec.selector.is_empty() {
            w.spec.service.as_deref() == Some(self.metadata.name.as_str())
        } else {
            self.spec
                .selector
                .iter()
                .all(|(k, v)| w.metadata.labels.get(k) == Some(v))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// At least one port. Callers name the port in `Host: svc:PORT`; the first port is the default.
    pub ports: Vec<ServicePort>,
    /// Workloads whose labels contain all of these belong to the service. When empty, workloads
    /// whose `spec.service` names this service belong to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// The services this service's sidecars may call (as Istio's Sidecar `egress.hosts`), each
    /// an [`EgressTarget`]: `NAME` (same namespace), `NAMESPACE/NAME` or `NAMESPACE/*`. Absent:
    /// every service they may call by AuthorizationPolicy. Present, even empty: only these that
    /// exist and that they may call, plus their own service, closed over route backends and
    /// mirrors — so a sidecar's config follows what its app calls, not the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<String>>,
}

/// One entry of [`ServiceSpec::egress`], read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EgressTarget {
    /// `NAME` (`namespace: None`: the declaring service's namespace) or `NAMESPACE/NAME`.
    Service {
        namespace: Option<String>,
        name: String,
    },
    /// `NAMESPACE/*`: every service of the namespace, those created later included.
    Namespace(String),
}

/// Why an entry of `spec.egress` is not an [`EgressTarget`]; each names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("must not be empty; {EGRESS_FORMS}")]
    Empty,
    #[error("{entry:?} has more than one '/'; {EGRESS_FORMS}")]
    TooManySlashes { entry: String },
    #[error(
        "{entry:?}: '*' may only be the whole name after `NAMESPACE/` (`shop/*`: every service \
         of namespace shop); {EGRESS_FORMS}"
    )]
    Wildcard { entry: String },
    #[error("{entry:?}: the {part} {problem}")]
    BadName {
        entry: String,
        /// `namespace` or `service name`.
        part: &'static str,
        problem: String,
    },
}

const EGRESS_FORMS: &str = "use `NAME` (a service of this namespace), `NAMESPACE/NAME` or \
                            `NAMESPACE/*`";

impl std::str::FromStr for EgressTarget {
    type Err = EgressError;

    fn from_str(entry: &str) -> Result<Self, EgressError> {
        if entry.is_empty() {
            return Err(EgressError::Empty);
        }
        let (namespace, name) = match entry.split_once('/') {
            Some((_, rest)) if rest.contains('/') => {
                return Err(EgressError::TooManySlashes {
                    entry: entry.to_string(),
                })
            }
            Some((ns, name)) => (Some(ns), name),
            None => (None, entry),
        };
        let wildcard = name == "*";
        let misplaced = namespace.is_some_and(|ns| ns.contains('*'))
            || (name.contains('*') && !wildcard)
            || (wildcard && namespace.is_none());
        if misplaced {
            return Err(EgressError::Wildcard {
                entry: entry.to_string(),
            });
        }
        if let Some(ns) = namespace {
            egress_label(entry, "namespace", ns)?;
        }
        match namespace {
            Some(ns) if wildcard => Ok(EgressTarget::Namespace(ns.to_string())),
            _ => {
                egress_label(entry, "service name", name)?;
                Ok(EgressTarget::Service {
                    namespace: namespace.map(str::to_string),
                    name: name.to_string(),
                })
            }
        }
    }
}

/// `part` of an egress entry must be a DNS label, as the names and namespaces it refers to are.
fn egress_label(entry: &str, part: &'static str, value: &str) -> Result<(), EgressError> {
    match crate::validate::dns_label_problem(value) {
        None => Ok(()),
        Some(problem) => Err(EgressError::BadName {
            entry: entry.to_string(),
            part,
            problem,
        }),
    }
}

impl fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressTarget::Service {
                namespace: Some(ns),
                name,
            } => write!(f, "{ns}/{name}"),
            EgressTarget::Service {
                namespace: None,
                name,
            } => f.write_str(name),
            EgressTarget::Namespace(ns) => write!(f, "{ns}/*"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Overrides the mesh-wide mTLS mode for inbound traffic to this port (Istio's port-level
    /// PeerAuthentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<crate::mesh::MtlsMode>,
    /// HTTP/1.1 upgrade protocols (`Upgrade` tokens) requests to this port may switch to;
    /// absent means `[websocket]`. `h2c` is never permitted: an upgrade to it is stripped, as
    /// Envoy does, because it would turn the connection into a pipe for requests nobody
    /// authorized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrades: Option<Vec<String>>,
}

/// The upgrade protocols a port permits when it names none.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];

impl ServicePort {
    /// Whether a request to this port may upgrade to `token` (case-insensitive).
    pub fn permits_upgrade(&self, token: &str) -> bool {
        permits_upgrade(self.upgrades.as_deref(), token)
    }
}

/// Whether `token` is among `permitted` (the default set when `None`); `h2c` never is.
pub fn permits_upgrade(permitted: Option<&[String]>, token: &str) -> bool {
    if token.eq_ignore_ascii_case("h2c") {
        return false;
    }
    match permitted {
        Some(list) => list.iter().any(|p| p.eq_ignore_ascii_case(token)),
        None => DEFAULT_UPGRADES
            .iter()
            .any(|p| p.eq_ignore_ascii_case(token)),
    }
}

/// What travels on a port. `Detect` sniffs the first bytes (bounded, with a timeout); the others
/// skip detection, which server-first protocols (databases, SMTP) need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Detect,
    Http,
    Http2,
    Grpc,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub metadata: ObjectMeta,
    pub spec: WorkloadSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The service this instance serves, when the service has no selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// IP address callers connect to (IPv4 or IPv6 literal).
    pub address: String,
    /// The port callers connect to: the sidecar's inbound port when the instance has one.
    pub port: u16,
    /// The port the application itself listens on, behind its sidecar (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
    /// Locality, for zone-aware balancing and failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Expected SPIFFE identity of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default)]
    pub health: WorkloadHealth,
    /// Relative weight of this instance among its peers (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WorkloadHealth {
    #[default]
    Healthy,
    Unhealthy,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(entry: &str) -> Result<EgressTarget, EgressError> {
        entry.parse()
    }

    #[test]
    fn egress_entries_read_and_print_back() {
        for (entry, want) in [
            (
                "ratings",
                EgressTarget::Service {
                    namespace: None,
                    name: "ratings".into(),
                },
            ),
            (
                "shop/ratings",
                EgressTarget::Service {
                    namespace: Some("shop".into()),
                    name: "ratings".into(),
                },
            ),
            ("shop/*", EgressTarget::Namespace("shop".into())),
        ] {
            assert_eq!(target(entry), Ok(want.clone()), "{entry}");
            assert_eq!(want.to_string(), entry);
        }
    }

    #[test]
    fn bad_egress_entries_say_which_and_why() {
        assert_eq!(target(""), Err(EgressError::Empty));
        for (entry, fragment) in [
            ("a/b/c", "more than one '/'"),
            ("/", "namespace must not be empty"),
            ("shop/", "service name must not be empty"),
            ("/ratings", "namespace must not be empty"),
            ("*", "'*' may only be the whole name"),
            ("*/ratings", "'*' may only be the whole name"),
            ("shop/rat*", "'*' may only be the whole name"),
            ("sh*p/ratings", "'*' may only be the whole name"),
            ("Shop/ratings", "namespace \"Shop\" contains 'S'"),
            ("shop/rat_ings", "service name \"rat_ings\" contains '_'"),
            ("ratings.shop", "contains '.'"),
        ] {
            let message = match target(entry) {
                Ok(t) => panic!("{entry:?} was read as {t:?}"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(fragment), "{entry:?}: {message}");
            assert!(message.contains(&format!("{entry:?}")), "{message}");
        }
    }
}
