//! `ExternalService`s compiled for the request path: a host name to its destination (see
//! [`trellis_api::external`]). TLS client configs are built here once per snapshot (a `caFile`
//! that cannot be read rejects the snapshot, like any other bad config); system roots are read
//! once per process.
use super::BuildError;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};
use trellis_api::external::{ExternalProtocol, ExternalService, Resolution};
use trellis_identity::rustls::pki_types::pem::PemObject;
use trellis_identity::rustls::pki_types::{CertificateDer, ServerName};
use trellis_identity::rustls::{ClientConfig, RootCertStore};
use trellis_xds::Resources;

/// One ExternalService as the sidecar dials it.
#[derive(Debug)]
pub struct ExternalTarget {
    /// The ExternalService's name: the `service` label of its requests.
    pub name: Arc<str>,
    pub ports: Vec<(u16, ExternalProtocol)>,
    pub resolution: Resolution,
    pub addresses: Vec<IpAddr>,
    pub tls: Option<OriginateTls>,
}

/// TLS the sidecar originates: one config per ALPN it may offer.
#[derive(Debug)]
pub struct OriginateTls {
    pub http1: Arc<ClientConfig>,
    pub http2: Arc<ClientConfig>,
    /// The name sent as SNI and verified; `None`: the request's host.
    pub sni: Option<ServerName<'static>>,
}

/// Host name to ExternalService; the first by (namespace, name) wins a host listed twice.
#[derive(Debug, Default)]
pub struct ExternalTable {
    by_host: HashMap<String, Arc<ExternalTarget>>,
}

impl ExternalTable {
    pub fn build(resources: &Resources) -> Result<Self, BuildError> {
        let mut all: Vec<&ExternalService> = resources.external_services().collect();
        all.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let mut by_host = HashMap::new();
        for e in all {
            let target = Arc::new(compile(e)?);
            for h in &e.spec.hosts {
                by_host
                    .entry(h.to_ascii_lowercase())
                    .or_insert_with(|| target.clone());
            }
        }
        Ok(Self { by_host })
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }

    /// The ExternalService a `Host` (`name` or `name:port`) names, with the port and its
    /// protocol: the port given (it must be declared), else the first declared.
    pub fn find(&self, host: &str) -> Option<(&Arc<ExternalTarget>, u16, ExternalProtocol)> {
        if self.by_host.is_empty() {
            return None;
        }
        let (name, port) = super::snapshot::split_host_port(host);
        let target = self
            .by_host
            .get(name)
            .or_else(|| self.by_host.get(&name.to_ascii_lowercase()))?;
        let (port, protocol) = match port {
            Some(p) => *target.ports.iter().find(|(q, _)| *q == p)?,
            None => *target.ports.first()?,
        };
        Some((target, port, protocol))
    }

    /// Whether `to` is a Static address of an ExternalService on one of its declared ports: a
    /// known destination for captured traffic, not refused under `RegistryOnly`.
    pub fn knows(&self, to: SocketAddr) -> bool {
        self.by_host
            .values()
            .any(|t| t.addresses.contains(&to.ip()) && t.ports.iter().any(|(p, _)| *p == to.port()))
    }
}

fn compile(e: &ExternalService) -> Result<ExternalTarget, BuildError> {
    let resource = format!(
        "ExternalService/{}/{}",
        e.metadata.namespace, e.metadata.name
    );
    let err = |field: &str, message: String| BuildError {
        resource: resource.clone(),
        field: field.to_string(),
        message,
    };
    let tls = match &e.spec.tls {
        None => None,
        Some(t) => {
            let roots = match &t.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|x| err("spec.tls.caFile", format!("reading {path}: {x}")))?;
                    let mut roots = RootCertStore::empty();
                    for cert in CertificateDer::pem_slice_iter(&pem) {
                        let cert =
                            cert.map_err(|x| err("spec.tls.caFile", format!("{path}: {x}")))?;
                        roots
                            .add(cert)
                            .map_err(|x| err("spec.tls.caFile", format!("{path}: {x}")))?;
                    }
                    if roots.is_empty() {
                        return Err(err(
                            "spec.tls.caFile",
                            format!("{path} holds no PEM certificate"),
                        ));
                    }
                    Arc::new(roots)
                }
                None => SYSTEM_ROOTS.clone(),
            };
            let base =
                ClientConfig::builder_with_provider(trellis_identity::tls::crypto_provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|x| err("spec.tls", x.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let mut http1 = base.clone();
            http1.alpn_protocols = vec![b"http/1.1".to_vec()];
            let mut http2 = base;
            http2.alpn_protocols = vec![b"h2".to_vec()];
            let sni = match &t.sni {
                Some(s) => Some(
                    ServerName::try_from(s.clone())
                        .map_err(|x| err("spec.tls.sni", x.to_string()))?,
                ),
                None => None,
            };
            Some(OriginateTls {
                http1: Arc::new(http1),
                http2: Arc::new(http2),
                sni,
            })
        }
    };
    Ok(ExternalTarget {
        name: e.metadata.name.as_str().into(),
        ports: e.spec.ports.iter().map(|p| (p.port, p.protocol)).collect(),
        resolution: e.spec.resolution,
        addresses: e.spec.addresses.clone(),
        tls,
    })
}

/// The system's root certificates, read once.
static SYSTEM_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!(errors = ?native.errors, "no system root certificates found: TLS to ExternalServices without a caFile will fail");
    }
    Arc::new(roots)
});
