//! Notices: things true of a valid configuration that its author may not expect. `trellis
//! validate` and `trellis apply` print them; they never make a source invalid.
use crate::parse::Resource;
use serde::Serialize;
use std::fmt;

/// One notice about one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub message: String,
}

impl fmt::Display for Notice {
    /// `AuthorizationPolicy default/reviews: no defaultAction and ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}: {}",
            self.kind, self.namespace, self.name, self.message
        )
    }
}

/// What an `AuthorizationPolicy` with `Allow` rules and no `defaultAction` does to the rest.
pub const IMPLICIT_DENY: &str = "no defaultAction and it has ALLOW rules, so requests no rule allows are denied (set defaultAction: Allow to allow them)";

/// The notices for `resources`, in their order.
pub fn notices<'a>(resources: impl IntoIterator<Item = &'a Resource>) -> Vec<Notice> {
    let resources: Vec<&Resource> = resources.into_iter().collect();
    let mut out = Vec::new();
    let all: Vec<Resource> = resources.iter().map(|r| (*r).clone()).collect();
    out.extend(overridden(resources.iter().copied(), &all));
    for r in resources {
        if let Resource::AuthorizationPolicy(p) = r {
            if p.spec.denies_by_implicit_default() {
                out.push(Notice {
                    kind: r.kind().to_string(),
                    namespace: p.metadata.namespace.clone(),
                    name: p.metadata.name.clone(),
                    message: IMPLICIT_DENY.to_string(),
                });
            }
        }
    }
    out
}

/// Notices for the HTTPRoutes and GRPCRoutes among `applied` that a Trellis `Route` in `all`
/// (the whole configuration they join) overrides for a parent service: such a route is stored
/// but not applied there (docs/configuration.md, "Gateway API routes").
pub fn overridden<'a>(
    applied: impl IntoIterator<Item = &'a Resource>,
    all: &[Resource],
) -> Vec<Notice> {
    use crate::gateway_api::{parents_of, Parent, RouteRef};
    let mut out = Vec::new();
    for r in applied {
        let Some(route) = RouteRef::of(r) else {
            continue;
        };
        for parent in parents_of(route) {
            let Parent::Service { namespace, name } = parent else {
                continue;
            };
            if let Some(winner) =
                crate::gateway_api::status::overriding_route(all, &namespace, &name)
            {
                out.push(Notice {
                    kind: r.kind().to_string(),
                    namespace: r.metadata().namespace.clone(),
                    name: r.metadata().name.clone(),
                    message: format!(
                        "not applied to service {namespace}/{name}: Trellis Route {winner:?} steers that service and wins over Gateway API routes (see status.parents)"
                    ),
                });
            }
        }
    }
    out
}
