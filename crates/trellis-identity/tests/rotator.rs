//! The renewal loop, on tokio's paused clock: hours of certificate life pass in milliseconds.
mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trellis_identity::ca::CertBundle;
use trellis_identity::tls::{CertSource, Rotator, RotatorOptions};

const LIFETIME: Duration = Duration::from_secs(3600);

fn issuer(
    ca: Arc<trellis_identity::CertificateAuthority>,
    calls: Arc<AtomicUsize>,
    fail_first: usize,
    grant: &'static str,
) -> impl FnMut(String) -> std::future::Ready<Result<CertBundle, String>> + Send + 'static {
    move |csr: String| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if n < fail_first {
            Err(format!("control plane unreachable (attempt {n})"))
        } else {
            ca.sign_csr(&csr, &id(grant), LIFETIME)
                .map_err(|e| e.to_string())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn renews_at_about_half_the_lifetime() {
    let ca = Arc::new(new_ca());
    let certs = Arc::new(CertSource::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let rotator = Rotator::spawn(
        id("reviews"),
        certs.clone(),
        issuer(ca, calls.clone(), 0, "reviews"),
        RotatorOptions::default(),
    );
    rotator.wait_issued(1).await;
    assert_eq!(certs.identity(), Some(id("reviews")));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "first certificate at once"
    );
    let first = certs.leaf().unwrap();

    let mut status = rotator.subscribe();
    status
        .wait_for(|s| s.next_renewal_in.is_some())
        .await
        .unwrap();
    let planned = rotator.status().next_renewal_in.unwrap();
    // 50% ± 5% of (lifetime + the CA's 60 s backdating), measured from a moment ago.
    assert!(
        planned >= Duration::from_secs(1560) && planned <= Duration::from_secs(1990),
        "{planned:?}"
    );

    rotator.wait_issued(3).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2 * 1560),
        "renewed too early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(2 * 1990),
        "renewed too late: {elapsed:?}"
    );
    assert_ne!(certs.leaf().unwrap(), first);
    assert_eq!(rotator.status().failures, 0);
    assert!(calls.load(Ordering::SeqCst) >= 3);
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_with_backoff_and_the_current_certificate_stays() {
    let ca = Arc::new(new_ca());
    let certs = Arc::new(CertSource::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let rotator = Rotator::spawn(
        id("reviews"),
        certs.clone(),
        issuer(ca, calls.clone(), 3, "reviews"),
        RotatorOptions::default(),
    );
    rotator.wait_issued(1).await;
    let s = rotator.status();
    assert_eq!(s.failures, 3);
    assert_eq!(s.last_error, None);
    // Backoff 1 s + 2 s + 4 s before the fourth attempt.
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(7) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    assert!(certs.is_loaded());
}

#[tokio::test(start_paused = true)]
async fn a_certificate_for_another_identity_is_never_installed() {
    let ca = Arc::new(new_ca());
    let certs = Arc::new(CertSource::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let rotator = Rotator::spawn(
        id("reviews"),
        certs.clone(),
        issuer(ca, calls.clone(), 0, "ratings"),
        RotatorOptions::default(),
    );
    let mut status = rotator.subscribe();
    status.wait_for(|s| s.failures >= 2).await.unwrap();
    let s = rotator.status();
    assert_eq!(s.issued, 0);
    assert!(s
        .last_error
        .unwrap()
        .contains("expected spiffe://cluster.local/ns/default/sa/reviews"));
    assert!(!certs.is_loaded());
    drop(rotator);
}
