use super::*;
use crate::model;
use crate::test_support::{open_store, resource, TempDir};
use trellis_identity::WorkloadKey;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A model that never changes: the follower stays idle, so a test controls every step.
fn still_model() -> watch::Receiver<Arc<Model>> {
    watch::channel(Arc::new(Model::default())).1
}

async fn stored_ca(store: &dyn Store) -> trellis_api::ca::CertificateAuthoritySpec {
    let s = get(store, &ca_key()).await.unwrap().expect("CA stored");
    ca_spec(&s).expect("a CertificateAuthority").clone()
}

async fn stored_bundle(store: &dyn Store) -> trellis_api::ca::TrustBundleSpec {
    let s = get(store, &bundle_key())
        .await
        .unwrap()
        .expect("bundle stored");
    bundle_spec_of(&s).expect("a TrustBundle").clone()
}

fn csr() -> String {
    let key = WorkloadKey::generate().unwrap();
    // The identity asked for is ignored by the CA; ask for something else on purpose.
    key.csr_pem(&SpiffeId::new("cluster.local", "other", "wish").unwrap())
        .unwrap()
}

/// Whether the leaf of `bundle` verifies with the root PEM `root`.
fn signed_by(bundle: &CertBundle, root_pem: &str) -> bool {
    let leaf = ::pem::parse(&bundle.cert_chain_pem).unwrap();
    let root = ::pem::parse(root_pem).unwrap();
    let (_, leaf) = X509Certificate::from_der(leaf.contents()).unwrap();
    let (_, root) = X509Certificate::from_der(root.contents()).unwrap();
    leaf.verify_signature(Some(root.public_key())).is_ok()
}

#[tokio::test]
async fn first_start_generates_and_stores_the_ca_bundle_and_token() {
    let dir = TempDir::new("ca-first");
    let store = open_store(&dir).await;
    let ca = MeshCa::start(store.clone(), still_model(), None, None)
        .await
        .unwrap();
    let spec = stored_ca(&*store).await;
    assert_eq!(spec.trust_domain, "cluster.local");
    assert_eq!(spec.signers.len(), 1);
    assert_eq!(spec.active, ca.current().ca.active_id());
    let token = spec.join_token.expect("a generated token is stored");
    assert_eq!(token.0, ca.token().expose());
    assert_eq!(token.0.len(), 64);
    let bundle = stored_bundle(&*store).await;
    assert_eq!(bundle.trust_domain, "cluster.local");
    assert_eq!(bundle.roots.concat(), ca.current().ca.trust_bundle_pem());
    // The store file holds the keys: owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.0.join(crate::store::DATA_FILE);
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No key material in Debug.
    let dbg = format!("{ca:?} {:?}", stored_ca(&*store).await);
    assert!(
        !dbg.contains("PRIVATE KEY") && !dbg.contains(&token.0),
        "{dbg}"
    );
}

#[tokio::test]
async fn later_starts_and_racing_replicas_reuse_one_ca() {
    let dir = TempDir::new("ca-reuse");
    let store = open_store(&dir).await;
    // Two replicas starting together on one store end up with one CA and one token.
    let (a, b) = tokio::join!(
        MeshCa::start(store.clone(), still_model(), None, None),
        MeshCa::start(store.clone(), still_model(), None, None),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.current().ca.active_id(), b.current().ca.active_id());
    assert_eq!(a.token().expose(), b.token().expose());
    let (id, token) = (
        a.current().ca.active_id().to_string(),
        a.token().expose().to_string(),
    );
    // A restart (the store closed and opened again) reuses them too.
    drop((a, b, store));
    let store = open_store(&dir).await;
    let again = MeshCa::start(store.clone(), still_model(), None, None)
        .await
        .unwrap();
    assert_eq!(again.current().ca.active_id(), id);
    assert_eq!(again.token().expose(), token);
}

#[tokio::test]
async fn a_given_token_wins_and_is_not_stored() {
    let dir = TempDir::new("ca-token");
    let store = open_store(&dir).await;
    let ca = MeshCa::start(store.clone(), still_model(), None, Some(" given-token\n"))
        .await
        .unwrap();
    assert_eq!(ca.token().expose(), "given-token");
    let stored = stored_ca(&*store).await.join_token.unwrap();
    assert_ne!(stored.0, "given-token");
    assert!(matches!(
        MeshCa::start(store.clone(), still_model(), None, Some("bad token")).await,
        Err(CaSetupError::Token(TokenError::Charset))
    ));
}

#[tokio::test]
async fn a_ca_without_token_gets_one() {
    let dir = TempDir::new("ca-notoken");
    let store = open_store(&dir).await;
    let ca = CertificateAuthority::generate("cluster.local", &RootOptions::default()).unwrap();
    store.create(ca_resource(&ca, None)).await.unwrap();
    let mesh = MeshCa::start(store.clone(), still_model(), None, None)
        .await
        .unwrap();
    let stored = stored_ca(&*store).await;
    assert_eq!(stored.active, ca.active_id());
    assert_eq!(stored.join_token.unwrap().0, mesh.token().expose());
}

