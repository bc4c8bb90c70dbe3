//! Incremental (delta) ADS: responses carry only resources that are new or changed for this
//! proxy, and the names of those it should drop.
//!
//! The stream tracks, per type, which version of each resource the proxy holds: what it
//! reported in `initial_resource_versions` when it connected (so a reconnect, even to another
//! replica, sends only what differs), plus everything sent since. A NACKed resource counts as
//! held, so it is not re-sent until it changes; the proxy meanwhile keeps its last good copy.
//! The first request of each type is always answered, possibly with nothing, so a new proxy
//! learns that it is in sync.
//!
//! On-demand discovery rides on named subscriptions: a proxy that names the Services it wants
//! (instead of a wildcard) is told about a name that does not exist — or that it may not see —
//! by finding it in `removed_resources` once, as Envoy's on-demand CDS expects, so its first call
//! to an unknown service fails at once instead of waiting out a timeout. Such a stream gets the
//! Service type last in each burst: a proxy treats a service as known when its Service arrives,
//! so its endpoints, routes and policies are already in place for the first call.
use super::registry::{Mode, NodeHandle};
use super::stream::{
    check_names, resources_of, Nonces, Protocol, ServiceScope, Subscription, Types,
};
use super::view::{TypeResources, View};
use crate::pb::envoy::config::core::v3::{ControlPlane, Node};
use crate::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use tonic::Status;

/// Responses remembered per type for matching ACKs; older ones count as superseded.
const MAX_IN_FLIGHT: usize = 16;
/// Resource bytes per response: a type bigger than this (the Workloads of a 10 000-service
/// mesh are tens of MB) goes out in several responses, each well under any peer's message
/// limit, instead of one the peer must refuse.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

