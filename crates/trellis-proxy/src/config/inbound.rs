//! The policy guarding this proxy's own service, compiled with the rest of the snapshot: which
//! mTLS mode its inbound port runs, who may call it (`AuthorizationPolicy`) and which JWTs it
//! accepts (`RequestAuthentication`). A JWKS source that cannot be used rejects the whole
//! snapshot, like any other bad config. Its `RateLimitPolicy` limiters are kept from the
//! previous snapshot while their policy is unchanged, so a reload does not refill the buckets.
use super::BuildError;
use crate::settings::LocalIdentity;
use std::sync::Arc;
use trellis_api::mesh::MtlsMode;
use trellis_api::security::JwtRule;
use trellis_api::service::Protocol;
use trellis_identity::{Authorizer, JwtValidator};
use trellis_xds::Resources;

pub struct InboundPolicy {
    /// The mode of the service's (first) port: its own override, else the mesh's.
    pub mtls: MtlsMode,
    /// The service port requests arrive for, as AuthorizationPolicy `to.ports` sees it.
    pub port: u16,
    /// What that port declares it carries: how the inbound side reads connections (`tcp`
    /// skips detection) and which HTTP version it speaks to the app (`http` is HTTP/1.1,
    /// `http2`/`grpc` HTTP/2, whatever the caller spoke).
    pub protocol: Protocol,
    /// The upgrade protocols that port permits (`None`: the default set, WebSocket).
    pub upgrades: Option<Vec<String>>,
    pub authorizer: Authorizer,
    /// `None` when no RequestAuthentication names this service.
    pub jwt: Option<Arc<JwtValidator>>,
    /// The rules `jwt` was built from, so an unchanged set keeps its validator (and JWKS cache).
    jwt_rules: Vec<JwtRule>,
    /// One per `RateLimitPolicy` naming this service, by name; empty (one branch per request)
    /// when there is none.
    pub rate_limits: Vec<Arc<crate::ratelimit::InboundLimit>>,
}

impl std::fmt::Debug for InboundPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundPolicy")
            .field("mtls", &self.mtls)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .field("policies", &!self.authorizer.is_empty())
            .field("jwt_rules", &self.jwt_rules.len())
            .field("rate_limits", &self.rate_limits.len())
            .finish()
    }
}

impl InboundPolicy {
    pub fn build(
        resources: &Resources,
        local: &LocalIdentity,
        mesh_mtls: MtlsMode,
        previous: Option<&InboundPolicy>,
    ) -> Result<Self, BuildError> {
        let own = resources
            .services()
            .find(|s| s.metadata.namespace == local.namespace && s.metadata.name == local.service);
        let first_port = own.and_then(|s| s.spec.ports.first());
        let mtls = first_port.and_then(|p| p.mtls).unwrap_or(mesh_mtls);
        let policies: Vec<_> = resources
            .authorization_policies()
            .filter(|p| p.metadata.namespace == local.namespace && p.spec.service == local.service)
            .collect();
        let authorizer = Authorizer::new(policies);
        let jwt_rules: Vec<JwtRule> = resources
            .request_authentications()
            .filter(|r| r.metadata.namespace == local.namespace && r.spec.service == local.service)
            .flat_map(|r| r.spec.jwt_rules.iter().cloned())
            .collect();
        let jwt = match previous {
            Some(p) if p.jwt_rules == jwt_rules => p.jwt.clone(),
            _ if jwt_rules.is_empty() => None,
            _ => Some(Arc::new(JwtValidator::new(&jwt_rules).map_err(|e| {
                BuildError {
                    resource: format!("RequestAuthentication for {}", local.service),
                    field: "spec.jwtRules".into(),
                    message: e.to_string(),
                }
            })?)),
        };
        let rate_limits = resources
            .rate_limit_policies()
            .filter(|p| p.metadata.namespace == local.namespace && p.spec.service == local.service)
            .map(|p| {
                let kept = previous.and_then(|prev| {
                    prev.rate_limits
                        .iter()
                        .find(|l| l.name() == p.metadata.name && l.spec == p.spec)
                });
                match kept {
                    Some(l) => l.clone(),
                    None => Arc::new(crate::ratelimit::InboundLimit::new(
                        &p.metadata.name,
                        &p.spec,
                    )),
                }
            })
            .collect();
        Ok(Self {
            mtls,
            port: first_port.map_or(0, |p| p.port),
            protocol: first_port.map(|p| p.protocol).unwrap_or_default(),
            upgrades: first_port.and_then(|p| p.upgrades.clone()),
            authorizer,
            jwt,
            jwt_rules,
            rate_limits,
        })
    }
}
