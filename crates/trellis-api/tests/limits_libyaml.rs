//! The pre-scan against libyaml itself: over many generated sources (structure, scalars of every
//! style, comments, tags, anchors, document markers, tabs, odd line breaks), it must open the
//! same collections at the same flow and block levels as libyaml's scanner and count the same
//! documents; where libyaml stops with an error, it must have seen at least as much.
//!
//! Why: the pre-scan is what keeps deeply nested text away from libyaml, whose scanner is
//! quadratic in flow nesting. If it ever read as a scalar what libyaml reads as structure, a
//! hidden `[` could get past it. A `serde_yaml_ng` or `unsafe-libyaml` upgrade that changes
//! how libyaml tokenizes shows up here first.
use trellis_api::limits::{scan_trace, ScanTrace};
use unsafe_libyaml::*;

/// What libyaml's scanner sees, and whether it stopped on an error.
fn libyaml(text: &str) -> (ScanTrace, bool) {
    let mut t = ScanTrace::default();
    let (mut flow, mut block) = (0usize, 0usize);
    let mut first = true;
    let mut failed = false;
    // SAFETY: the parser is initialized before use and deleted after; every token it fills is
    // deleted once read; `text` outlives the parser.
    unsafe {
        let mut parser = std::mem::MaybeUninit::<yaml_parser_t>::uninit();
        assert!(yaml_parser_initialize(parser.as_mut_ptr()).ok);
        let mut parser = parser.assume_init();
        yaml_parser_set_input_string(&mut parser, text.as_ptr(), text.len() as u64);
        loop {
            let mut token = std::mem::MaybeUninit::<yaml_token_t>::uninit();
            if !yaml_parser_scan(&mut parser, token.as_mut_ptr()).ok {
                failed = true;
                break;
            }
            let mut token = token.assume_init();
            let kind = token.type_;
            yaml_token_delete(&mut token);
            match kind {
                YAML_STREAM_START_TOKEN => continue,
                YAML_STREAM_END_TOKEN => break,
                YAML_FLOW_SEQUENCE_START_TOKEN | YAML_FLOW_MAPPING_START_TOKEN => {
                    t.opened += 1;
                    flow += 1;
                    t.max_flow_level = t.max_flow_level.max(flow);
                }
                YAML_FLOW_SEQUENCE_END_TOKEN | YAML_FLOW_MAPPING_END_TOKEN => {
                    flow = flow.saturating_sub(1)
                }
                YAML_BLOCK_SEQUENCE_START_TOKEN | YAML_BLOCK_MAPPING_START_TOKEN => {
                    t.opened += 1;
                    block += 1;
                    t.max_block_level = t.max_block_level.max(block);
                }
                YAML_BLOCK_END_TOKEN => block -= 1,
                YAML_DOCUMENT_START_TOKEN => t.documents += 1,
                _ => {}
            }
            // The parser starts an implicit first document at any other first token.
            if first
                && !matches!(
                    kind,
                    YAML_DOCUMENT_START_TOKEN
                        | YAML_VERSION_DIRECTIVE_TOKEN
                        | YAML_TAG_DIRECTIVE_TOKEN
                )
            {
                t.documents += 1;
            }
            first = false;
        }
        yaml_parser_delete(&mut parser);
    }
    (t, failed)
}

#[track_caller]
fn agree(text: &str) -> bool {
    let (theirs, failed) = libyaml(text);
    let ours = scan_trace(text);
    if failed {
        assert!(
            ours.opened >= theirs.opened
                && ours.max_flow_level >= theirs.max_flow_level
                && ours.max_block_level >= theirs.max_block_level,
            "{text:?}: libyaml (stopped on an error) saw {theirs:?}, the pre-scan {ours:?}"
        );
    } else {
        assert_eq!(ours, theirs, "{text:?}");
    }
    !failed
}

/// xorshift64: the same sources on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

const PIECES: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    "\"",
    "#",
    "-",
    "- ",
    ":",
    ": ",
    "?",
    "? ",
    "|",
    ">",
    "|2",
    ">-",
    "\n",
    "\n",
    "\n",
    " ",
    " ",
    "  ",
    "\t",
    "a",
    "b",
    "x y",
    "&a ",
    "*a",
    "!t ",
    "!<u> ",
    "!",
    "---",
    "...",
    "--- ",
    "%YAML 1.1\n",
    "\\",
    "\\\"",
    "''",
    "\r\n",
    "\u{85}",
    "\u{2028}",
    "é",
    "\u{feff}",
    "key: ",
    "[a, b]",
    "{a: b}",
    "'it''s'",
    "\"q\\\"\"",
    "k: |\n  text [\n",
    "\\x4",
    "\\u00e9",
    "# c\n",
    "%",
    "@",
    "`",
    "=",
    "~",
    "null",
    "1",
    "a:b",
    ":a",
    "?a",
    "-a",
    "[a:b]",
    " #x",
    "a#b",
    "'a\n b'",
    "\"a\\\n b\"",
    "\n  ",
    "\n    ",
    "\n ",
    "- a\n",
    "a: b\n",
    "|\n  x\n",
    ">+1\n   x\n",
    "|-\n x\n  y\n",
    "k:\n- a\n",
    "? a\n: b\n",
    "[\n",
    "{\n",
    ",\n",
    "\t[",
    "a: \t",
    "&x [",
    "*x,",
    "!!str ",
    "!a!b ",
    "!<a,b> ",
    "\"\\",
    "'\n'",
    "[a]: ",
    "{a: [b]}: c\n",
    "- - ",
    "  - ",
    "\n---\n",
    "\n...\n",
    "x\ty",
    ":\t",
    "-\t",
    "?\t",
];

#[test]
fn generated_sources_tokenize_as_libyaml_does() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut clean = 0;
    // Simple keys go stale 1024 bytes on: long scalars let a key straddle that.
    let long: Vec<String> = [1000, 1015, 1022, 1030]
        .iter()
        .map(|n| "z".repeat(*n))
        .collect();
    for case in 0..30_000 {
        let mut text = String::new();
        if case % 5 == 1 {
            for _ in 0..1 + rng.below(12) {
                match rng.below(4) {
                    0 => text.push_str(&long[rng.below(long.len())]),
                    _ => text.push_str(PIECES[rng.below(PIECES.len())]),
                }
            }
        } else if case % 3 == 0 {
            // Raw characters, indicators weighted heavily.
            let alphabet = b"[]{},:?-#'\"|>&*!% \n\n\t\\ab.0";
            for _ in 0..1 + rng.below(60) {
                text.push(alphabet[rng.below(alphabet.len())] as char);
            }
        } else {
            for _ in 0..1 + rng.below(40) {
                text.push_str(PIECES[rng.below(PIECES.len())]);
            }
        }
        clean += usize::from(agree(&text));
    }
    // Enough of them are valid all the way through for equality to mean something.
    assert!(clean > 5_000, "only {clean} sources scanned cleanly");
}

#[test]
fn real_configs_tokenize_as_libyaml_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("tests/fixtures/full.yaml")];
    if let Ok(dir) = std::fs::read_dir(root.join("../../examples")) {
        files.extend(dir.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(agree(&text), "{} does not scan cleanly", path.display());
        // As JSON too (the control plane's registration path sends JSON).
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            agree(&serde_json::to_string(&value).unwrap());
            agree(&serde_json::to_string_pretty(&value).unwrap());
        }
    }
}
