//! The parser end to end: the full fixture, syntax and type errors with their locations, the
//! envelope (kind, apiVersion), round trips, and inputs that must not panic.
mod common;

use common::*;
use trellis_api::parse::{KINDS, MANAGED_KINDS};
use trellis_api::route::PathMatchType;
use trellis_api::{parse_documents, Duration, Resource};

#[test]
fn full_fixture_is_valid_and_holds_every_kind() {
    let set = valid(FULL);
    // The control plane writes the managed kinds; a user's fixture holds every other.
    for kind in KINDS.iter().filter(|k| !MANAGED_KINDS.contains(k)) {
        assert!(
            set.resources.iter().any(|r| r.kind() == *kind),
            "fixture lacks {kind}"
        );
    }
    assert_eq!(set.resources.len(), 17);
    let route = set.routes().next().unwrap();
    assert_eq!(route.metadata.namespace, "shop");
    let rule = &route.spec.rules[1];
    assert_eq!(
        rule.matches[0].path.as_ref().unwrap().kind,
        PathMatchType::RegularExpression
    );
    assert_eq!(rule.backends[1].weight, 10);
    assert_eq!(rule.timeout, Some(Duration::from_secs(3)));
    let retries = rule.retries.as_ref().unwrap();
    assert_eq!(
        retries.backoff.as_ref().unwrap().base_interval,
        Duration::from_millis(25)
    );
    assert_eq!(set.mesh_config().trust_domain, "cluster.local");
    // Defaults fill what the file leaves out.
    let ratings = set
        .services()
        .find(|s| s.metadata.name == "ratings")
        .unwrap();
    assert_eq!(ratings.spec.ports[0].name, "");
    let mc = set.mesh_configs().next().unwrap();
    assert_eq!(mc.metadata.namespace, "default");
}

