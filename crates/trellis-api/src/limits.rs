//! Limits on what one configuration source may make the parser do.
//!
//! Why: the YAML parser under `serde_yaml_ng` (libyaml, as `unsafe-libyaml`) keeps one
//! "simple key" slot per open flow collection and walks all of them for every token it scans,
//! so nesting `[` or `{a:` N deep costs O(N²): 20 000 levels of `{a: ` (80 KB) take seconds,
//! 100 000 take minutes. `serde_yaml_ng` also reads a whole document's events before it
//! builds anything, and expands every alias by replaying the anchored events, so a 50 KB
//! document of aliases to a long list builds 10⁸ nodes. A control plane that parses what it
//! is sent must never be made to do that.
//!
//! So every source is checked in two linear steps, and refused at the first limit it passes,
//! with a [`FieldError`] that names the limit ([`FieldError::limit`]), the file, the document
//! and the line:
//! 1. Before the YAML parser sees the text, a scan that tokenizes exactly as libyaml's scanner
//!    does (it tracks flow level, block indentation and simple keys, and skips quoted, plain
//!    and block scalars, comments, tags and anchors the way libyaml does) enforces
//!    [`Limits::max_source_bytes`], [`Limits::max_documents`], [`Limits::max_document_bytes`]
//!    and [`Limits::max_depth`] (open flow collections plus open block collections, which is
//!    never more than the true nesting).
//! 2. While each document is turned into a value, every node built counts, aliases expanded
//!    included, against [`Limits::max_document_nodes`] and [`Limits::max_source_nodes`], the
//!    bytes of its strings against [`Limits::max_document_bytes`] and
//!    [`Limits::max_source_bytes`] (an alias of a long string copies it), and the exact nesting
//!    (aliases included) against [`Limits::max_depth`].
//! 3. Each resource accepted is measured as it will be written back — the JSON the control
//!    plane stores and reads back through this parser, the YAML `trellis get` prints — against
//!    the document limits, so whatever is accepted can always be read again.
//!
//! The defaults are generous for real meshes: the control-plane scale bench applies 11 000
//! documents (1000 Services and 10 000 Workloads, about 1.7 MB) in one source; the deepest
//! field of any kind is about 8 levels down; the largest single resources (a CA with its keys,
//! a policy with hundreds of principals) are tens of kilobytes.
use crate::error::FieldError;
use crate::parse::Resource;
use std::fmt;

mod nodes;
mod scan;

pub(crate) use nodes::NodeBudget;
pub(crate) use scan::prescan;
#[doc(hidden)]
pub use scan::{trace as scan_trace, ScanTrace};

/// Largest source accepted (bytes): 16 MiB.
pub const MAX_SOURCE_BYTES: usize = 16 * 1024 * 1024;
/// Most YAML documents in one source: 50 000 (the scale bench applies 11 000).
pub const MAX_DOCUMENTS: usize = 50_000;
/// Largest single document (bytes): 1 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of collections (mappings and sequences): 64 levels. (`serde_yaml_ng` stops
/// at 128 whatever [`Limits::max_depth`] says.)
pub const MAX_DEPTH: usize = 64;
/// Most nodes (scalars, mappings, sequences) one document may build, aliases expanded: 100 000.
pub const MAX_DOCUMENT_NODES: usize = 100_000;
/// Most nodes one source may build, aliases expanded: 5 000 000.
pub const MAX_SOURCE_NODES: usize = 5_000_000;

/// Alias expansions per YAML event of a document (fixed by `serde_yaml_ng`).
pub const ALIAS_EXPANSION_RATIO: usize = 100;

/// The limits one parse enforces; [`Limits::default`] holds the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_source_bytes: usize,
    pub max_documents: usize,
    pub max_document_bytes: usize,
    pub max_depth: usize,
    pub max_document_nodes: usize,
    pub max_source_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_source_bytes: MAX_SOURCE_BYTES,
            max_documents: MAX_DOCUMENTS,
            max_document_bytes: MAX_DOCUMENT_BYTES,
            max_depth: MAX_DEPTH,
            max_document_nodes: MAX_DOCUMENT_NODES,
            max_source_nodes: MAX_SOURCE_NODES,
        }
    }
}

/// Which limit a source passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    SourceBytes,
    Documents,
    DocumentBytes,
    Depth,
    DocumentNodes,
    SourceNodes,
    /// `serde_yaml_ng`'s own guard: aliases replayed more than 100 times per event of the
    /// document. Usually [`Limit::DocumentNodes`] comes first.
    AliasExpansion,
}

