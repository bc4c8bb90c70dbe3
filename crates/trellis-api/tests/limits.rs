//! The parsing limits: each one refuses what passes it, names itself, the file, the document
//! and (where it can) the line, and costs little time however hostile the input. Sources just
//! inside each limit still parse.
use std::time::{Duration, Instant};
use trellis_api::limits::{
    MAX_DEPTH, MAX_DOCUMENTS, MAX_DOCUMENT_BYTES, MAX_DOCUMENT_NODES, MAX_SOURCE_BYTES,
};
use trellis_api::{parse_documents, parse_documents_with_limits, FieldError, Limit, Limits};

const FILE: &str = "big.yaml";

/// Hostile input is refused in well under this (debug build, shared machine).
const QUICK: Duration = Duration::from_secs(5);

/// Parses `text`, expects it refused for `limit` alone, quickly; returns the error.
#[track_caller]
fn refused(text: &str, limit: Limit) -> FieldError {
    refused_with(text, limit, &Limits::default())
}

#[track_caller]
fn refused_with(text: &str, limit: Limit, limits: &Limits) -> FieldError {
    let started = Instant::now();
    let result = parse_documents_with_limits(FILE, text, limits);
    let took = started.elapsed();
    let err = match result {
        Ok(set) => panic!("accepted {} resources", set.resources.len()),
        Err(e) => e,
    };
    assert!(took < QUICK, "took {took:?}");
    assert_eq!(err.errors.len(), 1, "{err}");
    assert_eq!(err.limit(), Some(limit), "{err}");
    let e = err.errors[0].clone();
    let shown = e.to_string();
    assert!(shown.starts_with(FILE), "{shown}");
    assert!(shown.contains(limit.name()), "{shown}");
    e
}

fn workload(i: usize) -> String {
    format!(
        "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: w-{i}}}\nspec: {{service: svc, address: 10.0.{}.{}, port: 8080}}\n",
        i / 250,
        i % 250 + 1
    )
}

fn service(spec: &str) -> String {
    format!("apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: svc}}\nspec: {spec}\n")
}

#[test]
fn source_bytes() {
    let text = "#".repeat(MAX_SOURCE_BYTES + 1);
    let e = refused(&text, Limit::SourceBytes);
    assert_eq!(e.document, 0);
    assert!(e.message.contains(&MAX_SOURCE_BYTES.to_string()), "{e}");
}

#[test]
fn documents() {
    // Empty documents count: each costs the parser work.
    let text = "---\n".repeat(MAX_DOCUMENTS + 1);
    let e = refused(&text, Limit::Documents);
    assert_eq!(e.document, MAX_DOCUMENTS + 1);
    assert_eq!(e.line, Some(MAX_DOCUMENTS + 1));
    // Exactly the limit parses (to nothing).
    let text = "---\n".repeat(MAX_DOCUMENTS);
    assert!(parse_documents(FILE, &text).unwrap().resources.is_empty());
    // Counted as libyaml counts them: an implicit first document, `...` closes without opening.
    let limits = Limits {
        max_documents: 2,
        ..Limits::default()
    };
    let two = format!("{}...\n---\n{}", workload(1), workload(2));
    assert!(parse_documents_with_limits(FILE, &two, &limits).is_ok());
    let three = format!("{two}---\n{}", workload(3));
    assert_eq!(refused_with(&three, Limit::Documents, &limits).document, 3);
}

#[test]
fn document_bytes() {
    let padding = format!("# {}\n", "x".repeat(MAX_DOCUMENT_BYTES));
    let text = format!("{}---\n{}{padding}", workload(0), workload(1));
    let e = refused(&text, Limit::DocumentBytes);
    assert_eq!(e.document, 2);
    // A large but legal document: 1000 ports.
    let ports: Vec<String> = (1..=1000)
        .map(|p| format!("{{name: p{p}, port: {p}}}"))
        .collect();
    let text = service(&format!("{{ports: [{}]}}", ports.join(", ")));
    assert!(parse_documents(FILE, &text).is_ok());
}

