//! What a gateway serves, compiled from its Gateway and the routes attached to it: one
//! [`PortPlan`] per port (listeners of a Gateway that share a port are told apart by hostname),
//! each holding the route tables by hostname and, for `HTTPS`, the certificates by SNI.
//!
//! A plan is built whole from a [`GatewayInput`] (what [`super::source`] reads out of the config
//! snapshot) and then only read. A listener that cannot be served (a certificate missing, a
//! protocol clashing with another listener on its port) is left out with a [`PlanError`] saying
//! why; the others are served.
use super::certs::{self, PortCerts};
use super::hosts::HostTable;
use crate::config::{compile_route, BackendRef, Rule, ServiceTarget};
use crate::resilience::{LimitState, Limits};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use trellis_identity::rustls::ServerConfig;

/// A listener's protocol, as the Gateway says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerProtocol {
    /// Plaintext HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    Http,
    /// TLS terminated here, then HTTP/1.1 or HTTP/2 by ALPN.
    Https,
    /// TLS passed through to the backend untouched, routed by SNI.
    TlsPassthrough,
    /// TLS terminated here, then the plaintext bytes tunnelled to the TLSRoute's backend (over
    /// the mesh's mTLS), routed by SNI.
    TlsTerminate,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "HTTP",
            ListenerProtocol::Https => "HTTPS",
            ListenerProtocol::TlsPassthrough => "TLS (Passthrough)",
            ListenerProtocol::TlsTerminate => "TLS (Terminate)",
        }
    }

    /// Whether the gateway terminates TLS on this port (and so needs certificates).
    pub fn terminates_tls(self) -> bool {
        matches!(
            self,
            ListenerProtocol::Https | ListenerProtocol::TlsTerminate
        )
    }
}

/// The rules for one hostname of a listener, from every HTTPRoute and GRPCRoute attached to it
/// (already intersected with the listener's hostname and in precedence order).
#[derive(Debug, Clone)]
pub struct HostRules {
    /// Exact, `*.example.com`, or `*` (any host).
    pub hostname: String,
    /// The rules as Trellis Routes named after the Gateway (the name prefixes the rules' metric
    /// labels), in precedence order: one per run of rules from routes of one namespace, whose
    /// backends are Services of that namespace.
    pub routes: Vec<trellis_api::Route>,
}

/// One attached TLSRoute: its hostnames on the listener (intersected with the listener's) and
/// its weighted backends.
#[derive(Debug, Clone)]
pub struct AttachedTls {
    pub name: String,
    pub hostnames: Vec<String>,
    pub backends: Vec<(BackendRef, u32)>,
}

/// One listener of the Gateway and what is attached to it.
#[derive(Debug, Clone)]
pub struct ListenerInput {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub hostname: Option<String>,
    /// Secret names (`--cert-dir/NAME/tls.crt`, `tls.key`) for `HTTPS`.
    pub certificate_refs: Vec<String>,
    pub http: Vec<HostRules>,
    pub tls: Vec<AttachedTls>,
}

/// The Gateway as the gateway process reads it.
#[derive(Debug, Clone, Default)]
pub struct GatewayInput {
    /// The Gateway's name: the label of requests a rule answers itself.
    pub name: String,
    pub listeners: Vec<ListenerInput>,
}

/// Why a listener (or a route on it) is not served.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Certificate(#[from] certs::CertError),
    #[error("listener {listener}: port {port} is already {other} for listener {first}; listeners sharing a port must share its protocol")]
    ProtocolClash {
        listener: String,
        port: u16,
        other: &'static str,
        first: String,
    },
    #[error("listener {listener}: rules for host {route}: {error}")]
    Route {
        listener: String,
        route: String,
        error: crate::config::BuildError,
    },
    #[error("listener {listener}: TLS server config: {error}")]
    Tls {
        listener: String,
        error: trellis_identity::rustls::Error,
    },
}

