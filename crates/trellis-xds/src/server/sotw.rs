//! State-of-the-world ADS: each response carries every resource of one type the node
//! subscribes to, under a version that is a digest of that set.
//!
//! A type is sent when its version differs from the last one sent on this stream. A NACK
//! leaves the rejected version as "last sent", so the same bad config is never re-sent in a
//! loop; the next change of the type (a fix, or a rollback) goes out as usual. A proxy that
//! reconnects saying it holds the current version (`version_info` on its first request) is not
//! sent anything for that type.
use super::registry::{Mode, NodeHandle};
use super::stream::{check_names, resources_of, Nonces, Protocol, Subscription, Types};
use super::view::{TypeResources, View};
use crate::pb::envoy::config::core::v3::{ControlPlane, Node};
use crate::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::sync::Arc;
use tonic::Status;

pub(crate) struct Sotw {
    node: NodeHandle,
    control_plane: Option<ControlPlane>,
    nonces: Nonces,
    types: Types<TypeState>,
}

#[derive(Default)]
struct TypeState {
    sub: Subscription,
    /// The resources last looked at; an unchanged `Arc` means nothing to do.
    seen: Option<Arc<TypeResources>>,
    /// Version and nonce of the last response (nonce empty: the proxy held it on connect).
    sent: Option<(String, String)>,
    dirty: bool,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const MODE: Mode = Mode::Sotw;

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn new(node: NodeHandle, control_plane: Option<ControlPlane>) -> Self {
        Sotw {
            node,
            control_plane,
            nonces: Nonces::default(),
            types: Types::default(),
        }
    }

    fn on_request(&mut self, req: DiscoveryRequest, view: &View) -> Result<(), Status> {
        let type_url = req.type_url.as_str();
        let (st, _) = self.types.get_or_insert(type_url, TypeState::default)?;
        let sub = Subscription {
            wildcard: req.resource_names.is_empty(),
            names: req.resource_names.iter().cloned().collect(),
        };
        check_names(&sub)?;
        if req.response_nonce.is_empty() {
            // A (re)subscription: answer unless the proxy already holds the current version.
            st.sub = sub;
            st.seen = None;
            st.sent = None;
            st.dirty = true;
            let current = st.sub.version(&resources_of(view, type_url));
            if !req.version_info.is_empty() && req.version_info == current {
                self.node.held(type_url, &current);
                st.sent = Some((current, String::new()));
            }
            return Ok(());
        }
        match &st.sent {
            Some((version, nonce)) if *nonce == req.response_nonce => match &req.error_detail {
                Some(error) => {
                    tracing::warn!(
                        node = %self.node.node_id(), type_url, version = %version,
                        error = %error.message, "proxy rejected config (NACK)"
                    );
                    self.node.nacked(type_url, version, &error.message);
                }
                None => self.node.acked(type_url, &req.version_info),
            },
            // A reply to a response that a newer one superseded: ignored, as xDS says.
            _ => return Ok(()),
        }
        if sub != st.sub {
            st.sub = sub;
            st.dirty = true;
        }
        Ok(())
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

    fn next_response(&mut self, view: &View) -> Option<DiscoveryResponse> {
        for (type_url, st) in self.types.iter_mut() {
            if !st.dirty {
                continue;
            }
            st.dirty = false;
            let res = resources_of(view, type_url);
            st.seen = Some(res.clone());
            let version = st.sub.version(&res);
            if st.sent.as_ref().is_some_and(|(v, _)| *v == version) {
                continue;
            }
            let resources: Vec<_> = st.sub.select(&res).map(|(_, r)| r.any.clone()).collect();
            let nonce = self.nonces.next();
            self.node.sent(type_url, &version, &nonce, resources.len());
            st.sent = Some((version.clone(), nonce.clone()));
            return Some(DiscoveryResponse {
                version_info: version,
                resources,
                canary: false,
                type_url: type_url.clone(),
                nonce,
                control_plane: self.control_plane.clone(),
            });
        }
        None
    }
}
