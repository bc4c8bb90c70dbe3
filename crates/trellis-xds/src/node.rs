//! Who is on the other end of a stream: [`NodeInfo`], carried in Envoy's `Node` message.
//!
//! A Trellis proxy sends `id` (unique per instance), its service in `cluster` (as Envoy does) and
//! its service and namespace again in `metadata` (`service`, `namespace`), plus any other string
//! metadata. An unmodified Envoy fills `id`, `cluster` and `metadata` the same way from its
//! bootstrap. Everything here is a claim until the server's auth hook backs it.
use crate::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use prost_types::{value::Kind, Struct, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest node id, service or namespace accepted.
pub const MAX_NAME_BYTES: usize = 256;
/// Most metadata entries kept from a node.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Node metadata key saying how the node discovers services, and its on-demand value.
pub const DISCOVERY_KEY: &str = "discovery";
pub const DISCOVERY_ON_DEMAND: &str = "on-demand";

/// The identity a proxy claims for itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique per proxy instance, e.g. `reviews-v1-0.shop`.
    pub id: String,
    /// The service the proxy fronts; empty for a proxy with no inbound side (an entry sidecar).
    pub service: String,
    pub namespace: String,
    /// Other string metadata the proxy sent (version, zone, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Why a node description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("the first request of a stream must carry node.id")]
    MissingId,
    #[error("node {field} is {len} bytes; the limit is {MAX_NAME_BYTES}")]
    TooLong { field: &'static str, len: usize },
}

impl NodeInfo {
    pub fn new(
        id: impl Into<String>,
        service: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            service: service.into(),
            namespace: namespace.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// The `Node` message a Trellis proxy sends.
    /// Says the node discovers services on demand (see [`NodeInfo::on_demand`]).
    pub fn set_on_demand(&mut self) {
        self.metadata
            .insert(DISCOVERY_KEY.into(), DISCOVERY_ON_DEMAND.into());
    }

    /// Whether the node discovers services on demand: it starts with its own config only and
    /// names each Service it wants in its delta Service subscription.
    pub fn on_demand(&self) -> bool {
        self.metadata.get(DISCOVERY_KEY).map(String::as_str) == Some(DISCOVERY_ON_DEMAND)
    }

    pub fn to_node(&self) -> Node {
        let string = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let mut fields: BTreeMap<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        fields.insert("service".into(), string(&self.service));
        fields.insert("namespace".into(), string(&self.namespace));
        Node {
            id: self.id.clone(),
            cluster: self.service.clone(),
            metadata: Some(Struct { fields }),
            locality: None,
            user_agent_name: "trellis".into(),
            client_features: Vec::new(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            )),
        }
    }

    /// Reads what a proxy (Trellis or Envoy) says about itself; non-string metadata is skipped.
    pub fn from_node(node: &Node) -> Result<NodeInfo, NodeError> {
        if node.id.is_empty() {
            return Err(NodeError::MissingId);
        }
        let mut metadata = BTreeMap::new();
        if let Some(s) = &node.metadata {
            for (k, v) in s.fields.iter().take(MAX_METADATA_ENTRIES) {
                if let Some(Kind::StringValue(v)) = &v.kind {
                    metadata.insert(k.clone(), v.clone());
                }
            }
        }
        let service = metadata
            .remove("service")
            .unwrap_or_else(|| node.cluster.clone());
        let namespace = metadata
            .remove("namespace")
            .unwrap_or_else(|| trellis_api::meta::DEFAULT_NAMESPACE.to_string());
        for (field, value) in [
            ("id", &node.id),
            ("service", &service),
            ("namespace", &namespace),
        ] {
            if value.len() > MAX_NAME_BYTES {
                return Err(NodeError::TooLong {
                    field,
                    len: value.len(),
                });
            }
        }
        Ok(NodeInfo {
            id: node.id.clone(),
            service,
            namespace,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut n = NodeInfo::new("reviews-0", "reviews", "shop");
        n.metadata.insert("version".into(), "v2".into());
        assert_eq!(NodeInfo::from_node(&n.to_node()), Ok(n));
    }

    #[test]
    fn envoy_style_node_and_errors() {
        let envoy = Node {
            id: "envoy-1".into(),
            cluster: "ratings".into(),
            ..Default::default()
        };
        let n = NodeInfo::from_node(&envoy).expect("valid");
        assert_eq!(
            (n.service.as_str(), n.namespace.as_str()),
            ("ratings", "default")
        );
        assert_eq!(
            NodeInfo::from_node(&Node::default()),
            Err(NodeError::MissingId)
        );
        let long = Node {
            id: "x".repeat(MAX_NAME_BYTES + 1),
            ..Default::default()
        };
        assert!(matches!(
            NodeInfo::from_node(&long),
            Err(NodeError::TooLong { field: "id", .. })
        ));
    }
}