#[test]
fn depth_in_every_syntax() {
    let n = 100_000;
    let cases = [
        ("flow sequences", "[".repeat(n)),
        ("flow mappings", "{a: ".repeat(n)),
        ("block sequences", format!("{}x\n", "- ".repeat(n))),
        // Indentation grows quadratically; 2000 levels are 2 MB.
        (
            "block mappings",
            (0..2000)
                .map(|i| format!("{}a:\n", " ".repeat(i)))
                .collect(),
        ),
        ("mixed", format!("spec:\n  x: {}", "[{a: ".repeat(n))),
    ];
    for (what, text) in cases {
        let e = refused(&text, Limit::Depth);
        assert_eq!(e.document, 1, "{what}");
        assert!(e.line.is_some(), "{what}: {e}");
        assert!(
            e.message.contains(&format!("{MAX_DEPTH} levels")),
            "{what}: {e}"
        );
    }
    // In the second document, after a good one.
    let text = format!("{}---\n{}", workload(0), "[".repeat(n));
    let e = refused(&text, Limit::Depth);
    assert_eq!((e.document, e.line), (2, Some(6)));
}

#[test]
fn depth_exactly_at_the_limit() {
    let at = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
    // The document is not a resource, but it gets as far as the resource check.
    let e = parse_documents(FILE, &at(MAX_DEPTH)).unwrap_err();
    assert_eq!(e.limit(), None, "{e}");
    refused(&at(MAX_DEPTH + 1), Limit::Depth);
    // Inside a real resource: a label value nested 60 levels deep is refused for its type.
    let deep_value = format!("{}1{}", "[".repeat(60), "]".repeat(60));
    let text = format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: svc, labels: {{a: {deep_value}}}}}\nspec: {{}}\n"
    );
    let e = parse_documents(FILE, &text).unwrap_err();
    assert_eq!(e.limit(), None, "{e}");
}

#[test]
fn depth_through_aliases() {
    // 40 levels anchored, then aliased 40 levels down: 80 once expanded.
    let forty_open = "[".repeat(40);
    let forty_close = "]".repeat(40);
    let text = format!("a: &deep {forty_open}x{forty_close}\nb: {forty_open}*deep{forty_close}\n");
    let e = refused(&text, Limit::Depth);
    assert_eq!(e.document, 1);
}

#[test]
fn document_nodes_and_alias_bombs() {
    // The billion laughs: nine levels of nine aliases.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        laughs.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            vec![format!("*a{}", i - 1); 9].join(", ")
        ));
    }
    refused(&laughs, Limit::DocumentNodes);
    // One long anchored list aliased many times: serde_yaml_ng's own guard lets this through
    // (and builds 10^8 nodes in 45 s).
    let list = vec!["x"; 10_000].join(",");
    let aliases = vec!["*l"; 10_000].join(",");
    let wide = format!("l: &l [{list}]\nm: [{aliases}]\n");
    let e = refused(&wide, Limit::DocumentNodes);
    assert!(e.message.contains(&MAX_DOCUMENT_NODES.to_string()), "{e}");
    // Without aliases too: one flow list of more values than the limit.
    let many = format!("[{}]", vec!["1"; MAX_DOCUMENT_NODES + 1].join(","));
    refused(&many, Limit::DocumentNodes);
    // Aliases within the limit are fine.
    let text = "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {name: svc, labels: &l {a: b}, annotations: *l}\nspec: {ports: [{port: 80}]}\n";
    let set = parse_documents(FILE, text).unwrap();
    assert_eq!(
        set.resources[0]
            .metadata()
            .annotations
            .get("a")
            .map(String::as_str),
        Some("b")
    );
}

#[test]
fn source_nodes() {
    // Each document builds 1000 values from a short alias; 20 of them pass a 15 000 limit.
    let limits = Limits {
        max_source_nodes: 15_000,
        ..Limits::default()
    };
    let doc = format!(
        "l: &l [{}]\nm: [*l, *l, *l, *l, *l, *l, *l, *l]\n",
        vec!["x"; 110].join(",")
    );
    let text = vec![doc; 20].join("---\n");
    let e = refused_with(&text, Limit::SourceNodes, &limits);
    assert!(e.document > 1 && e.document < 20, "{e}");
}

