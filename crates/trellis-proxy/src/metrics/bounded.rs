//! Label values another party chooses (a caller's workload name, a refused `Host`), interned
//! into a table of at most `limit`: each value is one shared `Arc<str>` for every request that
//! carries it, and once the table is full, values not seen before share the label
//! [`OVERFLOW`], so nobody outside the mesh's config can grow a family without bound.
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

/// The label of a value that came after the table was full.
pub const OVERFLOW: &str = "other";

/// A bounded table of interned label values.
pub struct BoundedNames {
    names: RwLock<HashMap<Box<str>, Arc<str>>>,
    limit: usize,
}

impl BoundedNames {
    pub fn new(limit: usize) -> Self {
        Self {
            names: RwLock::default(),
            limit,
        }
    }

    /// The shared label of `name`, and whether the table was full for it (the label is then
    /// [`OVERFLOW`]). Values seen before the table filled keep their own label.
    pub fn label(&self, name: &str) -> (Arc<str>, bool) {
        static OTHER: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(OVERFLOW));
        if let Some(known) = self.read().get(name) {
            return (known.clone(), false);
        }
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = names.get(name) {
            return (known.clone(), false);
        }
        if names.len() >= self.limit {
            return (OTHER.clone(), true);
        }
        let label: Arc<str> = Arc::from(name);
        names.insert(name.into(), label.clone());
        (label, false)
    }

    /// How many values have a label of their own.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Arc<str>>> {
        self.names.read().unwrap_or_else(|e| e.into_inner())
    }
}
