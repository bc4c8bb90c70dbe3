//! Splitting a manifest bigger than one transaction into applies that each fit.
//!
//! The control plane commits one apply as one store transaction, and a store caps what one
//! transaction holds (etcd: 4032 documents and about 1.3 MB; every store: the 50 000 documents
//! and 16 MiB of one request). It publishes those caps (`GET /api/v1/apply/limits`), and a
//! manifest past them is sent as several applies, *chunks*:
//!
//! * **Order.** Resources go out in the order proxies receive kinds (`trellis_xds::TYPE_URLS`):
//!   what others refer to first (Services before their Workloads, DestinationPolicies before
//!   the Routes that name their subsets), so no chunk refers to what a later one creates.
//! * **Size.** Each chunk holds at most the published documents, weight
//!   ([`trellis_control::store::document_cost`]) and body bytes.
//! * **Body.** A chunk is sent as JSON documents (`---` between them), which the control plane
//!   parses as it parses YAML; the whole manifest was validated before the first chunk is sent.
//!
//! Each chunk is all-or-nothing on its own and proxies see whole chunks; the manifest as a
//! whole is not one transaction (see the CLI's `apply`).
use trellis_api::Resource;
use trellis_control::store::document_cost;

/// What one apply may hold, as the control plane publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyLimits {
    /// Documents per apply.
    pub documents: usize,
    /// Total [`document_cost`] per apply, when the store caps it.
    pub bytes: Option<usize>,
    /// Request body bytes.
    pub body_bytes: usize,
}

impl ApplyLimits {
    /// The limits in a `GET /api/v1/apply/limits` answer; `None` if it says none.
    pub fn from_answer(v: &serde_json::Value) -> Option<ApplyLimits> {
        let count = |field: &str| v[field].as_u64().and_then(|n| usize::try_from(n).ok());
        Some(ApplyLimits {
            documents: count("documents")?.max(1),
            bytes: count("bytes"),
            body_bytes: count("bodyBytes")?,
        })
    }
}

/// Room left in a chunk's body for framing, and a margin under the body limit.
const BODY_MARGIN: usize = 64 * 1024;

/// Between two documents of a chunk's body.
const SEPARATOR: &str = "\n---\n";

/// One apply of a split manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The request body: the chunk's documents as JSON.
    pub body: String,
    /// How many documents it holds.
    pub documents: usize,
}

/// Where a kind goes in the order chunks are sent: the order proxies receive kinds in.
fn rank(kind: &str) -> usize {
    let url = trellis_xds::type_url(kind);
    trellis_xds::TYPE_URLS
        .iter()
        .position(|u| *u == url)
        .unwrap_or(trellis_xds::TYPE_URLS.len())
}

/// Whether `resources` (as `size` bytes of source) may need more than one apply: more documents
/// or bytes than the smallest store takes at once. Below this the limits are not asked for.
pub fn may_need_split(documents: usize, size: usize) -> bool {
    documents > 1000 || size > 512 * 1024
}

/// `resources` in the order they are sent: referenced kinds first, the manifest's order within
/// a kind.
pub fn ordered(mut resources: Vec<Resource>) -> Vec<Resource> {
    resources.sort_by_key(|r| rank(r.kind()));
    resources
}

