//! The pre-scan: libyaml's tokenizer, reduced to what decides where tokens start and end, run
//! over the whole source before the YAML parser sees it.
//!
//! It must stay in step with libyaml (`unsafe-libyaml` 0.2.11, a port of libyaml 0.2.5): if it
//! took text for the inside of a scalar that libyaml reads as structure, a `[` it skipped could
//! open a flow collection it never counted. So each function below mirrors one of libyaml's
//! scanner functions (named in its doc) on every path where libyaml succeeds. Where libyaml
//! stops with a scanner error the scan stops too (libyaml never reads past that point) or
//! carries on (it can only see more than libyaml, never less). Errors of libyaml's *parser*
//! never stop the scan: the scanner may already be ahead of them.
//!
//! Every step consumes input or pops what an earlier step pushed, and the stacks are bounded
//! by the depth limit, so the scan is linear in the length of the source.
use super::{Exceeded, Limit, Limits};

#[derive(Debug, Clone, Copy, Default)]
struct SimpleKey {
    possible: bool,
    line: usize,
    column: usize,
    index: usize,
}

/// A scanner error: libyaml stops here, and so does the scan.
struct Stop;

type Step = Result<(), Stop>;

struct Scanner<'a> {
    text: &'a [u8],
    limits: &'a Limits,
    /// Byte offset (libyaml's `mark.index`, which counts bytes of UTF-8).
    pos: usize,
    /// 0-based line and column (in characters), as libyaml counts them.
    line: usize,
    column: usize,
    flow_level: usize,
    /// The current block indentation column; -1 outside any block collection.
    indent: isize,
    /// The indentations rolled over, one per open block collection.
    indents: Vec<isize>,
    simple_key_allowed: bool,
    /// One per flow level, the block level's first.
    simple_keys: Vec<SimpleKey>,
    /// Documents seen, and where the open one started (None between `...` and `---`).
    documents: usize,
    document_start: Option<usize>,
    /// Whether a token other than directives has been seen (the first document may be implicit).
    seen_document: bool,
    trace: ScanTrace,
}

/// What a scan saw, for comparing it with libyaml's own tokens (`tests/limits_libyaml.rs`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanTrace {
    /// Collections opened: flow (`[`, `{`) and block (indentation rolled).
    pub opened: usize,
    pub max_flow_level: usize,
    pub max_block_level: usize,
    pub documents: usize,
}

/// Scans `text` with no limits and says what it saw.
#[doc(hidden)]
pub fn trace(text: &str) -> ScanTrace {
    let unlimited = Limits {
        max_source_bytes: usize::MAX,
        max_documents: usize::MAX,
        max_document_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_document_nodes: usize::MAX,
        max_source_nodes: usize::MAX,
    };
    match scan(text, &unlimited) {
        Ok(trace) => trace,
        Err(_) => unreachable!("nothing exceeds unlimited limits"),
    }
}

/// Checks `text` against the source-wide limits of `limits` (bytes, documents, document bytes,
/// nesting depth) in one linear pass.
pub(crate) fn prescan(text: &str, limits: &Limits) -> Result<(), Exceeded> {
    scan(text, limits).map(|_| ())
}

fn scan(text: &str, limits: &Limits) -> Result<ScanTrace, Exceeded> {
    if text.len() > limits.max_source_bytes {
        return Err(Exceeded::text(Limit::SourceBytes, 0, None));
    }
    // libyaml's reader refuses control characters: it never reads past the first one.
    let end = text
        .char_indices()
        .find(|&(_, c)| !is_yaml_printable(c))
        .map_or(text.len(), |(i, _)| i);
    // The reader drops a byte order mark at the very start (one anywhere else is a character
    // like any other, except at the start of a line where the scanner skips it, as below).
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let mut s = Scanner {
        text: &text.as_bytes()[start.min(end)..end],
        limits,
        pos: 0,
        line: 0,
        column: 0,
        flow_level: 0,
        indent: -1,
        indents: Vec::new(),
        simple_key_allowed: true,
        simple_keys: vec![SimpleKey::default()],
        documents: 0,
        document_start: None,
        seen_document: false,
        trace: ScanTrace::default(),
    };
    match s.run() {
        Ok(Ok(())) | Ok(Err(Stop)) => Ok(ScanTrace {
            documents: s.documents,
            ..s.trace
        }),
        Err(e) => Err(e),
    }
}

