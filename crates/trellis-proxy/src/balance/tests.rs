//! Distribution and behaviour of every algorithm through the public `Balancer` API.
use super::*;
use std::collections::HashMap;
use std::time::Duration;

const ALL: [LbAlgorithm; 6] = [
    LbAlgorithm::RoundRobin,
    LbAlgorithm::Random,
    LbAlgorithm::LeastRequest,
    LbAlgorithm::PeakEwma,
    LbAlgorithm::RingHash,
    LbAlgorithm::Maglev,
];

fn weighted(weights: &[u32]) -> Vec<Endpoint> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let port = u16::try_from(8000 + i).expect("port");
            let mut e = Endpoint::new(SocketAddr::from(([10, 0, 0, 1], port)));
            e.weight = w;
            e
        })
        .collect()
}

fn lb(algorithm: LbAlgorithm) -> LoadBalancer {
    LoadBalancer {
        algorithm,
        hash_on: None,
    }
}

fn counts(
    b: &Balancer,
    eps: &[Endpoint],
    picks: usize,
    avail: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut counts = vec![0; eps.len()];
    for _ in 0..picks {
        let i = b.pick(eps, None, &avail).expect("an endpoint");
        counts[i] += 1;
    }
    counts
}

fn near(count: usize, expected: usize, tolerance: usize) -> bool {
    count.abs_diff(expected) <= tolerance
}

#[test]
fn round_robin_is_exactly_even() {
    let eps = weighted(&[1, 1, 1, 1]);
    let b = Balancer::new(&lb(LbAlgorithm::RoundRobin), &eps);
    assert_eq!(counts(&b, &eps, 10_000, |_| true), vec![2500; 4]);
}

#[test]
fn round_robin_honours_weights_exactly() {
    let eps = weighted(&[1, 2, 3]);
    let b = Balancer::new(&lb(LbAlgorithm::RoundRobin), &eps);
    assert_eq!(counts(&b, &eps, 6000, |_| true), vec![1000, 2000, 3000]);
}

#[test]
fn random_is_even_within_tolerance() {
    let eps = weighted(&[1, 1, 1, 1]);
    let b = Balancer::new(&lb(LbAlgorithm::Random), &eps);
    for c in counts(&b, &eps, 10_000, |_| true) {
        assert!(near(c, 2500, 300), "{c}");
    }
}

#[test]
fn random_honours_weights() {
    let eps = weighted(&[1, 3]);
    let b = Balancer::new(&lb(LbAlgorithm::Random), &eps);
    let c = counts(&b, &eps, 10_000, |_| true);
    assert!(near(c[0], 2500, 300) && near(c[1], 7500, 300), "{c:?}");
}

/// On the paused clock idle endpoints tie exactly (on a running clock the idle fade makes the
/// longest-unused one slightly cheaper), and ties go to the first, weighted, candidate.
#[tokio::test(start_paused = true)]
async fn p2c_spreads_idle_load_by_weight() {
    for algorithm in [LbAlgorithm::LeastRequest, LbAlgorithm::PeakEwma] {
        let eps = weighted(&[1, 1, 2]);
        let b = Balancer::new(&lb(algorithm), &eps);
        let c = counts(&b, &eps, 10_000, |_| true);
        assert!(
            near(c[0], 2500, 300) && near(c[2], 5000, 300),
            "{algorithm:?} {c:?}"
        );
    }
}