pub(crate) struct Delta {
    node: NodeHandle,
    control_plane: Option<ControlPlane>,
    nonces: Nonces,
    types: Types<TypeState>,
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// Resource name → the version the proxy holds, as far as this stream knows.
    held: HashMap<String, String>,
    seen: Option<Arc<TypeResources>>,
    dirty: bool,
    must_answer: bool,
    /// `(nonce, system version)` of responses not yet acknowledged, oldest first.
    in_flight: VecDeque<(String, String)>,
    /// Subscribed names already reported as absent (so each is reported once, not per push).
    reported_absent: BTreeSet<String>,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const MODE: Mode = Mode::Delta;

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn new(node: NodeHandle, control_plane: Option<ControlPlane>) -> Self {
        Delta {
            node,
            control_plane,
            nonces: Nonces::default(),
            types: Types::default(),
        }
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest, _view: &View) -> Result<(), Status> {
        let type_url = req.type_url.as_str();
        let (st, new) = self.types.get_or_insert(type_url, TypeState::default)?;
        if new {
            // Wildcard unless the first request names resources (and not "*").
            st.sub.wildcard = req.resource_names_subscribe.is_empty()
                || req.resource_names_subscribe.iter().any(|n| n == "*");
            st.held = req.initial_resource_versions.into_iter().collect();
            st.must_answer = true;
            st.dirty = true;
        }
        if !req.response_nonce.is_empty() {
            match st
                .in_flight
                .iter()
                .position(|(n, _)| *n == req.response_nonce)
            {
                Some(pos) => {
                    let version = st.in_flight[pos].1.clone();
                    match &req.error_detail {
                        Some(error) => {
                            // Kept: the proxy may accept it later (its first config is retried
                            // whole when another type arrives) and then ACK this nonce.
                            st.in_flight.drain(..pos);
                            tracing::warn!(
                                node = %self.node.node_id(), type_url, version = %version,
                                error = %error.message, "proxy rejected config (NACK)"
                            );
                            self.node.nacked(type_url, &version, &error.message);
                        }
                        None => {
                            st.in_flight.drain(..=pos);
                            self.node.acked(type_url, &version);
                        }
                    }
                }
                None => {
                    tracing::debug!(type_url, nonce = %req.response_nonce, "reply to an unknown nonce")
                }
            }
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                st.sub.wildcard = true;
            } else {
                st.sub.names.insert(name);
            }
            st.dirty = true;
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                st.sub.wildcard = false;
            } else {
                st.sub.names.remove(&name);
            }
            let sub = &st.sub;
            st.held.retain(|n, _| sub.wants(n));
            st.reported_absent.retain(|n| sub.wants(n));
            st.dirty = true;
        }
        if new && !st.sub.wildcard {
            // Versions reported for names the proxy does not subscribe to are not tracked.
            let sub = &st.sub;
            st.held.retain(|n, _| sub.wants(n));
        }
        check_names(&st.sub)
    }

    fn on_view(&mut self, view: &View) {
        for (type_url, st) in self.types.iter_mut() {
            let current = resources_of(view, type_url);
            if st.seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &current)) {
                st.dirty = true;
            }
        }
    }

    fn wants_to_send(&self) -> bool {
        self.types.iter().any(|(_, st)| st.dirty)
    }

    fn service_scope(&self) -> ServiceScope {
        match self
            .types
            .iter()
            .find(|(t, _)| t.as_str() == crate::resource::SERVICE)
        {
            None => ServiceScope::NotYet,
            Some((_, st)) if st.sub.wildcard => ServiceScope::All,
            Some((_, st)) => ServiceScope::Named(st.sub.names.clone()),
        }
    }

    fn next_response(&mut self, view: &View) -> Option<DeltaDiscoveryResponse> {
        // A stream that names its Services gets them after everything they depend on.
        let services_last = matches!(self.service_scope(), ServiceScope::Named(_))
            && self
                .types
                .iter()
                .any(|(t, st)| st.dirty && t.as_str() != crate::resource::SERVICE);
        for (type_url, st) in self.types.iter_mut() {
            if !st.dirty || (services_last && type_url.as_str() == crate::resource::SERVICE) {
                continue;
            }
            st.dirty = false;
            let res = resources_of(view, type_url);
            st.seen = Some(res.clone());
            // A response holds at most about MAX_RESPONSE_BYTES of resources (always at least
            // one); the rest of the type goes in the next response.
            let mut budget = MAX_RESPONSE_BYTES;
            let mut more = false;
            let resources: Vec<Resource> = st
                .sub
                .select(&res)
                .filter(|(name, r)| st.held.get(*name) != Some(&r.version))
                .take_while(|(name, r)| {
                    let size = r.any.value.len() + name.len() + r.version.len() + 32;
                    if size > budget && budget < MAX_RESPONSE_BYTES {
                        more = true;
                        return false;
                    }
                    budget = budget.saturating_sub(size);
                    true
                })
                .map(|(name, r)| Resource {
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    name: name.clone(),
                    aliases: Vec::new(),
                    ttl: None,
                })
                .collect();
            let mut removed: Vec<String> = st
                .held
                .keys()
                .filter(|n| res.get(n).is_none())
                .cloned()
                .collect();
            // Named but not there: said once, so the proxy need not wait to find out.
            let absent: Vec<String> = if st.sub.wildcard {
                Vec::new()
            } else {
                st.sub
                    .names
                    .iter()
                    .filter(|n| {
                        res.get(n).is_none()
                            && !st.held.contains_key(*n)
                            && !st.reported_absent.contains(*n)
                    })
                    .cloned()
                    .collect()
            };
            st.reported_absent.retain(|n| res.get(n).is_none());
            st.reported_absent.extend(absent.iter().cloned());
            removed.extend(absent);
            removed.sort();
            if resources.is_empty() && removed.is_empty() && !st.must_answer {
                continue;
            }
            st.must_answer = false;
            st.dirty = more;
            for r in &resources {
                st.held.insert(r.name.clone(), r.version.clone());
            }
            for n in &removed {
                st.held.remove(n);
            }
            let version = st.sub.version(&res);
            let nonce = self.nonces.next();
            st.in_flight.push_back((nonce.clone(), version.clone()));
            if st.in_flight.len() > MAX_IN_FLIGHT {
                st.in_flight.pop_front();
            }
            self.node
                .sent(type_url, &version, &nonce, resources.len() + removed.len());
            return Some(DeltaDiscoveryResponse {
                system_version_info: version,
                resources,
                type_url: type_url.clone(),
                nonce,
                removed_resources: removed,
                control_plane: self.control_plane.clone(),
            });
        }
        None
    }
}
