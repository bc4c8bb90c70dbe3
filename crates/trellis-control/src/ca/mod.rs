//! The mesh certificate authority as the control plane runs it: created once, kept in the
//! store, followed by every replica.
//!
//! Why it works this way:
//! - **One CA for all replicas.** The CA (its signers and their private keys) is the
//!   `CertificateAuthority/default/mesh` resource. On start a replica reads it; if it is absent,
//!   the replica makes one (from `--ca-cert/--ca-key` when given, else a generated root for the
//!   MeshConfig's trust domain, `cluster.local` by default) and writes it with [`Store::create`],
//!   which only one writer can win: a replica that loses re-reads and uses the winner's CA.
//! - **Rotation reaches every replica.** Changes ([`MeshCa::add_root`], [`MeshCa::activate`],
//!   [`MeshCa::retire`]) are conditional replaces of that resource (a concurrent change fails
//!   with a conflict instead of being lost); every replica follows the resource through its
//!   [`Model`] and signs with the newest version it has seen.
//! - **The trust bundle follows the CA.** `TrustBundle/default/mesh` (the roots of every signer)
//!   is what proxies receive over xDS. Every replica rewrites it whenever it differs from the
//!   CA's roots, deciding from the CA as the store holds it (not a possibly stale copy), so
//!   replicas converge on one bundle.
//! - **The trust domain is the CA's.** A root is made for one trust domain. If the MeshConfig's
//!   `spec.trustDomain` later differs from the stored CA's, the control plane logs a warning and
//!   keeps issuing identities in the CA's trust domain; changing the trust domain of a running
//!   mesh needs a new CA.
//! - **The join token lives with the CA.** Unless the operator passes one (`--join-token`), the
//!   token is generated on first start (32 random bytes, hex) and kept in the CA resource's
//!   `spec.joinToken`, so restarts and other replicas accept the same token. A token passed
//!   explicitly is used instead and is not written to the store.
//!
//! Private keys never appear in logs or `Debug` output, and the CA resource never leaves the
//! control plane (the API and the xDS views leave it out).
mod resources;
#[cfg(test)]
mod tests;

pub use resources::{bundle_key, ca_key, BUNDLE_KIND, CA_KIND};

use crate::auth::{JoinToken, TokenError};
use crate::model::Model;
use crate::server::SuppliedCa;
use crate::store::{Revision, Store, StoreError, Stored};
use resources::{bundle_resource, bundle_spec, bundle_spec_of, ca_from_spec, ca_resource, ca_spec};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use trellis_api::ca::SecretText;
use trellis_api::{MeshConfigSpec, Resource};
use trellis_identity::ca::{CaError, RootOptions};
use trellis_identity::spiffe::SpiffeIdError;
use trellis_identity::{CertBundle, CertificateAuthority, SpiffeId};

/// How often a replica re-checks the trust bundle even when nothing changed (a write that failed
/// while the store was away is retried by then).
const RESYNC: Duration = Duration::from_secs(30);
/// Tries of a read-modify-write that keeps meeting concurrent writers.
const TRIES: usize = 5;

