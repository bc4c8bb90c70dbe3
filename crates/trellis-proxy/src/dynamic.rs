//! Config from the control plane: an xDS client whose every update is compiled into a snapshot
//! (a rejected one is NACKed with the reason and the last good snapshot stays), plus
//! self-registration of this proxy's workload under a lease. While the control plane is away the
//! proxy keeps serving its last good config; the client reconnects with backoff and jitter,
//! fails over across replicas, and resyncs.
use crate::config::Snapshot;
use crate::control_api::ControlApi;
use crate::metrics::ResultLabels;
use crate::registration::Registration;
use crate::state::ProxyState;
use crate::{ControlSource, StartError};
use std::sync::Arc;
use trellis_xds::{AdsClient, ClientConfig, NodeInfo, Update};

/// The running link to the control plane; dropping it stops the client.
pub struct Control {
    _client: AdsClient,
    registration: Option<Arc<Registration>>,
    keep_alive: Option<tokio::task::JoinHandle<()>>,
    /// Fetches and renews the workload certificate.
    issuer: Option<tokio::task::JoinHandle<()>>,
    /// The telemetry link (`trellis stat`, `tap`, `top`) and the sampler of its history.
    live: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(t) = &self.issuer {
            t.abort();
        }
        for t in &self.live {
            t.abort();
        }
    }
}

impl Control {
    /// Stops keeping the lease alive and revokes it.
    pub async fn deregister(&self) {
        if let Some(t) = &self.keep_alive {
            t.abort();
        }
        if let Some(r) = &self.registration {
            r.deregister().await;
        }
    }
}

pub fn start(c: &ControlSource, state: &Arc<ProxyState>) -> Result<Control, StartError> {
    let uris = c
        .endpoints
        .iter()
        .map(|e| {
            e.parse()
                .map_err(|_| StartError::Control(format!("{e:?} is not a control plane URL")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let node = NodeInfo::new(
        c.node_id.clone(),
        state.identity.service.clone(),
        state.identity.namespace.clone(),
    );
    let live = start_live(&uris, c, &node, state);
    let st = state.clone();
    let mut config = ClientConfig::new(uris, node);
    config.token = c.token.clone();
    if let Some(timeout) = c.on_demand {
        let on_demand = crate::ondemand::OnDemand::new(timeout);
        config.discovery = Some(on_demand.discovery.clone());
        state.set_on_demand(on_demand);
    }
    let client = AdsClient::spawn(config, move |u| apply(&st, u))
        .map_err(|e| StartError::Control(e.to_string()))?;
    state.set_control_status(client.watch_status());
    let api = Arc::new(ControlApi::new(c.endpoints.clone(), c.token.as_deref()));
    // A proxy with certificate files keeps them; otherwise the control plane's CA issues one.
    let issuer = if state.tls().is_none() {
        state.expect_tls();
        let st = state.clone();
        Some(tokio::spawn(crate::tls::issuer::run(
            api.clone(),
            state.identity.namespace.clone(),
            state.identity.service.clone(),
            move |tls| st.set_tls(tls),
        )))
    } else {
        None
    };
    let (registration, keep_alive) = match &c.register {
        None => (None, None),
        Some(w) => {
            let r = Registration::new(api.clone(), w.clone(), c.lease_ttl);
            let task = tokio::spawn(r.clone().run(state.clone()));
            (Some(r), Some(task))
        }
    };
    Ok(Control {
        _client: client,
        registration,
        keep_alive,
        issuer,
        live,
    })
}

/// Opens the telemetry link to the control plane and starts keeping the history it answers
/// `trellis stat` from.
fn start_live(
    uris: &[http::Uri],
    c: &ControlSource,
    node: &NodeInfo,
    state: &Arc<ProxyState>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let history = crate::live::history::History::new(state.metrics.clone());
    let sampler = history.spawn_sampler();
    let live = crate::live::Live {
        history,
        taps: state.taps.clone(),
        node_id: c.node_id.clone(),
        namespace: state.identity.namespace.clone(),
        ejected: {
            let state = state.clone();
            Arc::new(move || ejected_endpoints(&state))
        },
    };
    let link = trellis_xds::telemetry::client::spawn(
        uris.to_vec(),
        c.token.clone(),
        node.clone(),
        Arc::new(live),
    );
    [sampler, link]
}

/// The endpoints outlier detection has ejected from this proxy's pools, as JSON
/// (`{"ejected": [{"service", "namespace", "address", "ejections"}]}`): what the dashboard shows
/// against each instance. Read from the snapshot in force; nothing on the request path.
fn ejected_endpoints(state: &ProxyState) -> Vec<u8> {
    let snap = state.snapshot.load_full();
    let mut ejected = Vec::new();
    for svc in snap.iter().flat_map(|s| s.services.values()) {
        for e in svc
            .groups
            .get(&None)
            .iter()
            .flat_map(|g| g.endpoints.iter())
        {
            if e.outlier.is_ejected() {
                ejected.push(serde_json::json!({
                    "service": &*svc.name,
                    "namespace": svc.namespace,
                    "address": e.addr.to_string(),
                    "ejections": e.outlier.ejections(),
                }));
            }
        }
    }
    serde_json::to_vec(&serde_json::json!({ "ejected": ejected })).unwrap_or_default()
}

/// Compiles an update into a snapshot and installs it; an error is NACKed by the client.
fn apply(state: &ProxyState, update: Update) -> Result<(), String> {
    let previous = state.snapshot.load_full();
    let built = compile(previous.as_deref(), update, &state.identity);
    let (result, outcome) = match built {
        Ok(snapshot) => {
            state.install(snapshot);
            state.set_last_error(None);
            (Ok(()), "applied")
        }
        Err(e) => {
            tracing::error!(error = %e, "config from the control plane rejected; keeping the last good config");
            state.set_last_error(Some(e.to_string()));
            (Err(e.to_string()), "rejected")
        }
    };
    state
        .metrics
        .reloads
        .get_or_create(&ResultLabels { result: outcome })
        .inc();
    result
}

/// The snapshot an update makes: built from the previous one (only what changed is compiled
/// again), or whole when there is none yet.
pub fn compile(
    previous: Option<&Snapshot>,
    update: Update,
    local: &crate::settings::LocalIdentity,
) -> Result<Snapshot, crate::config::BuildError> {
    let source = format!("xds:{}", update.endpoint);
    match previous {
        Some(p) => p.update(
            p.version + 1,
            source,
            update.resources,
            &update.changes,
            local,
        ),
        None => Snapshot::build(1, source, update.resources, None, local),
    }
}