#[test]
fn least_request_avoids_busy_endpoint() {
    let eps = weighted(&[1, 1, 1]);
    let busy: Vec<InFlight> = (0..10).map(|_| eps[0].load.start()).collect();
    let b = Balancer::new(&lb(LbAlgorithm::LeastRequest), &eps);
    // Endpoint 0 only wins if drawn twice, and the two candidates are always distinct.
    assert_eq!(counts(&b, &eps, 1000, |_| true)[0], 0);
    drop(busy);
    assert_eq!(eps[0].load.in_flight(), 0);
    assert!(counts(&b, &eps, 1000, |_| true)[0] > 200);
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_avoids_slow_endpoint() {
    let eps = weighted(&[1, 1, 1]);
    eps[0].load.start().observe_latency(Duration::from_secs(1));
    for e in &eps[1..] {
        e.load.start().observe_latency(Duration::from_millis(10));
    }
    let b = Balancer::new(&lb(LbAlgorithm::PeakEwma), &eps);
    assert_eq!(counts(&b, &eps, 1000, |_| true)[0], 0);
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_probes_a_slow_endpoint_again_after_idling() {
    let eps = weighted(&[1, 1]);
    eps[0].load.start().observe_latency(Duration::from_secs(1));
    let b = Balancer::new(&lb(LbAlgorithm::PeakEwma), &eps);
    eps[1]
        .load
        .start()
        .observe_latency(Duration::from_millis(10));
    assert_eq!(b.pick(&eps, None, |_| true), Some(1));
    // After two minutes without traffic the slow endpoint's estimate has faded below the
    // fresh 10 ms of the other one, so it is tried once more.
    tokio::time::advance(Duration::from_secs(120)).await;
    eps[1]
        .load
        .start()
        .observe_latency(Duration::from_millis(10));
    assert_eq!(b.pick(&eps, None, |_| true), Some(0));
}

/// The issue-12 failure: a killed endpoint answers nothing, so without a penalty its estimate
/// fades to zero while it idles between refused connects and P2C prefers it to the live one.
/// One failure now makes it the expensive choice, for long after it stops being tried.
#[tokio::test(start_paused = true)]
async fn peak_ewma_steers_away_from_an_endpoint_that_failed() {
    let eps = weighted(&[1, 1]);
    let b = Balancer::new(&lb(LbAlgorithm::PeakEwma), &eps);
    for e in &eps {
        e.load.start().observe_latency(Duration::from_millis(5));
    }
    // A refused connect returns in microseconds: with no penalty this looked fastest.
    eps[0].load.start().observe_failure();
    // The live endpoint is busy with four requests and still wins every time.
    let busy: Vec<InFlight> = (0..4).map(|_| eps[1].load.start()).collect();
    assert_eq!(counts(&b, &eps, 1000, |_| true)[0], 0);
    drop(busy);
    // Ten seconds of idling later it still costs far more than a live 5 ms endpoint.
    tokio::time::advance(Duration::from_secs(10)).await;
    eps[1]
        .load
        .start()
        .observe_latency(Duration::from_millis(5));
    assert_eq!(counts(&b, &eps, 1000, |_| true)[0], 0);
    // Alone, it is still picked: a penalty is a cost, never an exclusion.
    assert_eq!(b.pick(&eps, None, |i| i == 0), Some(0));
}

fn hashing(algorithm: LbAlgorithm) -> [LoadBalancer; 1] {
    [LoadBalancer {
        algorithm,
        hash_on: Some(HashOn {
            header: Some("x-user".into()),
            ..HashOn::default()
        }),
    }]
}

fn owners(b: &Balancer, eps: &[Endpoint], keys: u64) -> HashMap<u64, SocketAddr> {
    (0..keys)
        .map(|k| {
            let i = b.pick(eps, Some(k), |_| true).expect("an endpoint");
            (k, eps[i].addr)
        })
        .collect()
}

#[test]
fn consistent_hashing_is_sticky_spread_and_stable() {
    for algorithm in [LbAlgorithm::RingHash, LbAlgorithm::Maglev] {
        let [config] = hashing(algorithm);
        let eps = weighted(&[1, 1, 1, 1]);
        let b = Balancer::new(&config, &eps);
        let first = b.pick(&eps, Some(42), |_| true);
        assert!((0..100).all(|_| b.pick(&eps, Some(42), |_| true) == first));

        let before = owners(&b, &eps, 10_000);
        for e in &eps {
            let share = before.values().filter(|a| **a == e.addr).count();
            assert!(share > 1500, "{algorithm:?}: {share} keys on {}", e.addr);
        }

        let removed = eps[2].addr;
        let fewer: Vec<Endpoint> = eps.iter().filter(|e| e.addr != removed).cloned().collect();
        let after = owners(&Balancer::new(&config, &fewer), &fewer, 10_000);
        let kept = before
            .iter()
            .filter(|(k, a)| after.get(k) == Some(a))
            .count();
        assert!(kept > 6000, "{algorithm:?}: only {kept} of 10000 keys kept");
        let stayed = before
            .iter()
            .filter(|(_, a)| **a != removed)
            .all(|(k, a)| after.get(k) == Some(a));
        if algorithm == LbAlgorithm::RingHash {
            assert!(stayed, "ring hash moved a key it did not have to");
        }
    }
}

#[test]
fn consistent_hashing_honours_weights() {
    for algorithm in [LbAlgorithm::RingHash, LbAlgorithm::Maglev] {
        let [config] = hashing(algorithm);
        let eps = weighted(&[1, 3]);
        let b = Balancer::new(&config, &eps);
        let heavy = owners(&b, &eps, 10_000)
            .values()
            .filter(|a| **a == eps[1].addr)
            .count();
        assert!(near(heavy, 7500, 600), "{algorithm:?}: {heavy}");
    }
}

#[test]
fn hash_key_is_derived_only_for_hashing_algorithms() {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", http::HeaderValue::from_static("alice"));
    let eps = weighted(&[1, 1]);
    let [config] = hashing(LbAlgorithm::Maglev);
    let b = Balancer::new(&config, &eps);
    assert!(b.uses_hash_key());
    assert!(b.hash_key(&headers, None).is_some());
    let rr = Balancer::new(&lb(LbAlgorithm::RoundRobin), &eps);
    assert!(!rr.uses_hash_key());
    assert_eq!(rr.hash_key(&headers, None), None);
}

#[test]
fn hashing_without_a_key_falls_back_to_random() {
    for algorithm in [LbAlgorithm::RingHash, LbAlgorithm::Maglev] {
        let [config] = hashing(algorithm);
        let eps = weighted(&[1, 1, 1, 1]);
        let b = Balancer::new(&config, &eps);
        for c in counts(&b, &eps, 10_000, |_| true) {
            assert!(near(c, 2500, 300), "{algorithm:?} {c}");
        }
    }
}

#[test]
fn unavailable_endpoints_are_never_picked() {
    for algorithm in ALL {
        let [config] = hashing(algorithm);
        let eps = weighted(&[1, 2, 1, 1]);
        let b = Balancer::new(&config, &eps);
        let c = counts(&b, &eps, 4000, |i| i != 1);
        assert_eq!(c[1], 0, "{algorithm:?}");
        assert!(
            c.iter().sum::<usize>() == 4000 && c[0] > 800,
            "{algorithm:?} {c:?}"
        );
        for key in 0..200u64 {
            let i = b.pick(&eps, Some(key), |i| i != 1);
            assert!(i.is_some() && i != Some(1), "{algorithm:?}");
        }
        assert_eq!(b.pick(&eps, None, |_| false), None, "{algorithm:?}");
        assert_eq!(b.pick(&eps, Some(7), |_| false), None, "{algorithm:?}");
        assert_eq!(b.pick(&eps, Some(7), |i| i == 3), Some(3), "{algorithm:?}");
    }
}

#[test]
fn hashing_moves_only_keys_of_an_unavailable_endpoint() {
    for algorithm in [LbAlgorithm::RingHash, LbAlgorithm::Maglev] {
        let [config] = hashing(algorithm);
        let eps = weighted(&[1, 1, 1, 1]);
        let b = Balancer::new(&config, &eps);
        for key in 0..2000u64 {
            let home = b.pick(&eps, Some(key), |_| true);
            let now = b.pick(&eps, Some(key), |i| i != 0);
            if home != Some(0) {
                assert_eq!(home, now, "{algorithm:?} key {key}");
            }
            assert_eq!(now, b.pick(&eps, Some(key), |i| i != 0), "{algorithm:?}");
        }
    }
}

#[test]
fn empty_or_mismatched_sets_never_panic() {
    for algorithm in ALL {
        let [config] = hashing(algorithm);
        let b = Balancer::new(&config, &[]);
        assert_eq!(b.pick(&[], Some(1), |_| true), None);
        assert_eq!(b.pick(&weighted(&[1, 1]), Some(1), |_| true), None);

        let eps = weighted(&[1, 0, u32::MAX]);
        let b = Balancer::new(&config, &eps);
        for key in 0..50 {
            assert!(b.pick(&eps, Some(key), |_| true).is_some(), "{algorithm:?}");
            // A shorter slice than the balancer was built for: only its indices come back.
            assert!(b
                .pick(&eps[..1], Some(key), |_| true)
                .is_none_or(|i| i == 0));
        }
    }
}