/// Packs `resources` (already [`ordered`]) into chunks within `limits`. A document that alone
/// passes a limit gets a chunk of its own, for the control plane to refuse with its reason.
pub fn chunks(resources: &[Resource], limits: &ApplyLimits) -> Vec<Chunk> {
    let body_cap = limits.body_bytes.saturating_sub(BODY_MARGIN).max(1);
    let mut out = Vec::new();
    let mut body = String::new();
    let (mut documents, mut weight) = (0usize, 0usize);
    for r in resources {
        // Plain data serializes to JSON without failing.
        let json = serde_json::to_string(r).unwrap_or_default();
        let cost = document_cost(&r.key(), json.len());
        let full = documents >= limits.documents
            || limits.bytes.is_some_and(|max| weight + cost > max)
            || body.len() + SEPARATOR.len() + json.len() > body_cap;
        if documents > 0 && full {
            out.push(Chunk {
                body: std::mem::take(&mut body),
                documents,
            });
            (documents, weight) = (0, 0);
        }
        if documents > 0 {
            body.push_str(SEPARATOR);
        }
        body.push_str(&json);
        documents += 1;
        weight += cost;
    }
    if documents > 0 {
        out.push(Chunk { body, documents });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(services: usize, per: usize) -> Vec<Resource> {
        let mut text = String::new();
        // Workloads first in the source, to check the order chunks go out in.
        for s in 0..services {
            for w in 0..per {
                text.push_str(&format!(
                    "---\napiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: svc-{s}-{w}}}\nspec: {{service: svc-{s}, address: 10.0.{s}.{}, port: 8080}}\n",
                    w + 1
                ));
            }
            text.push_str(&format!(
                "---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: svc-{s}}}\nspec: {{ports: [{{port: 80, protocol: http}}]}}\n"
            ));
        }
        text.push_str("---\napiVersion: trellis.dev/v1\nkind: Route\nmetadata: {name: r}\nspec: {service: svc-0, rules: [{name: a, backends: [{service: svc-0}]}]}\n");
        trellis_api::parse_documents("m.yaml", &text)
            .expect("valid")
            .resources
    }

    fn unlimited() -> ApplyLimits {
        ApplyLimits {
            documents: usize::MAX,
            bytes: None,
            body_bytes: usize::MAX,
        }
    }

    /// Every chunk parses back to its share of the ordered resources, in order.
    fn round_trip(ordered: &[Resource], chunks: &[Chunk]) {
        let mut back = Vec::new();
        for c in chunks {
            let set = trellis_api::parse_documents("chunk", &c.body).expect("a chunk parses");
            assert_eq!(set.resources.len(), c.documents);
            back.extend(set.resources);
        }
        assert_eq!(back, ordered);
    }

    #[test]
    fn referenced_kinds_go_first_and_the_manifest_order_stays_within_a_kind() {
        let sent = ordered(manifest(3, 2));
        let kinds: Vec<&str> = sent.iter().map(|r| r.kind()).collect();
        assert_eq!(kinds[..3], ["Service"; 3]);
        assert_eq!(kinds[3..9], ["Workload"; 6]);
        assert_eq!(kinds[9], "Route");
        assert_eq!(sent[0].metadata().name, "svc-0");
        assert_eq!(sent[4].metadata().name, "svc-0-1");
    }

    #[test]
    fn chunks_respect_the_document_cap_and_parse_back_to_the_manifest() {
        let sent = ordered(manifest(20, 10));
        let limits = ApplyLimits {
            documents: 50,
            ..unlimited()
        };
        let chunks = chunks(&sent, &limits);
        assert_eq!(chunks.len(), 5, "221 documents in chunks of 50");
        assert!(chunks.iter().all(|c| c.documents <= 50));
        round_trip(&sent, &chunks);
    }

    #[test]
    fn chunks_respect_the_weight_and_body_caps() {
        let sent = ordered(manifest(20, 10));
        let weight =
            |r: &Resource| document_cost(&r.key(), serde_json::to_string(r).expect("json").len());
        let cap = 10 * sent.iter().map(weight).max().expect("some");
        let by_weight = chunks(
            &sent,
            &ApplyLimits {
                bytes: Some(cap),
                ..unlimited()
            },
        );
        assert!(by_weight.len() > 1);
        for c in &by_weight {
            let set = trellis_api::parse_documents("chunk", &c.body).expect("parses");
            assert!(set.resources.iter().map(weight).sum::<usize>() <= cap);
        }
        round_trip(&sent, &by_weight);

        let by_body = chunks(
            &sent,
            &ApplyLimits {
                body_bytes: BODY_MARGIN + 4096,
                ..unlimited()
            },
        );
        assert!(by_body.len() > 1);
        assert!(by_body.iter().all(|c| c.body.len() <= 4096));
        round_trip(&sent, &by_body);
    }

    #[test]
    fn a_manifest_within_the_limits_is_one_chunk() {
        let sent = ordered(manifest(2, 2));
        let chunks = chunks(&sent, &unlimited());
        assert_eq!(chunks.len(), 1);
        round_trip(&sent, &chunks);
    }

    #[test]
    fn limits_are_read_from_the_answer() {
        let v = serde_json::json!({"documents": 4032, "bytes": 1300000, "bodyBytes": 16777216});
        assert_eq!(
            ApplyLimits::from_answer(&v),
            Some(ApplyLimits {
                documents: 4032,
                bytes: Some(1_300_000),
                body_bytes: 16_777_216
            })
        );
        let v = serde_json::json!({"documents": 50000, "bytes": null, "bodyBytes": 16777216});
        assert_eq!(ApplyLimits::from_answer(&v).map(|l| l.bytes), Some(None));
        assert_eq!(
            ApplyLimits::from_answer(&serde_json::json!("not found")),
            None
        );
    }
}