/// The characters libyaml's reader accepts (YAML 1.1 `c-printable`).
fn is_yaml_printable(c: char) -> bool {
    matches!(c as u32,
        0x09 | 0x0A | 0x0D | 0x20..=0x7E | 0x85 | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

fn is_alpha(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The characters of a tag's URI (`yaml_parser_scan_tag_uri`); `%` escapes are `%` and two
/// alphanumerics, so they need no special case here.
fn is_uri_char(b: u8, verbatim: bool) -> bool {
    is_alpha(b)
        || b";/?:@&=+$.%!~*'()".contains(&b)
        || (verbatim && matches!(b, b',' | b'[' | b']'))
}

impl Scanner<'_> {
    fn at(&self, k: usize) -> u8 {
        self.text.get(self.pos + k).copied().unwrap_or(0)
    }

    fn is(&self, b: u8) -> bool {
        self.at(0) == b
    }

    fn is_z(&self, k: usize) -> bool {
        self.pos + k >= self.text.len()
    }

    fn is_blank(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }

    fn is_break(&self, k: usize) -> bool {
        match self.at(k) {
            b'\r' | b'\n' => true,
            0xC2 => self.at(k + 1) == 0x85,
            0xE2 => self.at(k + 1) == 0x80 && matches!(self.at(k + 2), 0xA8 | 0xA9),
            _ => false,
        }
    }

    fn is_breakz(&self, k: usize) -> bool {
        self.is_break(k) || self.is_z(k)
    }

    fn is_blankz(&self, k: usize) -> bool {
        self.is_blank(k) || self.is_breakz(k)
    }

    /// `SKIP`: one character.
    fn skip(&mut self) {
        let width = match self.at(0) {
            b if b < 0x80 => 1,
            b if b & 0xE0 == 0xC0 => 2,
            b if b & 0xF0 == 0xE0 => 3,
            _ => 4,
        };
        self.pos = (self.pos + width).min(self.text.len());
        self.column += 1;
    }

    /// `SKIP_LINE`: one line break (CR LF counts as one).
    fn skip_line(&mut self) {
        if self.at(0) == b'\r' && self.at(1) == b'\n' {
            self.pos += 2;
        } else if self.is_break(0) {
            self.skip();
        } else {
            return;
        }
        self.column = 0;
        self.line += 1;
    }

    fn document_marker(&self, c: u8) -> bool {
        self.column == 0
            && self.at(0) == c
            && self.at(1) == c
            && self.at(2) == c
            && self.is_blankz(3)
    }

    fn exceeded(&self, limit: Limit) -> Exceeded {
        Exceeded::text(limit, self.documents, Some(self.line + 1))
    }

    /// A collection opened: counts it, and checks the depth.
    fn opened(&mut self) -> Result<(), Exceeded> {
        let t = &mut self.trace;
        t.opened += 1;
        t.max_flow_level = t.max_flow_level.max(self.flow_level);
        t.max_block_level = t.max_block_level.max(self.indents.len());
        if self.indents.len() + self.flow_level > self.limits.max_depth {
            return Err(self.exceeded(Limit::Depth));
        }
        Ok(())
    }

    fn check_document_bytes(&self) -> Result<(), Exceeded> {
        match self.document_start {
            Some(start) if self.pos - start > self.limits.max_document_bytes => {
                Err(Exceeded::text(Limit::DocumentBytes, self.documents, None))
            }
            _ => Ok(()),
        }
    }

    /// Where the parser starts a document: at `---`, or at the first content token of the
    /// stream (only the first document may start without `---`).
    fn start_document(&mut self) -> Result<(), Exceeded> {
        self.check_document_bytes()?;
        self.documents += 1;
        self.seen_document = true;
        self.document_start = Some(self.pos);
        if self.documents > self.limits.max_documents {
            return Err(self.exceeded(Limit::Documents));
        }
        Ok(())
    }

    fn content_token(&mut self) -> Result<(), Exceeded> {
        if !self.seen_document {
            self.start_document()?;
        }
        Ok(())
    }

    /// Runs to the end of the text or libyaml's first scanner error; `Err` on a limit.
    fn run(&mut self) -> Result<Result<(), Stop>, Exceeded> {
        loop {
            self.scan_to_next_token();
            self.unroll_indent(self.column as isize);
            self.check_document_bytes()?;
            if self.is_z(0) {
                return Ok(Ok(()));
            }
            let step = self.fetch_next_token()?;
            if step.is_err() {
                return Ok(step);
            }
        }
    }

    /// `yaml_parser_fetch_next_token`, after `scan_to_next_token` and `unroll_indent`.
    fn fetch_next_token(&mut self) -> Result<Step, Exceeded> {
        let c = self.at(0);
        if self.column == 0 && c == b'%' {
            // A directive libyaml accepts ends with a comment or a line break, which it
            // consumes; one it does not accept stops it.
            self.unroll_indent(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            self.seen_document = true;
            while !self.is_breakz(0) {
                self.skip();
            }
            self.skip_line();
            return Ok(Ok(()));
        }
        if self.document_marker(b'-') {
            self.unroll_indent(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            self.start_document()?;
            for _ in 0..3 {
                self.skip();
            }
            return Ok(Ok(()));
        }
        if self.document_marker(b'.') {
            self.unroll_indent(-1);
            self.remove_simple_key();
            self.simple_key_allowed = false;
            if !self.seen_document {
                // The first document may be implicit, even an empty one.
                self.start_document()?;
            }
            self.check_document_bytes()?;
            self.document_start = None;
            for _ in 0..3 {
                self.skip();
            }
            return Ok(Ok(()));
        }
        self.content_token()?;
        match c {
            b'[' | b'{' => {
                self.save_simple_key();
                self.flow_level += 1;
                self.simple_keys.push(SimpleKey::default());
                self.opened()?;
                self.simple_key_allowed = true;
                self.skip();
                Ok(Ok(()))
            }
            b']' | b'}' => {
                self.remove_simple_key();
                if self.flow_level > 0 {
                    self.flow_level -= 1;
                    self.simple_keys.pop();
                }
                self.simple_key_allowed = false;
                self.skip();
                Ok(Ok(()))
            }
            b',' => {
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
                Ok(Ok(()))
            }
            b'-' if self.is_blankz(1) => {
                if self.flow_level == 0 {
                    if !self.simple_key_allowed {
                        return Ok(Err(Stop));
                    }
                    self.roll_indent(self.column as isize)?;
                }
                self.remove_simple_key();
                self.simple_key_allowed = true;
                self.skip();
                Ok(Ok(()))
            }
            b'?' if self.flow_level > 0 || self.is_blankz(1) => {
                if self.flow_level == 0 {
                    if !self.simple_key_allowed {
                        return Ok(Err(Stop));
                    }
                    self.roll_indent(self.column as isize)?;
                }
                self.remove_simple_key();
                self.simple_key_allowed = self.flow_level == 0;
                self.skip();
                Ok(Ok(()))
            }
            b':' if self.flow_level > 0 || self.is_blankz(1) => self.fetch_value(),
            b'*' | b'&' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                Ok(self.scan_anchor())
            }
            b'!' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                Ok(self.scan_tag())
            }
            b'|' | b'>' if self.flow_level == 0 => {
                self.remove_simple_key();
                self.simple_key_allowed = true;
                Ok(self.scan_block_scalar())
            }
            b'\'' | b'"' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                Ok(self.scan_flow_scalar(c == b'\''))
            }
            _ if self.starts_plain_scalar() => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                Ok(self.scan_plain_scalar())
            }
            // "found character that cannot start any token"
            _ => Ok(Err(Stop)),
        }
    }

    fn starts_plain_scalar(&self) -> bool {
        let c = self.at(0);
        let indicator = self.is_blankz(0)
            || matches!(
                c,
                b'-' | b'?'
                    | b':'
                    | b','
                    | b'['
                    | b']'
                    | b'{'
                    | b'}'
                    | b'#'
                    | b'&'
                    | b'*'
                    | b'!'
                    | b'|'
                    | b'>'
                    | b'\''
                    | b'"'
                    | b'%'
                    | b'@'
                    | b'`'
            );
        !indicator
            || (c == b'-' && !self.is_blank(1))
            || (self.flow_level == 0 && matches!(c, b'?' | b':') && !self.is_blankz(1))
    }

    /// `yaml_parser_scan_to_next_token`: spaces, tabs where allowed, comments, line breaks.
    fn scan_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.at(0) == 0xEF && self.at(1) == 0xBB && self.at(2) == 0xBF {
                self.skip();
            }
            while self.is(b' ')
                || ((self.flow_level > 0 || !self.simple_key_allowed) && self.is(b'\t'))
            {
                self.skip();
            }
            if self.is(b'#') {
                while !self.is_breakz(0) {
                    self.skip();
                }
            }
            if !self.is_break(0) {
                return;
            }
            self.skip_line();
            if self.flow_level == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn top_key(&mut self) -> &mut SimpleKey {
        // Never empty: the block level's key is pushed first and never popped.
        let last = self.simple_keys.len() - 1;
        &mut self.simple_keys[last]
    }

    /// `yaml_parser_save_simple_key` (the "required" error is libyaml's to raise).
    fn save_simple_key(&mut self) {
        if self.simple_key_allowed {
            let key = SimpleKey {
                possible: true,
                line: self.line,
                column: self.column,
                index: self.pos,
            };
            *self.top_key() = key;
        }
    }

    /// `yaml_parser_remove_simple_key`.
    fn remove_simple_key(&mut self) {
        self.top_key().possible = false;
    }

    /// `yaml_parser_fetch_value`. A simple key is stale (`yaml_parser_stale_simple_keys`) once
    /// the scan has left its line or gone more than 1024 bytes past it; both only grow, so
    /// checking here is the same as libyaml checking at every token.
    fn fetch_value(&mut self) -> Result<Step, Exceeded> {
        let (line, pos) = (self.line, self.pos);
        let key = *self.top_key();
        let possible = key.possible && key.line >= line && key.index + 1024 >= pos;
        if possible {
            self.roll_indent(key.column as isize)?;
            self.top_key().possible = false;
            self.simple_key_allowed = false;
        } else {
            if self.flow_level == 0 {
                if !self.simple_key_allowed {
                    return Ok(Err(Stop));
                }
                self.roll_indent(self.column as isize)?;
            }
            self.simple_key_allowed = self.flow_level == 0;
        }
        self.skip();
        Ok(Ok(()))
    }

    /// `yaml_parser_roll_indent`: a block collection opens at `column`.
    fn roll_indent(&mut self, column: isize) -> Result<(), Exceeded> {
        if self.flow_level == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
            self.opened()?;
        }
        Ok(())
    }

    /// `yaml_parser_unroll_indent`: block collections deeper than `column` close.
    fn unroll_indent(&mut self, column: isize) {
        if self.flow_level > 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    /// `yaml_parser_scan_anchor` (for anchors and aliases alike).
    fn scan_anchor(&mut self) -> Step {
        self.skip();
        let mut length = 0;
        while is_alpha(self.at(0)) {
            self.skip();
            length += 1;
        }
        let ends = self.is_blankz(0) || b"?:,]}%@`".contains(&self.at(0));
        if length == 0 || !ends {
            return Err(Stop);
        }
        Ok(())
    }

    /// `yaml_parser_scan_tag`: `!<uri>`, or `!`, `!suffix`, `!handle!suffix`.
    fn scan_tag(&mut self) -> Step {
        if self.at(1) == b'<' {
            self.skip();
            self.skip();
            while is_uri_char(self.at(0), true) {
                self.skip();
            }
            if !self.is(b'>') {
                return Err(Stop);
            }
            self.skip();
        } else {
            // The handle (`!` and word characters, maybe a closing `!`) is made of URI
            // characters too, so one loop covers handle and suffix.
            self.skip();
            while is_uri_char(self.at(0), false) {
                self.skip();
            }
        }
        if !self.is_blankz(0) && (self.flow_level == 0 || !self.is(b',')) {
            return Err(Stop);
        }
        Ok(())
    }

    /// `yaml_parser_scan_block_scalar` (`|` or `>`): header, then every line indented at least
    /// as far as the content.
    fn scan_block_scalar(&mut self) -> Step {
        self.skip();
        let mut increment = 0isize;
        if self.is(b'+') || self.is(b'-') {
            self.skip();
            if self.at(0).is_ascii_digit() {
                if self.is(b'0') {
                    return Err(Stop);
                }
                increment = isize::from(self.at(0) - b'0');
                self.skip();
            }
        } else if self.at(0).is_ascii_digit() {
            if self.is(b'0') {
                return Err(Stop);
            }
            increment = isize::from(self.at(0) - b'0');
            self.skip();
            if self.is(b'+') || self.is(b'-') {
                self.skip();
            }
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.is(b'#') {
            while !self.is_breakz(0) {
                self.skip();
            }
        }
        if !self.is_breakz(0) {
            return Err(Stop);
        }
        self.skip_line();
        let mut indent = 0isize;
        if increment != 0 {
            indent = if self.indent >= 0 {
                self.indent + increment
            } else {
                increment
            };
        }
        self.block_scalar_breaks(&mut indent)?;
        while self.column as isize == indent && !self.is_z(0) {
            while !self.is_breakz(0) {
                self.skip();
            }
            self.skip_line();
            self.block_scalar_breaks(&mut indent)?;
        }
        Ok(())
    }

    /// `yaml_parser_scan_block_scalar_breaks`: indentation and empty lines; settles the
    /// content's indentation when the header did not give it.
    fn block_scalar_breaks(&mut self, indent: &mut isize) -> Step {
        let mut max_indent = 0isize;
        loop {
            while (*indent == 0 || (self.column as isize) < *indent) && self.is(b' ') {
                self.skip();
            }
            max_indent = max_indent.max(self.column as isize);
            if (*indent == 0 || (self.column as isize) < *indent) && self.is(b'\t') {
                return Err(Stop);
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        Ok(())
    }

    /// `yaml_parser_scan_flow_scalar`: `'...'` (`''` escapes a quote) or `"..."` (backslash
    /// escapes), over any number of lines, indentation ignored.
    fn scan_flow_scalar(&mut self, single: bool) -> Step {
        let quote = if single { b'\'' } else { b'"' };
        self.skip();
        loop {
            if self.document_marker(b'-') || self.document_marker(b'.') || self.is_z(0) {
                return Err(Stop);
            }
            while !self.is_blankz(0) {
                if single && self.is(b'\'') && self.at(1) == b'\'' {
                    self.skip();
                    self.skip();
                } else if self.is(quote) {
                    break;
                } else if !single && self.is(b'\\') && self.is_break(1) {
                    self.skip();
                    self.skip_line();
                    break;
                } else if !single && self.is(b'\\') {
                    let code_length = match self.at(1) {
                        b'0' | b'a' | b'b' | b't' | b'\t' | b'n' | b'v' | b'f' | b'r' | b'e'
                        | b' ' | b'"' | b'/' | b'\\' | b'N' | b'_' | b'L' | b'P' => 0,
                        b'x' => 2,
                        b'u' => 4,
                        b'U' => 8,
                        _ => return Err(Stop),
                    };
                    self.skip();
                    self.skip();
                    for _ in 0..code_length {
                        if !self.at(0).is_ascii_hexdigit() {
                            return Err(Stop);
                        }
                        self.skip();
                    }
                } else {
                    self.skip();
                }
            }
            if self.is(quote) {
                self.skip();
                return Ok(());
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    /// `yaml_parser_scan_plain_scalar`: runs until `: `, ` #`, a flow indicator (in flow
    /// context), a document marker, or (in block context) a line indented no deeper than the
    /// current block.
    fn scan_plain_scalar(&mut self) -> Step {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if self.document_marker(b'-') || self.document_marker(b'.') || self.is(b'#') {
                break;
            }
            while !self.is_blankz(0) {
                let c = self.at(0);
                if self.flow_level > 0 && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    // "found unexpected ':'"
                    return Err(Stop);
                }
                if (c == b':' && self.is_blankz(1))
                    || (self.flow_level > 0 && b",[]{}".contains(&c))
                {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    if leading_blanks && (self.column as isize) < indent && self.is(b'\t') {
                        return Err(Stop);
                    }
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow_level == 0 && (self.column as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
        Ok(())
    }
}
