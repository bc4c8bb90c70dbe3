//! Building a document's [`Value`] with every node and every byte of its strings counted: the
//! same value `Value::deserialize` builds, but aliases cannot multiply the work or the memory
//! past the limits, and nesting (aliases included) cannot pass the depth limit.
//!
//! `serde_yaml_ng` expands an alias by replaying the anchored events, each replay a call into
//! this visitor, so counting here bounds the work however the aliases are arranged (its own
//! guard, 100 replays per event, stops the billion laughs but not one long anchored list
//! aliased thousands of times).
use super::{Limit, Limits};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use serde_yaml_ng::value::{Tag, TaggedValue};
use serde_yaml_ng::{Mapping, Value};
use std::cell::Cell;
use std::fmt;

/// Node counts across the documents of one source.
pub(crate) struct NodeBudget {
    limits: Limits,
    source_nodes: Cell<usize>,
    document_nodes: Cell<usize>,
    /// Bytes of the strings built (keys and values), aliases expanded.
    source_bytes: Cell<usize>,
    document_bytes: Cell<usize>,
    hit: Cell<Option<Limit>>,
}

impl NodeBudget {
    pub fn new(limits: &Limits) -> Self {
        Self {
            limits: *limits,
            source_nodes: Cell::new(0),
            document_nodes: Cell::new(0),
            source_bytes: Cell::new(0),
            document_bytes: Cell::new(0),
            hit: Cell::new(None),
        }
    }

    /// Builds one document's value. On an error, [`NodeBudget::take_hit`] says whether it was a
    /// limit.
    pub fn document<'de, D: Deserializer<'de>>(&self, document: D) -> Result<Value, D::Error> {
        self.document_nodes.set(0);
        self.document_bytes.set(0);
        Node {
            budget: self,
            depth: 0,
        }
        .deserialize(document)
    }

    /// The limit the last [`NodeBudget::document`] failed on, if it failed on one.
    pub fn take_hit(&self) -> Option<Limit> {
        self.hit.take()
    }

    fn refuse<E: de::Error>(&self, limit: Limit) -> E {
        self.hit.set(Some(limit));
        E::custom(format!("exceeds limit {limit}"))
    }

    fn count<E: de::Error>(&self) -> Result<(), E> {
        let document = self.document_nodes.get() + 1;
        let source = self.source_nodes.get() + 1;
        self.document_nodes.set(document);
        self.source_nodes.set(source);
        if document > self.limits.max_document_nodes {
            return Err(self.refuse(Limit::DocumentNodes));
        }
        if source > self.limits.max_source_nodes {
            return Err(self.refuse(Limit::SourceNodes));
        }
        Ok(())
    }

    /// A string of `len` bytes is built (each alias of it is a new copy).
    fn count_bytes<E: de::Error>(&self, len: usize) -> Result<(), E> {
        let document = self.document_bytes.get().saturating_add(len);
        let source = self.source_bytes.get().saturating_add(len);
        self.document_bytes.set(document);
        self.source_bytes.set(source);
        if document > self.limits.max_document_bytes {
            return Err(self.refuse(Limit::DocumentBytes));
        }
        if source > self.limits.max_source_bytes {
            return Err(self.refuse(Limit::SourceBytes));
        }
        Ok(())
    }
}

/// One node to build, `depth` collections down.
#[derive(Clone, Copy)]
struct Node<'b> {
    budget: &'b NodeBudget,
    depth: usize,
}

impl Node<'_> {
    /// A collection opens: count it, and the level it adds.
    fn open<E: de::Error>(self) -> Result<Self, E> {
        self.budget.count()?;
        let depth = self.depth + 1;
        if depth > self.budget.limits.max_depth {
            return Err(self.budget.refuse(Limit::Depth));
        }
        Ok(Node { depth, ..self })
    }

    fn scalar<E: de::Error>(self, v: Value) -> Result<Value, E> {
        self.budget.count()?;
        Ok(v)
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.scalar(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.scalar(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.scalar(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.scalar(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        // Counted before the copy is made.
        self.budget.count_bytes(s.len())?;
        self.scalar(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.budget.count_bytes(s.len())?;
        self.scalar(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let child = self.open()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(child)? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let child = self.open()?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(child)? {
            if mapping.contains_key(&key) {
                return Err(de::Error::custom(duplicate(&key)));
            }
            let value = map.next_value_seed(child)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // `!tag value`: serde_yaml_ng presents a tagged node as an enum variant named by the tag.
        let (tag, contents) = data.variant::<String>()?;
        if tag.is_empty() {
            return Err(de::Error::custom("empty YAML tag is not allowed"));
        }
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

/// A duplicate key, in `serde_yaml_ng`'s words.
fn duplicate(key: &Value) -> String {
    match key {
        Value::Null => "duplicate entry with null key".into(),
        Value::Bool(b) => format!("duplicate entry with key `{b}`"),
        Value::Number(n) => format!("duplicate entry with key {n}"),
        Value::String(s) => format!("duplicate entry with key {s:?}"),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => {
            "duplicate entry in YAML map".into()
        }
    }
}