/// The rules for one hostname of an HTTP(S) port.
#[derive(Debug)]
pub struct HttpHost {
    pub listener: Arc<str>,
    pub rules: Vec<Rule>,
    /// The gateway itself as a destination without endpoints: what a rule that answers itself
    /// (redirect, direct response) is served and labelled as.
    pub own: Arc<ServiceTarget>,
}

/// A service named after the gateway, with no ports, rules or endpoints.
fn own_target(name: &str) -> Arc<ServiceTarget> {
    let limits = Limits::from_config(None);
    Arc::new(ServiceTarget {
        name: Arc::from(name),
        namespace: String::new(),
        ports: Vec::new(),
        rules: Vec::new(),
        groups: Default::default(),
        connect_timeout: None,
        outlier: None,
        limit_state: LimitState::new(&limits),
        limits,
        locality: None,
        mtls: false,
    })
}

/// Where connections for one SNI name of a `TLS` port go.
#[derive(Debug)]
pub struct TlsHost {
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub backends: Vec<(BackendRef, u32)>,
}

/// Everything served on one port.
#[derive(Debug)]
pub struct PortPlan {
    pub protocol: ListenerProtocol,
    /// The listeners on it, for logs and `/config`.
    pub listeners: Vec<String>,
    pub http: HostTable<Arc<HttpHost>>,
    pub tls: HostTable<Arc<TlsHost>>,
    /// `HTTPS` and `TLS (Terminate)`: the TLS server config (certificates by SNI; ALPN h2 and
    /// http/1.1 for HTTPS, none for a tunnel, whose bytes the gateway does not read).
    pub server: Option<Arc<ServerConfig>>,
}

/// The whole gateway: ports, and the listeners left out with why.
#[derive(Debug, Default)]
pub struct GatewayPlan {
    pub ports: BTreeMap<u16, PortPlan>,
    pub errors: Vec<PlanError>,
}

impl GatewayPlan {
    /// Builds the plan; certificates are read from `cert_dir`.
    pub fn build(input: &GatewayInput, cert_dir: &Path) -> GatewayPlan {
        let mut plan = GatewayPlan::default();
        let mut certs: BTreeMap<u16, PortCerts> = BTreeMap::new();
        let own = own_target(&input.name);
        for l in &input.listeners {
            if let Err(e) = plan.add_listener(l, cert_dir, &mut certs, &own) {
                tracing::error!(error = %e, "gateway listener not served");
                plan.errors.push(e);
            }
        }
        for (port, c) in certs {
            let Some(p) = plan.ports.get_mut(&port) else {
                continue;
            };
            let first = p.listeners.first().cloned().unwrap_or_default();
            match c.server_config(p.protocol == ListenerProtocol::Https) {
                Ok(cfg) => p.server = Some(cfg),
                Err(error) => plan.errors.push(PlanError::Tls {
                    listener: first,
                    error,
                }),
            }
        }
        // A terminating port whose every certificate failed serves nothing.
        plan.ports
            .retain(|_, p| !p.protocol.terminates_tls() || p.server.is_some());
        plan
    }

