//! An endpoint's labels, compact and shared.
//!
//! Every endpoint of every service a sidecar holds carries its labels (for subset selection and
//! the admin view), and each endpoint is copied into its service's default group and into every
//! subset it belongs to. A `BTreeMap` per copy costs a half-kilobyte node even for one label; a
//! sorted, reference-counted slice costs its entries once and a counter bump per copy.
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::sync::Arc;

/// One label: key and value.
type Label = (Box<str>, Box<str>);

/// Labels sorted by key, each key once; `None` when there are none (no allocation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Option<Arc<[Label]>>);

impl Labels {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        let entries = self.0.as_deref()?;
        entries
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*entries[i].1)
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (&**k, &**v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// From pairs in any order; for a key given twice, the first value wins.
impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut entries: Vec<Label> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        if entries.is_empty() {
            return Self(None);
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        Self(Some(entries.into()))
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_sorts_and_keeps_the_first_of_a_repeated_key() {
        let l: Labels = [
            ("zone", "b"),
            ("app", "x"),
            ("zone", "c"),
            ("version", "v1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(l.get("app"), Some("x"));
        assert_eq!(l.get("zone"), Some("b"));
        assert_eq!(l.get("version"), Some("v1"));
        assert_eq!(l.get("missing"), None);
        let keys: Vec<_> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["app", "version", "zone"]);
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"{"app":"x","version":"v1","zone":"b"}"#
        );
    }

    #[test]
    fn none_is_empty_and_finds_nothing() {
        let l: Labels = std::iter::empty::<(String, String)>().collect();
        assert!(l.is_empty());
        assert_eq!(l.get(""), None);
        assert_eq!(l.iter().count(), 0);
        assert_eq!(l, Labels::default());
    }
}
