//! The proxy's copy of its config and the rule that guards it: a response becomes a candidate
//! (the cache with that one type replaced), the whole candidate set goes to `apply`, and only if
//! `apply` accepts it does the candidate become the cache. A rejected or undecodable response
//! leaves the cache exactly as it was — nothing is half-applied.
//!
//! Before the first config the proxy holds nothing worth serving, so the first response of each
//! subscribed type is staged, and `apply` sees them all at once: the proxy's first snapshot is
//! complete, never "services but no routes yet". If that first set is rejected, the staged
//! responses stay, and each later response retries the set with its type replaced.
//!
//! Every type is a persistent map of shared resources ([`TypeResources`]): a candidate is the
//! cache's map with a few entries replaced (the rest shared), and the set handed to `apply` is a
//! handful of map roots, so the cost of an update follows the update, not the mesh.
use super::resources::{Resources, TypeResources};
use super::{ClientNack, ClientStatus, TypeChange, Update};
use crate::server::registry::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) type ApplyFn = dyn Fn(Update) -> Result<(), String> + Send + Sync;

/// One type as the proxy holds it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeCache {
    /// The type's version (SotW `version_info`, delta `system_version_info`).
    pub version: String,
    /// By resource name.
    pub resources: TypeResources,
}

/// A decoded response: what the type would become.
pub(crate) struct Candidate {
    pub state: TypeCache,
    pub change: TypeChange,
}

/// What to tell the server about one response.
pub(crate) enum Verdict {
    Ack {
        type_url: String,
        nonce: String,
        version: String,
    },
    /// `version` is the last good version of the type (what the proxy keeps).
    Nack {
        type_url: String,
        nonce: String,
        version: String,
        error: String,
    },
}

struct Staged {
    candidate: Candidate,
    nonce: String,
    answered: bool,
}

pub(crate) struct Applier {
    types: Vec<String>,
    cache: BTreeMap<String, TypeCache>,
    initialized: bool,
    staged: BTreeMap<String, Staged>,
    apply: Arc<ApplyFn>,
    status: watch::Sender<ClientStatus>,
}

impl Applier {
    pub fn new(
        types: Vec<String>,
        apply: Arc<ApplyFn>,
        status: watch::Sender<ClientStatus>,
    ) -> Self {
        Applier {
            types,
            cache: BTreeMap::new(),
            initialized: false,
            staged: BTreeMap::new(),
            apply,
            status,
        }
    }

    pub fn subscribes(&self, type_url: &str) -> bool {
        self.types.iter().any(|t| t == type_url)
    }

    pub fn types(&self) -> &[String] {
        &self.types
    }

    /// A new stream: staged responses belonged to the old one; the new server resends them.
    pub fn new_session(&mut self) {
        self.staged.clear();
    }

    pub fn status(&self) -> &watch::Sender<ClientStatus> {
        &self.status
    }

    /// The last good version of a type ("" before the first config).
    pub fn version(&self, type_url: &str) -> String {
        self.cache
            .get(type_url)
            .map(|c| c.version.clone())
            .unwrap_or_default()
    }