impl Limit {
    /// The limit's name as errors show it: `max-depth`, `max-documents`, ...
    pub fn name(self) -> &'static str {
        match self {
            Limit::SourceBytes => "max-source-bytes",
            Limit::Documents => "max-documents",
            Limit::DocumentBytes => "max-document-bytes",
            Limit::Depth => "max-depth",
            Limit::DocumentNodes => "max-document-nodes",
            Limit::SourceNodes => "max-source-nodes",
            Limit::AliasExpansion => "max-alias-expansion",
        }
    }

    /// The value of this limit in `limits`.
    pub fn value(self, limits: &Limits) -> usize {
        match self {
            Limit::SourceBytes => limits.max_source_bytes,
            Limit::Documents => limits.max_documents,
            Limit::DocumentBytes => limits.max_document_bytes,
            Limit::Depth => limits.max_depth,
            Limit::DocumentNodes => limits.max_document_nodes,
            Limit::SourceNodes => limits.max_source_nodes,
            Limit::AliasExpansion => ALIAS_EXPANSION_RATIO,
        }
    }

    /// What passing it means, in words.
    fn describe(self, max: usize, measure: Measure) -> String {
        const WRITTEN_BACK: &str = "the resource, written back as the control plane stores it (JSON) or `trellis get` shows it (YAML),";
        match (self, measure) {
            (Limit::SourceBytes, Measure::Text) => format!("the source is larger than {max} bytes"),
            (Limit::SourceBytes, _) => format!(
                "the values of the source come to more than {max} bytes once aliases are expanded"
            ),
            (Limit::Documents, _) => {
                format!("more than {max} documents in one source; split it into several files")
            }
            (Limit::DocumentBytes, Measure::Text) => {
                format!("the document is larger than {max} bytes")
            }
            (Limit::DocumentBytes, Measure::Expanded) => format!(
                "the values of the document come to more than {max} bytes once aliases are expanded"
            ),
            (Limit::DocumentBytes, Measure::WrittenBack) => {
                format!("{WRITTEN_BACK} would be larger than {max} bytes")
            }
            (Limit::Depth, _) => {
                format!("mappings and sequences are nested more than {max} levels deep")
            }
            (Limit::DocumentNodes, Measure::WrittenBack) => {
                format!("{WRITTEN_BACK} would hold more than {max} values")
            }
            (Limit::DocumentNodes, _) => format!(
                "the document holds more than {max} values (mappings, sequences and scalars, aliases expanded)"
            ),
            (Limit::SourceNodes, _) => format!(
                "the source holds more than {max} values (mappings, sequences and scalars, aliases expanded)"
            ),
            (Limit::AliasExpansion, _) => format!(
                "aliases are expanded more than {max} times per node written in the document"
            ),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The limit behind an error `serde_yaml_ng` raised by itself, if any.
pub(crate) fn yaml_limit(e: &serde_yaml_ng::Error) -> Option<Limit> {
    let text = e.to_string();
    if text.starts_with("repetition limit exceeded") {
        Some(Limit::AliasExpansion)
    } else if text.starts_with("recursion limit exceeded") {
        Some(Limit::Depth)
    } else {
        None
    }
}

/// What a limit was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    /// The text as written.
    Text,
    /// The values the text builds, aliases expanded.
    Expanded,
    /// The resource as it will be written back (stored as JSON, shown as YAML).
    WrittenBack,
}

/// A limit passed at a place in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exceeded {
    pub limit: Limit,
    pub measure: Measure,
    /// 1-based document; 0 for the source as a whole.
    pub document: usize,
    /// 1-based line, where known.
    pub line: Option<usize>,
}

/// Checks that `resource`, written back, parses again under `limits`: the control plane stores
/// resources as JSON and reads them back with [`crate::parse_documents`], and `trellis get -o
/// yaml` output is meant to be applied again. Values the source built (aliases, block scalars,
/// defaults filled in) can make the written form larger than the text was.
pub(crate) fn written_back(resource: &Resource, limits: &Limits) -> Result<(), Limit> {
    let json = serde_json::to_vec(resource).unwrap_or_default();
    if json.len() > limits.max_document_bytes {
        return Err(Limit::DocumentBytes);
    }
    let (nodes, depth) = json_shape(&json);
    if nodes > limits.max_document_nodes {
        return Err(Limit::DocumentNodes);
    }
    if depth > limits.max_depth {
        return Err(Limit::Depth);
    }
    // YAML differs from JSON by the indentation of each line (two spaces a level), `- ` and
    // quoting. Every value, and every line break inside a string, takes at least two bytes of
    // JSON, so a resource no deeper than 10 levels has YAML at most about 14 times its JSON:
    // only large or deep ones are serialized to make sure.
    if json.len() > limits.max_document_bytes / 16 || depth > 10 {
        let yaml = serde_yaml_ng::to_string(resource).map_or(usize::MAX, |y| y.len());
        if yaml.saturating_add("---\n".len()) > limits.max_document_bytes {
            return Err(Limit::DocumentBytes);
        }
    }
    Ok(())
}

/// Values (strings, numbers, literals, arrays, objects; keys included) and the deepest nesting
/// of arrays and objects in serialized JSON.
fn json_shape(json: &[u8]) -> (usize, usize) {
    let (mut nodes, mut depth, mut deepest) = (0, 0usize, 0);
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                nodes += 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                nodes += 1;
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                nodes += 1;
                while i + 1 < json.len() && !matches!(json[i + 1], b',' | b']' | b'}') {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    (nodes, deepest)
}

impl Exceeded {
    /// A limit passed by the text, at `line`.
    pub fn text(limit: Limit, document: usize, line: Option<usize>) -> Self {
        Self {
            limit,
            measure: Measure::Text,
            document,
            line,
        }
    }

    pub fn into_error(self, file: &str, limits: &Limits) -> FieldError {
        let max = self.limit.value(limits);
        FieldError {
            file: file.to_string(),
            document: self.document,
            kind: None,
            name: None,
            path: String::new(),
            line: self.line,
            message: format!(
                "exceeds limit {}: {}",
                self.limit.name(),
                self.limit.describe(max, self.measure)
            ),
            limit: Some(self.limit),
        }
    }
}
