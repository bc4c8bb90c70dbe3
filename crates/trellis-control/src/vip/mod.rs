//! Service virtual IPs: every Service gets a `ServiceAddress` (same namespace and name) holding
//! an IPv4 address from the MeshConfig's `serviceAddressRange` (`240.240.0.0/16` by default).
//! Sidecars answer DNS for mesh names with it and route captured connections to `VIP:port` as
//! that service (see `trellis_api::address` for why it is a kind of its own).
//!
//! How it stays right with several replicas and no leader:
//! - **Every replica reconciles.** It follows its model; when the model shows work (a Service
//!   without an address, an address without its Service, two services on one address, an
//!   address outside the range), it reads the two kinds fresh from the store and acts on that,
//!   not on a model that may lag its own writes.
//! - **Writes are conditional.** A new address is a [`Store::create`] (only one writer wins; a
//!   loser has nothing to do), a release is a delete at the version read, a move a replace at
//!   the version read. A replica that loses a race re-reads on the next change.
//! - **Lowest free, deterministically.** Services without an address are served in key order,
//!   each taking the lowest address no other holds, so replicas that see the same store pick the
//!   same addresses (and one's create makes the other's a no-op).
//! - **A collision is repaired, the first holder keeps its address.** Two replicas reading at
//!   different moments can hand one address to two new services. The holder written first
//!   (lowest version, then key) keeps it; the other is moved to a free address by a versioned
//!   replace. So an address, once its Service has it alone, never changes, and a collision lives
//!   at most until the next reconcile (it is only possible while both allocations are new).
//! - **Released with the Service.** An address whose Service is gone is deleted (at its
//!   version); the address is free for the next Service.
//! - **A new range moves what is outside it.** Changing `serviceAddressRange` re-allocates every
//!   address outside the new range (lowest free first); addresses inside stay.
//!
//! It never touches a Service: a user's apply of a Service never conflicts with it.
use crate::model::Model;
use crate::store::{Store, StoreError, Stored};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use trellis_api::address::{ServiceAddress, ServiceAddressSpec};
use trellis_api::{Ipv4Cidr, ObjectMeta, Resource};

#[cfg(test)]
mod tests;

/// The kind this module writes.
pub const KIND: &str = "ServiceAddress";

/// How often a replica looks again even when nothing changed (a write that failed while the
/// store was away is retried by then).
const RESYNC: Duration = Duration::from_secs(30);

/// Most reconcile passes in a row after one change (each pass re-reads after a lost race).
const PASSES: usize = 5;

/// `(namespace, name)` of a Service, and so of its address.
pub type ServiceKey = (String, String);

/// What one reconcile pass decided, from one reading of the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New addresses: service, address.
    pub create: Vec<(ServiceKey, Ipv4Addr)>,
    /// Addresses to move (a collision lost, or outside the range): service, version read, new.
    pub moves: Vec<(ServiceKey, u64, Ipv4Addr)>,
    /// Addresses whose Service is gone: service, version read.
    pub release: Vec<(ServiceKey, u64)>,
    /// Services left without an address because the range is full.
    pub unplaced: Vec<ServiceKey>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.moves.is_empty() && self.release.is_empty()
    }
}

/// One stored address as the planner sees it.
#[derive(Debug, Clone)]
pub struct Held {
    pub service: ServiceKey,
    pub version: u64,
    /// `None` when the stored text is not an IPv4 address (validation prevents it).
    pub ip: Option<Ipv4Addr>,
}

/// Decides what to write so that every service in `services` holds one address of `range` alone
/// and no address outlives its service. Pure: the same inputs give the same plan on any replica.
pub fn plan(range: Ipv4Cidr, services: &BTreeSet<ServiceKey>, held: &[Held]) -> Plan {
    let mut out = Plan::default();
    // Who keeps each address: the holder written first (then the lowest key).
    let mut owners: BTreeMap<Ipv4Addr, &Held> = BTreeMap::new();
    let mut needs: Vec<(ServiceKey, Option<u64>)> = Vec::new();
    let mut sorted: Vec<&Held> = held.iter().collect();
    sorted.sort_by(|a, b| (a.version, &a.service).cmp(&(b.version, &b.service)));
    for h in sorted {
        if !services.contains(&h.service) {
            out.release.push((h.service.clone(), h.version));
            continue;
        }
        match h.ip.filter(|ip| range.contains(*ip) && is_host(range, *ip)) {
            Some(ip) if !owners.contains_key(&ip) => {
                owners.insert(ip, h);
            }
            _ => needs.push((h.service.clone(), Some(h.version))),
        }
    }
    let have: HashSet<&ServiceKey> = held.iter().map(|h| &h.service).collect();
    needs.extend(
        services
            .iter()
            .filter(|s| !have.contains(s))
            .map(|s| (s.clone(), None)),
    );
    needs.sort();
    let mut free = range.hosts().filter(|ip| !owners.contains_key(ip));
    for (service, version) in needs {
        match (free.next(), version) {
            (Some(ip), None) => out.create.push((service, ip)),
            (Some(ip), Some(v)) => out.moves.push((service, v, ip)),
            (None, _) => out.unplaced.push(service),
        }
    }
    out.release.sort();
    out
}

