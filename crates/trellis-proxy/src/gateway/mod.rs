//! `trellis gateway`: an ingress gateway driven by a Gateway API `Gateway` resource.
//!
//! The gateway is a proxy without an inbound side or an app: it joins the control plane like a
//! sidecar (join token, xDS, a certificate from the CA), but its listeners come from the
//! Gateway named on its command line and its route tables from the routes attached to that
//! Gateway's listeners. Everything after the route match is the sidecar's outbound machinery:
//! the same rules, retries, balancing, passive health, and mTLS to the destination's sidecar.
//!
//! **Identity.** The gateway holds `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>`,
//! the service account being the Gateway's name unless `--service-account` says otherwise (as
//! Istio's gateway deployments run under their own service account). Its calls reach the
//! backend's sidecar with that identity, so an AuthorizationPolicy allows or denies the gateway
//! like any other caller; the control plane's view for it is the view of a caller of that name.
//!
//! | module | job |
//! |---|---|
//! | [`source`] | the Gateway and its attached routes, read from the config snapshot |
//! | [`plan`] | listeners grouped by port, route tables by hostname, certificates by SNI |
//! | [`hosts`] | Gateway API hostname intersection and most-specific-first lookup |
//! | [`certs`] | `certificateRefs` as mounted TLS Secrets, picked by SNI |
//! | [`listeners`] | one accept loop per port, reconciled on every change |
//! | [`http`] | HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS) routed to mesh services |
//! | [`sni`], [`passthrough`] | `TLS` `Passthrough`: the ClientHello's name picks the TLSRoute; bytes are tunnelled |
//! | [`terminate`] | `TLS` `Terminate`: TLS ended here, the handshake's name picks the TLSRoute; plaintext is tunnelled |
//!
//! What it must never do: panic on bytes from the network or on a bad certificate (a typed
//! error, the listener left out, the rest served), or drop a request in flight on a reload.
pub mod certs;
pub mod hosts;
pub mod http;
pub mod listeners;
pub mod passthrough;
pub mod plan;
pub mod sni;
pub mod source;
pub mod terminate;

use crate::drain::Drain;
use crate::settings::{LocalIdentity, Settings};
use crate::state::ProxyState;
use crate::{ControlSource, StartError};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

/// Everything `trellis gateway` is told on its command line.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The Gateway resource this process serves.
    pub gateway: String,
    /// The Gateway's namespace (and the gateway identity's).
    pub namespace: String,
    /// The name in the gateway's SPIFFE identity (`.../sa/NAME`).
    pub service_account: String,
    pub control: ControlSource,
    /// The address listeners bind (each on its Gateway listener's port).
    pub address: IpAddr,
    pub admin: SocketAddr,
    /// Where `certificateRefs` Secrets are mounted (`DIR/NAME/tls.crt`, `DIR/NAME/tls.key`).
    pub cert_dir: PathBuf,
    pub settings: Settings,
}

/// Runs the gateway until `shutdown` resolves or `/shutdown` is called, then drains: listeners
/// stop accepting, in-flight requests finish, then it returns (bounded by the drain timeout).
/// `on_ready` gets the admin address once it is bound.
pub async fn run(
    opts: GatewayOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let identity = LocalIdentity {
        service: opts.service_account.clone(),
        namespace: opts.namespace.clone(),
        zone: None,
    };
    let state = ProxyState::new(identity, opts.settings.clone(), None);
    if let Err(e) = state.set_workload(&opts.control.node_id) {
        tracing::warn!(error = %e, "metrics will not name this gateway instance");
    }
    let drain = Drain::new();
    let control = crate::dynamic::start(&opts.control, &state)?;
    let admin_addr = opts.admin;
    let admin = trellis_net::bind(admin_addr)
        .await
        .map_err(|error| StartError::Bind {
            addr: admin_addr,
            what: "admin",
            error,
        })?;
    let admin_bound = admin.local_addr().unwrap_or(admin_addr);
    let admin_task = tokio::spawn(crate::admin::run(admin, state.clone(), drain.clone()));
    // Not ready for a load balancer until the first config's listeners are bound.
    state.hold_readiness("gateway listeners not bound yet");
    let reload = tokio::spawn(reload_loop(opts.clone(), state.clone(), drain.clone()));
    on_ready(admin_bound);
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown signal received; draining"),
        _ = drain.started() => {}
    }
    drain.start();
    let idle = drain.wait_idle(opts.settings.drain_timeout).await;
    if !idle {
        tracing::warn!(
            open = drain.active(),
            "drain timeout passed with connections still open; closing them"
        );
    }
    reload.abort();
    admin_task.abort();
    drop(control);
    Ok(())
}

/// Builds a plan from every new snapshot and makes the listeners serve it. Woken by each
/// install; several installs while a plan is being served make one more plan, of the latest.
async fn reload_loop(opts: GatewayOptions, state: Arc<ProxyState>, drain: Drain) {
    let mut listeners = listeners::Listeners::new(opts.address, state.clone(), drain.clone());
    let mut installs = state.watch_installs();
    let mut seen: Option<Arc<crate::config::Snapshot>> = None;
    loop {
        if drain.is_draining() {
            return;
        }
        let current = state.snapshot.load_full();
        let changed = match (&seen, &current) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, Some(_)) => true,
            _ => false,
        };
        if let (true, Some(snap)) = (changed, &current) {
            let input = source::input(snap, &opts.gateway, &opts.namespace);
            let mut problems: Vec<String> = Vec::new();
            let input = input.unwrap_or_else(|e| {
                problems.push(e.to_string());
                plan::GatewayInput::default()
            });
            let plan = plan::GatewayPlan::build(&input, &opts.cert_dir);
            problems.extend(plan.errors.iter().map(|e| e.to_string()));
            let bind_errors = listeners.reconcile(plan).await;
            problems.extend(bind_errors.iter().map(|e| e.to_string()));
            if problems.is_empty() {
                tracing::info!(version = snap.version, bound = ?listeners.bound(), "gateway config in force");
            } else {
                state.set_last_error(Some(problems.join("; ")));
            }
            seen = current;
            state.release_readiness();
        }
        tokio::select! {
            changed = installs.changed() => if changed.is_err() { return },
            _ = drain.started() => return,
        }
    }
}
