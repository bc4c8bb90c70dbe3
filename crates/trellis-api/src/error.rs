//! Errors that say where: file, document (1-based), the resource's kind and name when known, the
//! field path (`spec.rules[0].backends[1].weight`) and, for YAML syntax, the line.
use crate::limits::Limit;
use std::fmt;

/// One problem in a configuration source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub file: String,
    /// 1-based index of the YAML document in the file; 0 when the problem spans the file.
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Dotted field path; empty for document-level problems.
    pub path: String,
    /// 1-based line, where the YAML parser knows it.
    pub line: Option<usize>,
    pub message: String,
    /// The parsing limit the source passed, when that is the problem (see [`crate::limits`]).
    pub limit: Option<Limit>,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} {n:?})")?,
            (Some(k), None) => write!(f, " ({k})")?,
            _ => {}
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one source; a source with any problem is rejected whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl ConfigError {
    /// The first parsing limit the source passed, if it was refused for one.
    pub fn limit(&self) -> Option<Limit> {
        self.errors.iter().find_map(|e| e.limit)
    }

    pub fn single(error: FieldError) -> Self {
        Self {
            errors: vec![error],
        }
    }

    /// A problem with the whole source (unreadable, for instance).
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Self::single(FieldError {
            file: file.to_string(),
            document: 0,
            kind: None,
            name: None,
            path: String::new(),
            line: None,
            message: message.into(),
            limit: None,
        })
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// An error and its sources, joined by `: `, so the cause ("connection refused") is not hidden
/// behind a summary ("client error"): the one way Trellis flattens an error into a line of text.
/// At most eight sources are followed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    for source in std::iter::successors(e.source(), |s| s.source()).take(8) {
        out.push_str(": ");
        out.push_str(&source.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn the_chain_names_every_cause() {
        let e = Layer(
            "client error",
            Some(Box::new(Layer(
                "connect",
                Some(Box::new(Layer("refused", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "client error: connect: refused");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
        let mut deep = Layer("last", None);
        for _ in 0..20 {
            deep = Layer("x", Some(Box::new(deep)));
        }
        assert_eq!(error_chain(&deep).matches(": ").count(), 8, "bounded");
    }
}