/// Not the range's own first or last address.
fn is_host(range: Ipv4Cidr, ip: Ipv4Addr) -> bool {
    let (first, n) = (u32::from(range.network()), u32::from(ip));
    n != first && n != first | (u32::MAX.checked_shr(u32::from(range.prefix())).unwrap_or(0))
}

/// Whether the model shows anything to do (cheap; the real decision is made on a fresh read).
pub fn needs_work(model: &Model) -> bool {
    let range = model.mesh_config().service_address_cidr();
    let (services, held) = from_resources(model.items.values());
    let held_keys: HashSet<&ServiceKey> = held.iter().map(|h| &h.service).collect();
    if services.iter().any(|s| !held_keys.contains(s)) {
        return true;
    }
    let mut seen = HashSet::new();
    held.iter().any(|h| {
        !services.contains(&h.service)
            || !h
                .ip
                .is_some_and(|ip| range.contains(ip) && is_host(range, ip) && seen.insert(ip))
    })
}

fn from_resources<'a>(
    items: impl Iterator<Item = &'a Stored>,
) -> (BTreeSet<ServiceKey>, Vec<Held>) {
    let mut services = BTreeSet::new();
    let mut held = Vec::new();
    for s in items {
        match &s.resource {
            Resource::Service(svc) => {
                services.insert((svc.metadata.namespace.clone(), svc.metadata.name.clone()));
            }
            Resource::ServiceAddress(a) => held.push(Held {
                service: (a.metadata.namespace.clone(), a.metadata.name.clone()),
                version: s.version,
                ip: a.spec.ip(),
            }),
            _ => {}
        }
    }
    (services, held)
}

/// The resource holding `ip` for `service`.
pub fn address_resource(service: &ServiceKey, ip: Ipv4Addr) -> Resource {
    let mut metadata = ObjectMeta::new(service.1.clone());
    metadata.namespace = service.0.clone();
    Resource::ServiceAddress(ServiceAddress {
        metadata,
        spec: ServiceAddressSpec {
            address: ip.to_string(),
        },
    })
}

/// What a pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub written: usize,
    /// Writes refused because another writer got there first: read again.
    pub lost_races: usize,
    pub unplaced: usize,
}

/// One pass: reads addresses, then services, fresh from the store (addresses first, so an
/// address is released only if its service was absent at a later read), plans, and writes.
pub async fn reconcile(store: &dyn Store, range: Ipv4Cidr) -> Result<Outcome, StoreError> {
    let addresses = store.list(Some(KIND), None).await?;
    let services = store.list(Some("Service"), None).await?;
    let (services, _) = from_resources(services.items.iter());
    let (_, held) = from_resources(addresses.items.iter());
    let plan = plan(range, &services, &held);
    let mut out = Outcome {
        unplaced: plan.unplaced.len(),
        ..Outcome::default()
    };
    let mut tally = |r: Result<(), StoreError>| match r {
        Ok(()) => {
            out.written += 1;
            Ok(())
        }
        Err(
            StoreError::AlreadyExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::NotFound { .. },
        ) => {
            out.lost_races += 1;
            Ok(())
        }
        Err(e) => Err(e),
    };
    for ((ns, name), version) in &plan.release {
        let r = store.delete(KIND, ns, name, Some(*version)).await;
        if r.is_ok() {
            tracing::info!(service = %format!("{ns}/{name}"), "service deleted; its virtual IP is released");
        }
        tally(r.map(drop))?;
    }
    for (service, ip) in &plan.create {
        let r = store.create(address_resource(service, *ip)).await;
        if r.is_ok() {
            tracing::info!(service = %format!("{}/{}", service.0, service.1), %ip, "virtual IP allocated");
        }
        tally(r.map(drop))?;
    }
    for (service, version, ip) in &plan.moves {
        let r = store
            .replace(address_resource(service, *ip), Some(*version))
            .await;
        if r.is_ok() {
            tracing::warn!(service = %format!("{}/{}", service.0, service.1), %ip, "virtual IP moved (it collided with another service's, or left the range)");
        }
        tally(r.map(drop))?;
    }
    Ok(out)
}

/// Reconciles whenever the model shows work, and every [`RESYNC`]; ends when the model's sender
/// goes away.
pub fn spawn(
    store: Arc<dyn Store>,
    mut model: watch::Receiver<Arc<Model>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Logged when it changes, not on every pass of a full range.
        let mut unplaced = 0;
        loop {
            tokio::select! {
                changed = model.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let snapshot = model.borrow_and_update().clone();
            if snapshot.revision == 0 || !needs_work(&snapshot) {
                continue;
            }
            let range = snapshot.mesh_config().service_address_cidr();
            for _ in 0..PASSES {
                match reconcile(&*store, range).await {
                    Ok(o) if o.lost_races > 0 => continue,
                    Ok(o) => {
                        if o.unplaced != unplaced && o.unplaced > 0 {
                            tracing::error!(
                                %range,
                                unplaced = o.unplaced,
                                "the virtual IP range is full; some services have no VIP (widen MeshConfig spec.serviceAddressRange)"
                            );
                        }
                        unplaced = o.unplaced;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reconcile service virtual IPs; retrying later");
                        break;
                    }
                }
            }
        }
    })
}
