//! Checks across a set: duplicate names, a single MeshConfig, one DestinationPolicy per
//! service, and Route subsets that name subsets a DestinationPolicy declares.
use crate::parse::Resource;
use crate::policy::DestinationPolicy;
use crate::route::Route;
use std::collections::HashMap;

pub(super) fn check(resources: &[Resource]) -> Vec<(usize, String, String)> {
    let mut problems = Vec::new();

    let mut seen = HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        if let Some(first) = seen.insert(r.key(), i) {
            problems.push((
                i,
                "metadata.name".into(),
                format!(
                    "duplicate {} {:?} in namespace {:?} (also resource #{}); names must be unique per kind and namespace",
                    r.kind(),
                    r.metadata().name,
                    r.metadata().namespace,
                    first + 1
                ),
            ));
        }
    }

    let mut mesh_config: Option<(usize, &str)> = None;
    for (i, r) in resources.iter().enumerate() {
        if let Resource::MeshConfig(m) = r {
            match mesh_config {
                None => mesh_config = Some((i, &m.metadata.name)),
                Some((first, name)) => problems.push((
                    i,
                    String::new(),
                    format!(
                        "only one MeshConfig is allowed; MeshConfig {name:?} (resource #{}) already holds the mesh-wide settings",
                        first + 1
                    ),
                )),
            }
        }
    }

    // (namespace, service) -> (index, policy): the first policy for each service.
    let mut policies: HashMap<(&str, &str), (usize, &DestinationPolicy)> = HashMap::new();
    for (i, r) in resources.iter().enumerate() {
        if let Resource::DestinationPolicy(dp) = r {
            let key = (dp.metadata.namespace.as_str(), dp.spec.service.as_str());
            if let Some((first, other)) = policies.get(&key) {
                problems.push((
                    i,
                    "spec.service".into(),
                    format!(
                        "DestinationPolicy {:?} (resource #{}) already applies to service {:?} in namespace {:?}; merge the two into one",
                        other.metadata.name,
                        first + 1,
                        dp.spec.service,
                        dp.metadata.namespace
                    ),
                ));
            } else {
                policies.insert(key, (i, dp));
            }
        }
    }

    for (i, r) in resources.iter().enumerate() {
        if let Resource::Route(route) = r {
            for (path, message) in route_subsets(route, &policies) {
                problems.push((i, path, message));
            }
        }
    }
    problems
}

fn route_subsets(
    route: &Route,
    policies: &HashMap<(&str, &str), (usize, &DestinationPolicy)>,
) -> Vec<(String, String)> {
    let ns = route.metadata.namespace.as_str();
    let check = |service: &str, subset: &str| -> Option<String> {
        match policies.get(&(ns, service)) {
            Some((_, dp)) if dp.spec.subsets.iter().any(|s| s.name == subset) => None,
            Some((_, dp)) => {
                let declared: Vec<&str> = dp.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                Some(format!(
                    "subset {subset:?} is not declared in DestinationPolicy {:?} for service {service:?}; declared subsets: {}",
                    dp.metadata.name,
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ))
            }
            // The policy may live in another file or be applied later (a control plane gets
            // resources one at a time); the proxy answers `no-healthy-endpoints` until it exists.
            None => None,
        }
    };
    let mut problems = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        for (j, b) in rule.backends.iter().enumerate() {
            if let Some(subset) = &b.subset {
                if let Some(m) = check(&b.service, subset) {
                    problems.push((format!("spec.rules[{i}].backends[{j}].subset"), m));
                }
            }
        }
        if let Some(m) = &rule.mirror {
            if let Some(subset) = &m.subset {
                if let Some(msg) = check(&m.service, subset) {
                    problems.push((format!("spec.rules[{i}].mirror.subset"), msg));
                }
            }
        }
    }
    problems
}