#[test]
fn the_scale_bench_manifest_fits() {
    // bench/control-plane.sh applies 1000 Services and 10 000 Workloads in one source.
    let mut docs = Vec::new();
    for s in 0..1000 {
        docs.push(format!(
            "apiVersion: trellis.dev/v1\nkind: Service\nmetadata: {{name: svc-{s}}}\nspec: {{ports: [{{port: 80, protocol: http}}]}}"
        ));
        for w in 0..10 {
            docs.push(format!(
                "apiVersion: trellis.dev/v1\nkind: Workload\nmetadata: {{name: svc-{s}-{w}, labels: {{version: v{}}}}}\nspec: {{service: svc-{s}, address: 10.{}.{}.{}, port: 8080}}",
                w % 2,
                s / 250,
                s % 250,
                w + 1
            ));
        }
    }
    let text = docs.join("\n---\n") + "\n";
    let set = parse_documents(FILE, &text).unwrap();
    assert_eq!(set.resources.len(), 11_000);
}

#[test]
fn scalars_that_look_like_structure_do_not_count() {
    // Brackets inside quoted, plain and block scalars and comments are text, not nesting.
    let brackets = "[".repeat(200);
    let text = format!(
        "apiVersion: trellis.dev/v1\nkind: Service\n# {brackets}\nmetadata:\n  name: svc\n  annotations:\n    single: '{brackets}'\n    double: \"{brackets}\"\n    plain: x{brackets}\n    block: |\n      {brackets}\n      {{{{{{{{\nspec: {{ports: [{{port: 80}}]}}\n"
    );
    let set = parse_documents(FILE, &text).unwrap();
    assert_eq!(set.resources[0].metadata().annotations["single"], brackets);
}

#[test]
fn alias_of_a_long_string_counts_every_copy() {
    // 10 KB written once, aliased 200 times: 2 MB of strings to build.
    let long = "x".repeat(10_000);
    let text = format!("s: &s {long}\nl: [{}]\n", vec!["*s"; 200].join(", "));
    let e = refused(&text, Limit::DocumentBytes);
    assert!(e.message.contains("aliases are expanded"), "{e}");
    // Across documents, against the source's bytes.
    let limits = Limits {
        max_source_bytes: 500_000,
        ..Limits::default()
    };
    let doc = format!(
        "s: &s {}\nl: [{}]\n",
        "x".repeat(1000),
        vec!["*s"; 100].join(", ")
    );
    let text = vec![doc; 10].join("---\n");
    let e = refused_with(&text, Limit::SourceBytes, &limits);
    assert!(e.document > 1, "{e}");
}

#[test]
fn what_is_accepted_can_be_read_back() {
    // A block scalar of empty lines is 1 byte a line as YAML, 2 as JSON (`\n`): the control
    // plane could store it and never read it back.
    let text = format!(
        "apiVersion: trellis.dev/v1\nkind: Service\nmetadata:\n  name: svc\n  annotations:\n    a: |+\n{}spec: {{ports: [{{port: 80}}]}}\n",
        "\n".repeat(700_000)
    );
    let e = refused(&text, Limit::DocumentBytes);
    assert!(e.message.contains("written back"), "{e}");
    // Defaults filled in add values: 30 000 backends of 3 values each come back with 5.
    let backends = vec!["{service: svc}"; 30_000].join(", ");
    let text = format!(
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: r}}\nspec:\n  service: svc\n  rules: [{{backends: [{backends}]}}]\n"
    );
    let e = refused(&text, Limit::DocumentNodes);
    assert!(e.message.contains("written back"), "{e}");
    // Just inside: read back as JSON and as YAML.
    let backends = vec!["{service: svc}"; 15_000].join(", ");
    let text = format!(
        "apiVersion: trellis.dev/v1\nkind: Route\nmetadata: {{name: r}}\nspec:\n  service: svc\n  rules: [{{backends: [{backends}]}}]\n"
    );
    let set = parse_documents(FILE, &text).unwrap();
    let json = serde_json::to_string(&set.resources[0]).unwrap();
    assert_eq!(parse_documents("stored.json", &json).unwrap(), set);
    assert_eq!(parse_documents("get.yaml", &set.to_yaml()).unwrap(), set);
}
