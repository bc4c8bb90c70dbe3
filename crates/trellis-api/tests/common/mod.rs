//! Helpers shared by the integration tests: load the fixture, edit one field of a document by
//! its path, and assert on the problems a source produces.
#![allow(dead_code)]

use serde_yaml_ng::Value;
use trellis_api::{parse_documents, ConfigError, FieldError, ResourceSet};

pub const FULL: &str = include_str!("../fixtures/full.yaml");
pub const FILE: &str = "mesh.yaml";

pub fn parse(text: &str) -> Result<ResourceSet, ConfigError> {
    parse_documents(FILE, text)
}

/// Every problem `text` has; panics when it parses cleanly.
pub fn errors(text: &str) -> Vec<FieldError> {
    match parse(text) {
        Ok(set) => panic!("expected errors, got a valid set:\n{}", set.to_yaml()),
        Err(e) => {
            assert!(!e.errors.is_empty());
            // Display must never lose the file name.
            for fe in &e.errors {
                assert!(fe.to_string().starts_with(FILE), "{fe}");
            }
            e.errors
        }
    }
}

/// Asserts `text` has a problem at `path` whose message contains `fragment`, and returns it.
#[track_caller]
pub fn expect(text: &str, path: &str, fragment: &str) -> FieldError {
    let errs = errors(text);
    match errs
        .iter()
        .find(|e| e.path == path && e.message.contains(fragment))
    {
        Some(e) => e.clone(),
        None => panic!(
            "no problem at {path:?} containing {fragment:?}; got:\n{}",
            errs.iter()
                .map(|e| format!("  {}", e))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Asserts `text` parses, and returns the set.
#[track_caller]
pub fn valid(text: &str) -> ResourceSet {
    match parse(text) {
        Ok(s) => s,
        Err(e) => panic!("expected a valid source, got:\n{e}"),
    }
}

/// The document of `FULL` with this kind and name, as YAML text.
pub fn doc(kind: &str, name: &str) -> String {
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(FULL)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    let v = docs
        .into_iter()
        .find(|v: &Value| {
            v.get("kind").and_then(Value::as_str) == Some(kind)
                && v.get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    == Some(name)
        })
        .unwrap_or_else(|| panic!("fixture has no {kind} {name}"));
    serde_yaml_ng::to_string(&v).unwrap()
}

/// `text` (one document) with the field at `path` (`spec.rules[0].backends[1].weight`) replaced
/// by the YAML `value`; mappings on the way are created. A value of `~` removes the field.
pub fn with(text: &str, path: &str, value: &str) -> String {
    let mut root: Value = serde_yaml_ng::from_str(text).unwrap();
    let new: Value = serde_yaml_ng::from_str(value).unwrap();
    let mut cur = &mut root;
    let segments: Vec<&str> = path.split('.').collect();
    for (n, seg) in segments.iter().enumerate() {
        let (key, indexes) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (*seg, ""),
        };
        let idx: Vec<usize> = indexes
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let last = n + 1 == segments.len();
        let map = cur.as_mapping_mut().expect("path goes through a mapping");
        if last && idx.is_empty() {
            if new.is_null() {
                map.remove(key);
            } else {
                map.insert(Value::String(key.into()), new);
            }
            return serde_yaml_ng::to_string(&root).unwrap();
        }
        if !map.contains_key(key) {
            map.insert(
                Value::String(key.into()),
                Value::Mapping(Default::default()),
            );
        }
        cur = map.get_mut(key).unwrap();
        for (k, i) in idx.iter().enumerate() {
            let seq = cur.as_sequence_mut().expect("index into a sequence");
            if last && k + 1 == idx.len() {
                if new.is_null() {
                    seq.remove(*i);
                } else if *i == seq.len() {
                    seq.push(new);
                } else {
                    seq[*i] = new;
                }
                return serde_yaml_ng::to_string(&root).unwrap();
            }
            cur = &mut seq[*i];
        }
    }
    unreachable!()
}
