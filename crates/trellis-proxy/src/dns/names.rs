//! Which DNS names could be mesh services, for a sidecar that discovers on demand: the shapes
//! the answerer serves (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.<domain>`) made of valid
//! labels. Anything else never costs a round trip to the control plane. Names that discovery
//! said are no service are remembered for the mesh TTL, so a resolver's retries and search-list
//! walks do not ask again.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use trellis_api::validate::is_dns_label;

/// Names remembered at most; past it the oldest half is forgotten.
const NEGATIVE_CAPACITY: usize = 1024;

/// `(namespace, service)` when `name` has the shape of a mesh name (see the module docs);
/// `local_namespace` is the namespace of a bare `svc`.
pub fn mesh_name(name: &str, domain: &str, local_namespace: &str) -> Option<(String, String)> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    if !labels.iter().all(|l| is_dns_label(l)) {
        return None;
    }
    let (svc, ns) = match labels.as_slice() {
        [svc] => (*svc, local_namespace),
        [svc, ns] | [svc, ns, "svc"] => (*svc, *ns),
        [svc, ns, "svc", rest @ ..] if rest.join(".") == domain => (*svc, *ns),
        _ => return None,
    };
    Some((ns.to_string(), svc.to_string()))
}

/// Names recently found not to be services (or not answered for), each for `ttl`.
#[derive(Debug)]
pub struct NegativeCache {
    ttl: Duration,
    seen: Mutex<HashMap<String, Instant>>,
}

impl NegativeCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `name` was remembered less than the TTL ago.
    pub fn recent(&self, name: &str) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        seen.get(&key(name))
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    pub fn remember(&self, name: &str) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= NEGATIVE_CAPACITY {
            let ttl = self.ttl;
            seen.retain(|_, at| at.elapsed() < ttl);
        }
        if seen.len() >= NEGATIVE_CAPACITY {
            let mut by_age: Vec<Instant> = seen.values().copied().collect();
            by_age.sort();
            let cutoff = by_age[by_age.len() / 2];
            seen.retain(|_, at| *at > cutoff);
        }
        seen.insert(key(name), Instant::now());
    }
}

fn key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answerers_shapes_are_mesh_names_and_nothing_else() {
        let m = |n| mesh_name(n, "cluster.local", "shop");
        let pair = |ns: &str, s: &str| Some((ns.to_string(), s.to_string()));
        assert_eq!(m("ratings"), pair("shop", "ratings"));
        assert_eq!(m("ratings."), pair("shop", "ratings"));
        assert_eq!(m("Ratings.Books"), pair("books", "ratings"));
        assert_eq!(m("ratings.books.svc"), pair("books", "ratings"));
        assert_eq!(
            m("ratings.books.svc.cluster.local."),
            pair("books", "ratings")
        );
        // Another domain, more labels, bad labels, empty labels: not mesh names.
        assert_eq!(m("ratings.books.svc.example.org"), None);
        assert_eq!(m("a.b.c"), None);
        assert_eq!(m("www.example.co.uk"), None);
        assert_eq!(m("-bad"), None);
        assert_eq!(m("under_score"), None);
        assert_eq!(m("a..b"), None);
        assert_eq!(m(""), None);
        assert_eq!(m(&"x".repeat(64)), None);
    }

    #[test]
    fn remembered_names_expire_and_the_cache_stays_bounded() {
        let c = NegativeCache::new(Duration::from_secs(60));
        assert!(!c.recent("nope"));
        c.remember("Nope.");
        assert!(c.recent("nope"), "case and trailing dot do not matter");
        for i in 0..(NEGATIVE_CAPACITY * 3) {
            c.remember(&format!("n{i}"));
        }
        let held = c.seen.lock().unwrap().len();
        assert!(held <= NEGATIVE_CAPACITY, "{held}");
        assert!(
            c.recent(&format!("n{}", NEGATIVE_CAPACITY * 3 - 1)),
            "the newest stays"
        );

        let expired = NegativeCache::new(Duration::ZERO);
        expired.remember("gone");
        assert!(!expired.recent("gone"));
    }
}
