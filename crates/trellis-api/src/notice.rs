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
    let mut out = Vec::new();
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