/// Why the CA could not be set up on start.
#[derive(Debug, thiserror::Error)]
pub enum CaSetupError {
    #[error("cannot read or write the mesh CA in the store: {0}")]
    Store(#[from] StoreError),
    #[error("the stored CertificateAuthority {key} cannot be used: {source}")]
    Stored { key: String, source: CaError },
    #[error("the supplied CA (--ca-cert/--ca-key) cannot be used: {0}")]
    Supplied(CaError),
    #[error("cannot generate the mesh root CA: {0}")]
    Generate(CaError),
    #[error("join token: {0}")]
    Token(#[from] TokenError),
    #[error("the CertificateAuthority resource kept changing while this control plane started; start it again")]
    Contended,
}

/// Why a CA change asked for through the API failed.
#[derive(Debug, thiserror::Error)]
pub enum CaChangeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CA refused the change (unknown signer, retiring the active one, ...).
    #[error(transparent)]
    Refused(CaError),
    #[error("the stored CertificateAuthority cannot be used: {0}")]
    Stored(CaError),
    #[error("the CertificateAuthority resource is missing from the store; a control plane recreates it when it next starts")]
    Missing,
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Identity(#[from] SpiffeIdError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// The CA in force and the store version it was read from.
#[derive(Debug)]
pub struct Loaded {
    pub ca: CertificateAuthority,
    pub version: Revision,
}

/// A signed certificate with what the requester needs to verify its peers.
#[derive(Debug, Clone)]
pub struct Issued {
    pub bundle: CertBundle,
    pub trust_domain: String,
    pub trust_bundle_pem: String,
}

/// The control plane's CA: the one in force, the join token, and the follower keeping both in
/// step with the store.
pub struct MeshCa {
    store: Arc<dyn Store>,
    current: watch::Sender<Arc<Loaded>>,
    token: JoinToken,
    issued: AtomicU64,
    /// The (MeshConfig, CA) trust domain pair last warned about.
    warned: Mutex<Option<(String, String)>>,
    /// The latest certificate this replica issued per identity: (not before, not after), for
    /// the dashboard. Bounded by the mesh's identities (one per namespace and service).
    latest: Mutex<std::collections::HashMap<String, (SystemTime, SystemTime)>>,
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cur = self.current();
        f.debug_struct("MeshCa")
            .field("trust_domain", &cur.ca.trust_domain())
            .field("active", &cur.ca.active_id())
            .field("version", &cur.version)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Loads the CA from the store, creating it on first start, settles the join token (the one
    /// given, else the stored one, generated if there is none), brings the trust bundle in step,
    /// and starts following `model` for changes made through other replicas.
    pub async fn start(
        store: Arc<dyn Store>,
        model: watch::Receiver<Arc<Model>>,
        supplied: Option<&SuppliedCa>,
        join_token: Option<&str>,
    ) -> Result<Arc<Self>, CaSetupError> {
        let given = join_token.map(JoinToken::new).transpose()?;
        let mesh = stored_mesh_config(&*store).await?;
        let (loaded, stored_token) = load_or_create(&*store, supplied, &mesh.trust_domain).await?;
        let token = match (given, stored_token) {
            (Some(t), _) => t,
            (None, Some(t)) => JoinToken::new(&t.0)?,
            (None, None) => store_new_token(&*store).await?,
        };
        let this = Arc::new(Self {
            store,
            current: watch::Sender::new(Arc::new(loaded)),
            token,
            issued: AtomicU64::new(0),
            latest: Default::default(),
            warned: Mutex::new(None),
        });
        this.check_trust_domain(&mesh.trust_domain);
        this.sync_bundle().await?;
        this.spawn_follower(model);
        Ok(this)
    }

    /// The CA in force.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.borrow().clone()
    }

    /// The join token proxies and the CLI must present.
    pub fn token(&self) -> &JoinToken {
        &self.token
    }

    /// Certificates issued by this replica since it started.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// When this replica last issued a certificate for `spiffe_id`: (not before, not after).
    pub fn latest_issued(&self, spiffe_id: &str) -> Option<(SystemTime, SystemTime)> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(spiffe_id)
            .copied()
    }

    /// Signs `csr_pem` for `spiffe://<CA trust domain>/ns/<namespace>/sa/<service>`, valid for
    /// `lifetime`. Only the CSR's public key is used (see `trellis_identity::ca`).
    pub fn issue(
        &self,
        csr_pem: &str,
        namespace: &str,
        service: &str,
        lifetime: Duration,
    ) -> Result<Issued, IssueError> {
        let loaded = self.current();
        let ca = &loaded.ca;
        let id = SpiffeId::new(ca.trust_domain(), namespace, service)?;
        let bundle = ca.sign_csr(csr_pem, &id, lifetime)?;
        let issued = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                bundle.spiffe_id.to_string(),
                (bundle.not_before, bundle.not_after),
            );
        tracing::debug!(
            spiffe_id = %bundle.spiffe_id,
            serial = %bundle.serial,
            signer = ca.active_id(),
            issued,
            "issued a workload certificate"
        );
        Ok(Issued {
            bundle,
            trust_domain: ca.trust_domain().to_string(),
            trust_bundle_pem: ca.trust_bundle_pem(),
        })
    }

    /// Generates a new root and adds it as trusted but not yet signing; returns its id.
    pub async fn add_root(&self) -> Result<String, CaChangeError> {
        let id = self
            .change(|ca| ca.add_root(&RootOptions::default()))
            .await?;
        tracing::info!(signer = %id, "added a new root to the mesh CA (trusted, not signing yet)");
        Ok(id)
    }

    /// Makes signer `id` sign every certificate issued from now on.
    pub async fn activate(&self, id: &str) -> Result<(), CaChangeError> {
        self.change(|ca| ca.activate(id)).await?;
        tracing::info!(signer = %id, "mesh CA signer activated");
        Ok(())
    }

    /// Removes signer `id` (not the active one) and its root from the trust bundle.
    pub async fn retire(&self, id: &str) -> Result<(), CaChangeError> {
        self.change(|ca| ca.retire(id)).await?;
        tracing::info!(signer = %id, "mesh CA signer retired");
        Ok(())
    }

    /// Read-modify-write of the stored CA, conditional on the version read: a change made
    /// meanwhile through another replica fails with a conflict rather than being overwritten.
    async fn change<T>(
        &self,
        f: impl FnOnce(&mut CertificateAuthority) -> Result<T, CaError>,
    ) -> Result<T, CaChangeError> {
        let stored = get(&*self.store, &ca_key())
            .await?
            .ok_or(CaChangeError::Missing)?;
        let spec = ca_spec(&stored).ok_or(CaChangeError::Missing)?;
        let mut ca = ca_from_spec(spec).map_err(CaChangeError::Stored)?;
        let out = f(&mut ca).map_err(CaChangeError::Refused)?;
        let resource = ca_resource(&ca, spec.join_token.clone());
        let written = self.store.replace(resource, Some(stored.version)).await?;
        self.install(ca, written.version);
        if let Err(e) = self.sync_bundle().await {
            tracing::warn!(error = %e, "cannot update the trust bundle now; retrying in the background");
        }
        Ok(out)
    }

    /// Uses `ca` from now on, unless a newer version is already in force.
    fn install(&self, ca: CertificateAuthority, version: Revision) -> bool {
        let mut next = Some(Arc::new(Loaded { ca, version }));
        self.current.send_if_modified(|cur| match next.take() {
            Some(n) if version > cur.version => {
                *cur = n;
                true
            }
            _ => false,
        })
    }

    /// Installs the stored CA if it is newer than the one in force.
    async fn refresh(&self) -> Result<(), StoreError> {
        let Some(stored) = get(&*self.store, &ca_key()).await? else {
            return Ok(());
        };
        self.adopt(&stored);
        Ok(())
    }

    /// Installs the CA of `stored` if it is newer; a CA that cannot be used is logged and skipped.
    fn adopt(&self, stored: &Stored) {
        if stored.version <= self.current().version {
            return;
        }
        let Some(spec) = ca_spec(stored) else {
            return;
        };
        match ca_from_spec(spec) {
            Ok(ca) => {
                let (active, signers) = (ca.active_id().to_string(), ca.signers().len());
                if self.install(ca, stored.version) {
                    tracing::info!(version = stored.version, %active, signers, "following a change of the mesh CA");
                }
            }
            Err(e) => tracing::warn!(
                version = stored.version,
                error = %e,
                "the stored CertificateAuthority cannot be used; still signing with the previous one"
            ),
        }
    }

    /// Writes the trust bundle if it differs from the roots of the CA as the store holds it.
    pub async fn sync_bundle(&self) -> Result<(), StoreError> {
        let mut last = None;
        for _ in 0..TRIES {
            self.refresh().await?;
            let want = bundle_spec(&self.current().ca);
            let roots = want.roots.len();
            let result = match get(&*self.store, &bundle_key()).await? {
                Some(s) if bundle_spec_of(&s) == Some(&want) => return Ok(()),
                Some(s) => {
                    self.store
                        .replace(bundle_resource(want), Some(s.version))
                        .await
                }
                None => self.store.create(bundle_resource(want)).await,
            };
            match result {
                Ok(s) => {
                    tracing::info!(roots, version = s.version, "trust bundle updated");
                    return Ok(());
                }
                Err(
                    e @ (StoreError::Conflict { .. }
                    | StoreError::NotFound { .. }
                    | StoreError::AlreadyExists { .. }),
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        last.map_or(Ok(()), Err)
    }

    /// Warns (once per pair) when the MeshConfig names another trust domain than the CA's.
    fn check_trust_domain(&self, mesh_td: &str) {
        let ca_td = self.current().ca.trust_domain().to_string();
        let Ok(mut warned) = self.warned.lock() else {
            return;
        };
        if mesh_td == ca_td {
            *warned = None;
            return;
        }
        let pair = (mesh_td.to_string(), ca_td);
        if warned.as_ref() != Some(&pair) {
            tracing::warn!(
                mesh_config = %pair.0,
                ca = %pair.1,
                "MeshConfig spec.trustDomain is {:?}, but the mesh CA issues identities in {:?}; \
                 certificates keep the CA's trust domain (changing the trust domain of a running \
                 mesh needs a new CA)",
                pair.0,
                pair.1
            );
            *warned = Some(pair);
        }
    }

    fn spawn_follower(self: &Arc<Self>, mut model: watch::Receiver<Arc<Model>>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESYNC);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    changed = model.changed() => if changed.is_err() { return },
                    _ = tick.tick() => {}
                }
                let Some(this) = weak.upgrade() else {
                    return;
                };
                let snapshot = model.borrow_and_update().clone();
                this.observe(&snapshot).await;
            }
        });
    }

    /// One look at the model: adopt a newer CA, warn about a trust domain mismatch, and rewrite
    /// the trust bundle if it is out of step.
    async fn observe(&self, model: &Model) {
        if model.revision == 0 {
            return; // not listed yet
        }
        match model.items.get(&ca_key()) {
            Some(stored) => self.adopt(stored),
            // Only a model as new as the CA in force can tell that the CA was deleted; an older
            // one (listed before this replica created the CA) simply has not seen it yet.
            None if model.revision >= self.current().version => self.restore().await,
            None => {}
        }
        self.check_trust_domain(&model.mesh_config().trust_domain);
        let want = bundle_spec(&self.current().ca);
        let have = model.items.get(&bundle_key()).and_then(bundle_spec_of);
        if have != Some(&want) {
            if let Err(e) = self.sync_bundle().await {
                tracing::warn!(error = %e, "cannot update the trust bundle; retrying later");
            }
        }
    }

    /// The CA resource was deleted behind the control plane's back: write back the CA in force
    /// (with the join token in force), so a restart does not generate a different one.
    async fn restore(&self) {
        tracing::warn!("the CertificateAuthority resource disappeared from the store; writing back the CA this replica holds");
        let token = Some(SecretText(self.token.expose().to_string()));
        let resource = ca_resource(&self.current().ca, token);
        match self.store.create(resource).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "cannot write the mesh CA back; retrying later"),
        }
    }
}

