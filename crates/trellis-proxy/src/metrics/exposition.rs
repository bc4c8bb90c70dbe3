//! The two text formats `/metrics` speaks, chosen by the scraper's `Accept` header: OpenMetrics
//! 1.0 (what Prometheus asks for first) or the classic Prometheus text format 0.0.4 (what a
//! scraper gets that asks for `text/plain` or for nothing in particular: older Prometheus
//! versions, `promtool check metrics`, curl, most other collectors).
//!
//! Why two: the formats name counters differently. OpenMetrics declares a family `requests` whose
//! samples are `requests_total` (plus `requests_created`); a classic parser reading that sees
//! samples of a metric it has no `# HELP`/`# TYPE` for. The classic text is derived from the
//! OpenMetrics encoding (one encoder, so the two never disagree on a value): counter families are
//! declared under their `_total` name, `_created` samples, `# UNIT` lines, exemplars and `# EOF`
//! are dropped, and OpenMetrics-only types become the classic ones (`info` → gauge, `stateset` →
//! gauge, `unknown` → untyped).

/// The text format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    /// The format `accept` prefers: OpenMetrics when it is accepted at least as much as
    /// `text/plain` (by q-value), else classic. No header, or one naming neither, is classic.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let (mut open, mut plain) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .find_map(|v| v.parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" => plain = plain.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= plain {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The classic text format of an OpenMetrics text exposition (see the module docs).
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A `# HELP` line waits for the `# TYPE` line that says what the family is, so a counter's
    // can be written under its `_total` name.
    let mut pending_help: Option<(&str, &str)> = None;
    // The `_created` sample name of the current family, when its type has one.
    let mut created: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, pending_help.take());
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, classic) = match kind {
                "counter" => ("_total", "counter"),
                "gauge" | "info" | "stateset" => ("", "gauge"),
                "histogram" => ("", "histogram"),
                "summary" => ("", "summary"),
                _ => ("", "untyped"),
            };
            let info = if kind == "info" { "_info" } else { "" };
            match pending_help.take() {
                Some((help_name, text)) if help_name == name => {
                    out.push_str(&format!("# HELP {name}{suffix}{info} {text}\n"));
                }
                other => flush_help(&mut out, other),
            }
            out.push_str(&format!("# TYPE {name}{suffix}{info} {classic}\n"));
            created = matches!(kind, "counter" | "histogram" | "summary")
                .then(|| format!("{name}_created"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
            out.push('\n');
        } else {
            flush_help(&mut out, pending_help.take());
            let sample = strip_exemplar(line);
            if created.as_deref() == Some(sample_name(sample)) {
                continue;
            }
            out.push_str(sample);
            out.push('\n');
        }
    }
    flush_help(&mut out, pending_help);
    out
}

/// A `# HELP` line whose `# TYPE` line did not follow: written as it was.
fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name} {text}\n"));
    }
}

/// A sample line without its exemplar (` # {labels} value [timestamp]`), which the classic
/// format does not have. A `#` inside a quoted label value is not an exemplar.
fn strip_exemplar(line: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

/// The metric name of a sample line.
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain; version=0.0.4")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=1, application/openmetrics-text;q=0.5")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Classic
        );
        assert_eq!(Format::negotiate(Some("garbage;;q=x,,")), Format::Classic);
    }

    #[test]
    fn counters_are_declared_under_their_sample_name_and_openmetrics_only_lines_go() {
        let om = "# HELP trellis_requests HTTP requests.\n# TYPE trellis_requests counter\ntrellis_requests_total{code=\"200\"} 3\ntrellis_requests_created{code=\"200\"} 1700000000.0\n# HELP trellis_up Up.\n# TYPE trellis_up gauge\n# UNIT trellis_up seconds\ntrellis_up 1\n# HELP trellis_lat Latency.\n# TYPE trellis_lat histogram\ntrellis_lat_bucket{le=\"0.1\"} 1 # {trace_id=\"a#b\"} 0.05\ntrellis_lat_bucket{le=\"+Inf\"} 2\ntrellis_lat_sum 0.3\ntrellis_lat_count 2\n# HELP trellis_build Build.\n# TYPE trellis_build info\ntrellis_build_info{version=\"1#2\"} 1\n# HELP trellis_certificate_created When.\n# TYPE trellis_certificate_created gauge\ntrellis_certificate_created 5\n# EOF\n";
        let classic = to_classic(om);
        assert_eq!(
            classic,
            "# HELP trellis_requests_total HTTP requests.\n# TYPE trellis_requests_total counter\ntrellis_requests_total{code=\"200\"} 3\n# HELP trellis_up Up.\n# TYPE trellis_up gauge\ntrellis_up 1\n# HELP trellis_lat Latency.\n# TYPE trellis_lat histogram\ntrellis_lat_bucket{le=\"0.1\"} 1\ntrellis_lat_bucket{le=\"+Inf\"} 2\ntrellis_lat_sum 0.3\ntrellis_lat_count 2\n# HELP trellis_build_info Build.\n# TYPE trellis_build_info gauge\ntrellis_build_info{version=\"1#2\"} 1\n# HELP trellis_certificate_created When.\n# TYPE trellis_certificate_created gauge\ntrellis_certificate_created 5\n"
        );
    }
}