#[tokio::test]
async fn supplied_ca_and_mesh_trust_domain_are_used_on_first_start() {
    let dir = TempDir::new("ca-supplied");
    let store = open_store(&dir).await;
    store
        .create(resource(
            "apiVersion: trellis.dev/v1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec: {trustDomain: example.org}\n",
        ))
        .await
        .unwrap();
    let own = CertificateAuthority::generate("example.org", &RootOptions::default()).unwrap();
    let state = own.to_state();
    let supplied = SuppliedCa {
        cert_chain_pem: state.signers[0].cert_chain_pem.clone(),
        key_pem: state.signers[0].key_pem.expose().to_string(),
    };
    let ca = MeshCa::start(store.clone(), still_model(), Some(&supplied), None)
        .await
        .unwrap();
    assert_eq!(ca.current().ca.active_id(), own.active_id());
    assert_eq!(ca.current().ca.trust_domain(), "example.org");
    let issued = ca
        .issue(&csr(), "default", "web", Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        issued.bundle.spiffe_id.to_string(),
        "spiffe://example.org/ns/default/sa/web"
    );
    assert!(signed_by(&issued.bundle, &own.trust_bundle_pem()));
    assert_eq!(ca.issued(), 1);

    // A broken supplied CA is a clear error, not a panic.
    let broken = SuppliedCa {
        cert_chain_pem: "not pem".into(),
        key_pem: supplied.key_pem.clone(),
    };
    let err = MeshCa::start(store.clone(), still_model(), Some(&broken), None)
        .await
        .unwrap_err();
    assert!(matches!(err, CaSetupError::Supplied(_)), "{err}");
    assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
}

#[tokio::test]
async fn rotation_add_activate_retire() {
    let dir = TempDir::new("ca-rotate");
    let store = open_store(&dir).await;
    let ca = MeshCa::start(store.clone(), still_model(), None, None)
        .await
        .unwrap();
    let old = ca.current().ca.active_id().to_string();
    let old_root = stored_bundle(&*store).await.roots[0].clone();

    let new = ca.add_root().await.unwrap();
    assert_ne!(new, old);
    let bundle = stored_bundle(&*store).await;
    assert_eq!(bundle.roots.len(), 2, "the new root is trusted at once");
    let new_root = bundle.roots[1].clone();
    assert_eq!(
        stored_ca(&*store).await.active,
        old,
        "but does not sign yet"
    );
    let before = ca
        .issue(&csr(), "default", "web", Duration::from_secs(60))
        .unwrap();
    assert!(signed_by(&before.bundle, &old_root));

    ca.activate(&new).await.unwrap();
    assert_eq!(stored_ca(&*store).await.active, new);
    let after = ca
        .issue(&csr(), "default", "web", Duration::from_secs(60))
        .unwrap();
    assert!(signed_by(&after.bundle, &new_root));
    assert!(!signed_by(&after.bundle, &old_root));

    assert!(matches!(
        ca.retire(&new).await,
        Err(CaChangeError::Refused(CaError::RetireActive(_)))
    ));
    assert!(matches!(
        ca.retire("nope").await,
        Err(CaChangeError::Refused(CaError::UnknownSigner { .. }))
    ));
    ca.retire(&old).await.unwrap();
    let bundle = stored_bundle(&*store).await;
    assert_eq!(bundle.roots, vec![new_root]);
    let spec = stored_ca(&*store).await;
    assert_eq!(spec.signers.len(), 1);
    assert_eq!(
        spec.join_token.unwrap().0,
        ca.token().expose(),
        "the token survives changes"
    );
}

#[tokio::test]
async fn other_replicas_follow_a_rotation() {
    let dir = TempDir::new("ca-follow");
    let store = open_store(&dir).await;
    let a = MeshCa::start(store.clone(), model::follow(store.clone()), None, None)
        .await
        .unwrap();
    let b = MeshCa::start(store.clone(), model::follow(store.clone()), None, None)
        .await
        .unwrap();
    let new = a.add_root().await.unwrap();
    a.activate(&new).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.current().ca.active_id() != new {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica b never followed the activation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let issued = b
        .issue(&csr(), "default", "web", Duration::from_secs(60))
        .unwrap();
    let bundle = stored_bundle(&*store).await;
    assert!(signed_by(&issued.bundle, &bundle.roots[1]));

    // A trust bundle changed behind the CA's back is put back in step.
    let mut wrong = bundle.clone();
    wrong.roots.truncate(1);
    let current = get(&*store, &bundle_key()).await.unwrap().unwrap();
    store
        .replace(resources::bundle_resource(wrong), Some(current.version))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored_bundle(&*store).await.roots.len() != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trust bundle was never repaired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_deleted_ca_is_written_back() {
    let dir = TempDir::new("ca-restore");
    let store = open_store(&dir).await;
    let ca = MeshCa::start(store.clone(), model::follow(store.clone()), None, None)
        .await
        .unwrap();
    let active = ca.current().ca.active_id().to_string();
    let key = ca_key();
    store
        .delete(&key.kind, &key.namespace, &key.name, None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = get(&*store, &key).await.unwrap() {
            let spec = ca_spec(&s).unwrap();
            assert_eq!(spec.active, active);
            assert_eq!(spec.join_token.as_ref().unwrap().0, ca.token().expose());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the CA was never written back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