    /// Resource versions held, for delta's `initial_resource_versions`.
    pub fn resource_versions(&self, type_url: &str) -> BTreeMap<String, String> {
        self.cache
            .get(type_url)
            .map(|c| {
                c.resources
                    .iter()
                    .map(|(n, r)| (n.clone(), r.version.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What a response applies to: the staged state during the first sync, else the cache
    /// (a cheap clone: the maps are persistent).
    pub fn base(&self, type_url: &str) -> TypeCache {
        if let Some(s) = self.staged.get(type_url) {
            return s.candidate.state.clone();
        }
        self.cache.get(type_url).cloned().unwrap_or_default()
    }

    /// Takes a decoded response (or why it could not be decoded) and says what to answer.
    pub fn receive(
        &mut self,
        type_url: String,
        nonce: String,
        candidate: Result<Candidate, String>,
        endpoint: &str,
    ) -> Vec<Verdict> {
        let candidate = match candidate {
            Ok(c) => c,
            Err(error) => return vec![self.reject(type_url, nonce, error)],
        };
        if !self.initialized {
            return self.stage(type_url, nonce, candidate, endpoint);
        }
        let change = &candidate.change;
        if change.updated.is_empty() && change.removed.is_empty() {
            // Nothing the proxy does not already hold: no rebuild, only the version moves.
            if let Some(c) = self.cache.get_mut(&type_url) {
                c.version = candidate.state.version.clone();
            }
            let version = candidate.state.version;
            return vec![Verdict::Ack {
                type_url,
                nonce,
                version,
            }];
        }
        let Candidate { state, change } = candidate;
        let lookup = |t: &str| {
            if t == type_url {
                Some(&state)
            } else {
                self.cache.get(t)
            }
        };
        match self.offer(lookup, vec![change], endpoint) {
            Ok(()) => {
                self.cache.insert(type_url.clone(), state);
                self.publish();
                let version = self.version(&type_url);
                vec![Verdict::Ack {
                    type_url,
                    nonce,
                    version,
                }]
            }
            Err(error) => vec![self.reject(type_url, nonce, error)],
        }
    }

    fn stage(
        &mut self,
        type_url: String,
        nonce: String,
        candidate: Candidate,
        endpoint: &str,
    ) -> Vec<Verdict> {
        let staged = Staged {
            candidate,
            nonce,
            answered: false,
        };
        self.staged.insert(type_url, staged);
        if !self.types.iter().all(|t| self.staged.contains_key(t)) {
            return Vec::new();
        }
        let changes = self
            .staged
            .values()
            .map(|s| s.candidate.change.clone())
            .collect();
        let lookup = |t: &str| self.staged.get(t).map(|s| &s.candidate.state);
        match self.offer(lookup, changes, endpoint) {
            Ok(()) => {
                self.initialized = true;
                let mut verdicts = Vec::new();
                for (type_url, s) in std::mem::take(&mut self.staged) {
                    verdicts.push(Verdict::Ack {
                        type_url: type_url.clone(),
                        nonce: s.nonce,
                        version: s.candidate.state.version.clone(),
                    });
                    self.cache.insert(type_url, s.candidate.state);
                }
                self.publish();
                verdicts
            }
            Err(error) => {
                let unanswered: Vec<(String, String)> = self
                    .staged
                    .iter_mut()
                    .filter(|(_, s)| !s.answered)
                    .map(|(t, s)| {
                        s.answered = true;
                        (t.clone(), s.nonce.clone())
                    })
                    .collect();
                unanswered
                    .into_iter()
                    .map(|(t, nonce)| self.reject(t, nonce, error.clone()))
                    .collect()
            }
        }
    }

    /// Hands the complete candidate set (each type as `lookup` finds it) to the proxy.
    fn offer<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a TypeCache>,
        changes: Vec<TypeChange>,
        endpoint: &str,
    ) -> Result<(), String> {
        let mut resources = Resources::default();
        let mut versions = BTreeMap::new();
        for t in &self.types {
            if let Some(c) = lookup(t) {
                resources.set_type(t, c.resources.clone());
                versions.insert(t.clone(), c.version.clone());
            }
        }
        let update = Update {
            resources,
            versions,
            changes,
            endpoint: endpoint.to_string(),
        };
        (self.apply)(update)
    }

    fn reject(&self, type_url: String, nonce: String, error: String) -> Verdict {
        tracing::warn!(type_url, %error, "config from the control plane rejected; keeping the last good config");
        self.status.send_modify(|s| {
            s.last_error = Some(error.clone());
            s.last_nack = Some(ClientNack {
                type_url: type_url.clone(),
                error: error.clone(),
                at_unix_ms: now_ms(),
            });
        });
        let version = self.version(&type_url);
        Verdict::Nack {
            type_url,
            nonce,
            version,
            error,
        }
    }

    fn publish(&self) {
        let versions = self
            .cache
            .iter()
            .map(|(t, c)| (t.clone(), c.version.clone()))
            .collect();
        let resources = self.cache.values().map(|c| c.resources.len()).sum();
        self.status.send_modify(|s| {
            s.ready = true;
            s.versions = versions;
            s.resources = resources;
            s.updates_applied += 1;
            s.last_applied_unix_ms = Some(now_ms());
        });
    }
}