#[test]
fn round_trip_through_to_yaml_gives_an_equal_set() {
    let set = valid(FULL);
    let yaml = set.to_yaml();
    let again = parse_documents("round-trip.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(set, again);
    // And it is a fixed point.
    assert_eq!(yaml, again.to_yaml());
}

#[test]
fn empty_sources_and_documents_are_skipped() {
    assert!(valid("").resources.is_empty());
    assert!(valid("---\n---\n# only a comment\n---\n")
        .resources
        .is_empty());
    let text = format!("---\n---\n{}\n---\n~\n---\n", doc("Service", "ratings"));
    assert_eq!(valid(&text).resources.len(), 1);
}

#[test]
fn malformed_yaml_reports_line_and_document() {
    let text = format!(
        "{}---\napiVersion: trellis.dev/v1\nkind: Service\nmetadata:\n  name: [unclosed\n",
        doc("Service", "ratings")
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!(e.document, 2);
    assert!(e.line.is_some(), "{e:?}");
    assert!(e.message.starts_with("invalid YAML"), "{}", e.message);
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{FILE}:{}", e.line.unwrap())),
        "{shown}"
    );

    // Tab indentation, a classic.
    let e = &errors("apiVersion: trellis.dev/v1\nkind: Service\nmetadata:\n\tname: x\n")[0];
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn unknown_field_names_its_path() {
    let text = doc("Route", "reviews").replace("backends:", "bakends:");
    let e = expect(&text, "spec.rules[0].bakends", "unknown field `bakends`");
    assert_eq!(e.document, 1);
    assert_eq!(e.kind.as_deref(), Some("Route"));
    assert_eq!(e.name.as_deref(), Some("reviews"));
    let shown = e.to_string();
    assert!(shown.contains(FILE), "{shown}");
    assert!(shown.contains("document 1"), "{shown}");
    assert!(shown.contains("Route \"reviews\""), "{shown}");
    assert!(shown.contains("spec.rules[0].bakends"), "{shown}");

    // At the top level and in metadata too.
    expect(
        &with(&doc("Service", "ratings"), "status", "{}"),
        "status",
        "unknown field",
    );
    expect(
        &with(&doc("Service", "ratings"), "metadata.label", "{a: b}"),
        "metadata.label",
        "unknown field",
    );
}

#[test]
fn wrong_type_names_its_path() {
    let text = with(&doc("Service", "ratings"), "spec.ports[0].port", "\"http\"");
    let e = expect(&text, "spec.ports[0].port", "invalid type");
    assert_eq!(e.kind.as_deref(), Some("Service"));
    assert_eq!(e.name.as_deref(), Some("ratings"));

    let text = with(&doc("Service", "ratings"), "spec.ports[0].port", "70000");
    expect(&text, "spec.ports[0].port", "invalid value");

    let text = with(&doc("Route", "reviews"), "spec.rules", "{}");
    expect(&text, "spec.rules", "invalid type");

    let text = with(
        &doc("Route", "reviews"),
        "spec.rules[0].matches[0].path.type",
        "Prefix",
    );
    expect(
        &text,
        "spec.rules[0].matches[0].path.type",
        "unknown variant `Prefix`",
    );

    let text = with(&doc("Route", "reviews"), "spec.service", "~");
    expect(&text, "spec", "missing field `service`");
}

#[test]
fn out_of_range_weight() {
    let text = format!(
        "{}---\n{}",
        with(
            &doc("Route", "reviews"),
            "spec.rules[1].backends[1].weight",
            "10001"
        ),
        doc("DestinationPolicy", "reviews")
    );
    let e = expect(
        &text,
        "spec.rules[1].backends[1].weight",
        "between 0 and 10000",
    );
    assert_eq!(e.document, 1);
    assert_eq!(e.kind.as_deref(), Some("Route"));
    assert_eq!(e.name.as_deref(), Some("reviews"));
    assert!(e.to_string().contains("mesh.yaml: document 1 (Route \"reviews\"): spec.rules[1].backends[1].weight: must be between 0 and 10000 (got 10001)"), "{e}");
}

#[test]
fn duplicate_names() {
    let svc = doc("Service", "ratings");
    let text = format!("{svc}---\n{svc}");
    let e = expect(&text, "metadata.name", "duplicate Service \"ratings\"");
    assert_eq!(e.document, 2);
    // The same name in another namespace, or of another kind, is fine.
    let other_ns = with(&svc, "metadata.namespace", "other");
    valid(&format!("{svc}---\n{other_ns}"));
    valid(&format!(
        "{svc}---\n{}",
        doc("Workload", "ratings-0").replace("ratings-0", "ratings")
    ));
}

#[test]
fn regex_that_does_not_compile() {
    let text = format!(
        "{}---\n{}",
        with(
            &doc("Route", "reviews"),
            "spec.rules[1].matches[0].path.value",
            "\"^/api/(v1\""
        ),
        doc("DestinationPolicy", "reviews")
    );
    let e = expect(
        &text,
        "spec.rules[1].matches[0].path.value",
        "invalid regular expression \"^/api/(v1\"",
    );
    // The regex engine's own explanation is kept.
    assert!(e.message.contains("unclosed group"), "{}", e.message);
}

#[test]
fn unknown_kind() {
    let text = doc("Service", "ratings").replace("kind: Service", "kind: VirtualService");
    let e = expect(&text, "kind", "unknown kind \"VirtualService\"");
    assert!(
        e.message.contains("Service, Workload, Route"),
        "{}",
        e.message
    );
    assert_eq!(e.kind, None);
    assert_eq!(e.name.as_deref(), Some("ratings"));
    expect(
        &with(&doc("Service", "ratings"), "kind", "~"),
        "kind",
        "missing field",
    );
    expect(
        &with(&doc("Service", "ratings"), "kind", "[Service]"),
        "kind",
        "must be a string",
    );
}

#[test]
fn wrong_api_version() {
    let text = with(
        &doc("Service", "ratings"),
        "apiVersion",
        "networking.istio.io/v1",
    );
    let e = expect(
        &text,
        "apiVersion",
        "unsupported apiVersion \"networking.istio.io/v1\"",
    );
    assert!(e.message.contains("trellis.dev/v1"));
    assert_eq!(e.kind.as_deref(), Some("Service"));
    expect(
        &with(&doc("Service", "ratings"), "apiVersion", "~"),
        "apiVersion",
        "missing field",
    );
    expect(
        &with(&doc("Service", "ratings"), "apiVersion", "1"),
        "apiVersion",
        "must be a string",
    );
}

#[test]
fn non_mapping_documents() {
    for text in ["- a\n- b\n", "just a string\n", "42\n", "[]\n", "!tag {}\n"] {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{text:?}: {errs:?}");
        assert_eq!(errs[0].path, "");
        assert_eq!(errs[0].document, 1);
        assert!(
            errs[0].message.contains("must be a mapping"),
            "{text:?}: {}",
            errs[0]
        );
    }
}

#[test]
fn every_document_is_checked_and_every_problem_reported() {
    let text = format!(
        "{}---\n{}---\n{}",
        with(&doc("Service", "ratings"), "spec.ports[0].port", "0"),
        doc("Workload", "ratings-0"),
        with(&doc("Deployment", "reviews-v2"), "spec.replicas", "0"),
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(
        (errs[0].document, errs[0].path.as_str()),
        (1, "spec.ports[0].port")
    );
    assert_eq!(
        (errs[1].document, errs[1].path.as_str()),
        (3, "spec.replicas")
    );
    // ConfigError's Display lists them one per line.
    let shown = parse(&text).unwrap_err().to_string();
    assert_eq!(shown.lines().count(), 2, "{shown}");
}

#[test]
fn oversized_source_is_refused() {
    let text = " ".repeat(trellis_api::parse::MAX_SOURCE_BYTES + 1);
    let e = &errors(&text)[0];
    assert_eq!(e.document, 0);
    assert!(e.message.contains("limit"));
}

#[test]
fn resources_from_the_set_api() {
    let set = valid(FULL);
    let r = &set.resources[0];
    assert!(matches!(r, Resource::MeshConfig(_)));
    assert_eq!(r.key(), "MeshConfig/default/mesh");
    assert_eq!(set.destination_policies().count(), 2);
    assert_eq!(set.workloads().count(), 2);
    assert_eq!(set.authorization_policies().count(), 1);
    assert_eq!(set.request_authentications().count(), 1);
    assert_eq!(set.deployments().count(), 1);
}

/// Inputs the parser must survive: prefixes of the fixture, and small byte-level edits. (The
/// fuzz target in `fuzz/` does this at scale; this is a cheap, deterministic sample.)
#[test]
fn nothing_panics_on_truncated_or_mangled_input() {
    let check = |text: &str| {
        if let Ok(set) = parse(text) {
            let again = parse(&set.to_yaml());
            assert!(again.is_ok(), "round trip failed for {text:?}: {again:?}");
        }
    };
    for (end, c) in FULL.char_indices() {
        if c == '\n' || end % 17 == 0 {
            check(&FULL[..end]);
        }
    }
    let bytes = FULL.as_bytes();
    let replacements: &[&[u8]] = &[b"", b":", b"- ", b"[", b"'", b"*", b"&a ", b"\t"];
    for pos in (0..bytes.len()).step_by(97) {
        for rep in replacements {
            let mut v = bytes[..pos].to_vec();
            v.extend_from_slice(rep);
            v.extend_from_slice(&bytes[pos + 1..]);
            check(&String::from_utf8_lossy(&v));
        }
    }
}

#[test]
fn hostile_yaml_does_not_panic() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let _ = parse(&deep);
    let deep_map = "a: ".repeat(10_000);
    let _ = parse(&deep_map);
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    let _ = parse(laughs);
    let _ = parse("\u{feff}apiVersion: trellis.dev/v1\n");
    let _ = parse("? [a]\n: b\n");
    let _ = parse("<<: *undefined\n");
    let _ = parse("\0\u{1}\u{85}\u{2028}");
}

/// The example mesh bundled at the repository root (`trellis up examples/mesh.yaml`) must stay
/// valid as validation grows.
#[test]
fn bundled_example_mesh_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mesh.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipped: {} not found", path.display());
        return;
    };
    let set = valid(&text);
    let again = parse_documents("again.yaml", &set.to_yaml()).unwrap();
    assert_eq!(set, again);
}