async fn get(
    store: &dyn Store,
    key: &crate::store::ResourceKey,
) -> Result<Option<Stored>, StoreError> {
    store.get(&key.kind, &key.namespace, &key.name).await
}

/// The MeshConfig in the store (defaults if there is none).
async fn stored_mesh_config(store: &dyn Store) -> Result<MeshConfigSpec, StoreError> {
    let listing = store.list(Some("MeshConfig"), None).await?;
    Ok(listing
        .items
        .iter()
        .find_map(|s| match &s.resource {
            Resource::MeshConfig(m) => Some(m.spec.clone()),
            _ => None,
        })
        .unwrap_or_default())
}

/// The stored CA, or a new one this replica managed to create; with the stored join token.
async fn load_or_create(
    store: &dyn Store,
    supplied: Option<&SuppliedCa>,
    trust_domain: &str,
) -> Result<(Loaded, Option<SecretText>), CaSetupError> {
    let supplied_id = match supplied {
        Some(s) => Some(
            CertificateAuthority::from_pem(trust_domain, &s.cert_chain_pem, &s.key_pem)
                .map_err(CaSetupError::Supplied)?
                .active_id()
                .to_string(),
        ),
        None => None,
    };
    for _ in 0..TRIES {
        if let Some(stored) = get(store, &ca_key()).await? {
            let spec = ca_spec(&stored).ok_or(CaSetupError::Contended)?;
            let ca = ca_from_spec(spec).map_err(|source| CaSetupError::Stored {
                key: ca_key().to_string(),
                source,
            })?;
            if let Some(id) = &supplied_id {
                if !ca.signers().iter().any(|s| &s.id == id) {
                    tracing::warn!(
                        stored_active = ca.active_id(),
                        supplied = %id,
                        "the store already holds the mesh CA; the supplied --ca-cert/--ca-key are ignored"
                    );
                }
            }
            tracing::info!(
                trust_domain = ca.trust_domain(),
                active = ca.active_id(),
                signers = ca.signers().len(),
                version = stored.version,
                "loaded the mesh CA from the store"
            );
            let token = spec.join_token.clone();
            return Ok((
                Loaded {
                    ca,
                    version: stored.version,
                },
                token,
            ));
        }
        let (ca, origin) = match supplied {
            Some(s) => (
                CertificateAuthority::from_pem(trust_domain, &s.cert_chain_pem, &s.key_pem)
                    .map_err(CaSetupError::Supplied)?,
                "supplied",
            ),
            None => (
                CertificateAuthority::generate(trust_domain, &RootOptions::default())
                    .map_err(CaSetupError::Generate)?,
                "generated",
            ),
        };
        let token = SecretText(JoinToken::generate()?.expose().to_string());
        match store.create(ca_resource(&ca, Some(token.clone()))).await {
            Ok(written) => {
                tracing::info!(
                    trust_domain,
                    active = ca.active_id(),
                    origin,
                    version = written.version,
                    "created the mesh CA"
                );
                let loaded = Loaded {
                    ca,
                    version: written.version,
                };
                return Ok((loaded, Some(token)));
            }
            // Another replica created it first: use theirs.
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CaSetupError::Contended)
}

/// Generates a join token and keeps it in the stored CA (or takes the one a replica racing this
/// one stored first).
async fn store_new_token(store: &dyn Store) -> Result<JoinToken, CaSetupError> {
    for _ in 0..TRIES {
        let stored = get(store, &ca_key())
            .await?
            .ok_or(CaSetupError::Contended)?;
        let Resource::CertificateAuthority(mut ca) = stored.resource else {
            return Err(CaSetupError::Contended);
        };
        if let Some(t) = &ca.spec.join_token {
            return Ok(JoinToken::new(&t.0)?);
        }
        let token = JoinToken::generate()?;
        ca.spec.join_token = Some(SecretText(token.expose().to_string()));
        match store
            .replace(Resource::CertificateAuthority(ca), Some(stored.version))
            .await
        {
            Ok(_) => {
                tracing::info!("generated a join token and stored it with the mesh CA");
                return Ok(token);
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CaSetupError::Contended)
}