    fn add_listener(
        &mut self,
        l: &ListenerInput,
        cert_dir: &Path,
        certs: &mut BTreeMap<u16, PortCerts>,
        own: &Arc<ServiceTarget>,
    ) -> Result<(), PlanError> {
        if let Some(p) = self.ports.get(&l.port) {
            if p.protocol != l.protocol {
                return Err(PlanError::ProtocolClash {
                    listener: l.name.clone(),
                    port: l.port,
                    other: p.protocol.as_str(),
                    first: p.listeners.first().cloned().unwrap_or_default(),
                });
            }
        }
        // Everything that can fail before anything is added.
        let loaded = if l.protocol.terminates_tls() {
            Some(certs::load_listener(
                cert_dir,
                &l.name,
                &l.certificate_refs,
            )?)
        } else {
            None
        };
        // Rules hold per-rule state (budgets, rate limits), so each host compiles its own.
        let mut tables: Vec<(String, Vec<Rule>)> = Vec::new();
        for h in &l.http {
            let mut rules = Vec::new();
            for route in &h.routes {
                rules.extend(compile_route(route).map_err(|error| PlanError::Route {
                    listener: l.name.clone(),
                    route: h.hostname.clone(),
                    error,
                })?);
            }
            tables.push((h.hostname.clone(), rules));
        }
        if let Some(c) = loaded {
            certs
                .entry(l.port)
                .or_default()
                .add(l.hostname.as_deref(), c);
        }
        let port = self.ports.entry(l.port).or_insert_with(|| PortPlan {
            protocol: l.protocol,
            listeners: Vec::new(),
            http: HostTable::default(),
            tls: HostTable::default(),
            server: None,
        });
        port.listeners.push(l.name.clone());
        let listener: Arc<str> = Arc::from(l.name.as_str());
        for (h, rules) in tables {
            let host = HttpHost {
                listener: listener.clone(),
                rules,
                own: own.clone(),
            };
            port.http.insert(&h, Arc::new(host));
        }
        for t in &l.tls {
            let host = Arc::new(TlsHost {
                listener: listener.clone(),
                route: Arc::from(t.name.as_str()),
                backends: t.backends.clone(),
            });
            for h in &t.hostnames {
                port.tls.insert(h, host.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, port: u16, protocol: ListenerProtocol) -> ListenerInput {
        ListenerInput {
            name: name.into(),
            port,
            protocol,
            hostname: None,
            certificate_refs: Vec::new(),
            http: Vec::new(),
            tls: Vec::new(),
        }
    }

    #[test]
    fn a_listener_that_cannot_be_served_is_left_out_with_why() {
        let mut https = listener("secure", 8443, ListenerProtocol::Https);
        https.certificate_refs = vec!["nowhere".into()];
        let mut terminated_without_cert = listener("broker", 5671, ListenerProtocol::TlsTerminate);
        terminated_without_cert.certificate_refs = vec!["missing".into()];
        let input = GatewayInput {
            name: "edge".into(),
            listeners: vec![
                listener("web", 8080, ListenerProtocol::Http),
                listener("clash", 8080, ListenerProtocol::TlsPassthrough),
                https,
                listener("db", 9443, ListenerProtocol::TlsPassthrough),
                listener("db-terminated", 9443, ListenerProtocol::TlsTerminate),
                terminated_without_cert,
            ],
        };
        let plan = GatewayPlan::build(&input, Path::new("/nonexistent-gateway-certs"));
        let ports: Vec<u16> = plan.ports.keys().copied().collect();
        assert_eq!(ports, [8080, 9443]);
        assert_eq!(plan.ports[&8080].protocol, ListenerProtocol::Http);
        assert_eq!(plan.ports[&8080].listeners, ["web"]);
        let errors: Vec<String> = plan.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("listener clash") && errors[0].contains("HTTP"));
        assert!(errors[1].contains("listener secure") && errors[1].contains("nowhere/tls.crt"));
        assert!(
            errors[2].contains("listener db-terminated")
                && errors[2].contains("TLS (Passthrough) for listener db"),
            "{errors:?}"
        );
        assert!(
            errors[3].contains("listener broker") && errors[3].contains("missing/tls.crt"),
            "{errors:?}"
        );
    }

    #[test]
    fn passthrough_hosts_go_to_their_route() {
        let mut db = listener("db", 9443, ListenerProtocol::TlsPassthrough);
        let backend = BackendRef {
            namespace: "default".into(),
            service: "postgres".into(),
            subset: None,
        };
        db.tls = vec![AttachedTls {
            name: "pg".into(),
            hostnames: vec!["*.db.example.com".into()],
            backends: vec![(backend, 1)],
        }];
        let plan = GatewayPlan::build(
            &GatewayInput {
                name: "edge".into(),
                listeners: vec![db],
            },
            Path::new("/"),
        );
        let port = &plan.ports[&9443];
        assert_eq!(
            port.tls.lookup("eu.db.example.com").map(|h| &*h.route),
            Some("pg")
        );
        assert!(port.tls.lookup("db.example.com").is_none());
    }
}
