//! `trellis stat`, `trellis tap` and `trellis top`: the mesh's golden numbers and live requests,
//! from the proxies through the control plane (`GET /api/v1/stat`, `GET /api/v1/tap`).
use super::*;
use anyhow::bail;
use clap::Args;
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use trellis_api::telemetry::{merge_rows, quantile, spiffe_service, Lines, StatRow, TapEvent};

#[derive(Args, Debug, Clone)]
pub struct StatArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
    /// A service: what it served, per caller. Without one: every service, one row each.
    pub service: Option<String>,
    /// Only the proxies of this namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Calls made by this service, as its sidecars saw them (outbound: proxy-made failures
    /// such as connect errors count too).
    #[arg(long)]
    pub from: Option<String>,
    /// Calls to this service, as the callers' sidecars saw them (outbound).
    #[arg(long)]
    pub to: Option<String>,
    /// How far back, e.g. 30s or 1m (at most 1m: what proxies keep).
    #[arg(long, default_value = "1m")]
    pub window: trellis_api::Duration,
    /// One row per route instead of one per edge.
    #[arg(long)]
    pub by_route: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug, Clone)]
pub struct TapArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
    /// The service whose sidecars tap (requests it receives and makes).
    pub service: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Only requests to this destination service (outbound).
    #[arg(long)]
    pub to: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only this method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only `inbound` or `outbound` requests.
    #[arg(long)]
    pub direction: Option<String>,
    /// Events per second each proxy sends at most (the rest are counted as left out).
    #[arg(long, default_value_t = 100)]
    pub max_rps: u32,
    /// Stop after this many requests.
    #[arg(long)]
    pub max_events: Option<u64>,
    /// Stop after this long, e.g. 30s.
    #[arg(long)]
    pub duration: Option<trellis_api::Duration>,
    /// Show each request's headers (credentials are redacted by the proxy).
    #[arg(long)]
    pub headers: bool,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub tap: TapArgs,
    /// How often the table is redrawn.
    #[arg(long, default_value = "1s")]
    pub interval: trellis_api::Duration,
    /// Rows shown at most.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect();
    parts.join("&")
}

/// `trellis stat`.
pub async fn stat(args: StatArgs) -> anyhow::Result<()> {
    let secs = args.window.0.as_secs();
    if !(1..=u64::from(trellis_api::telemetry::MAX_WINDOW_SECS)).contains(&secs) {
        bail!("--window {secs}s: between 1s and 1m (what proxies keep)");
    }
    let outbound = args.from.is_some() || args.to.is_some();
    if outbound && args.service.is_some() {
        bail!(
            "give a SERVICE (what it served) or --from/--to (calls as callers saw them), not both"
        );
    }
    let window = secs.to_string();
    let (direction, to) = if outbound {
        ("outbound", args.to.as_deref())
    } else {
        ("inbound", args.service.as_deref())
    };
    let q = query(&[
        ("window", Some(&window)),
        ("direction", Some(direction)),
        ("to", to),
        ("from", args.from.as_deref()),
        ("namespace", args.namespace.as_deref()),
    ]);
    let api = Api::connect(&args.control, &args.auth)?;
    let v = api
        .call(http::Method::GET, &format!("/api/v1/stat?{q}"), None)
        .await?;
    let rows: Vec<StatRow> = serde_json::from_value(v["rows"].clone())
        .map_err(|e| anyhow::anyhow!("unreadable answer from the control plane: {e}"))?;
    // Rows per service (no SERVICE), per caller (a SERVICE or --to), per destination (--from).
    let per_caller = args.service.is_some() || args.to.is_some() || args.from.is_some();
    let shown = merge_rows(rows.into_iter().map(|mut r| {
        if !per_caller {
            r.source.clear();
        }
        if !args.by_route {
            r.route.clear();
        }
        r
    }));
    for (id, e) in v["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["id"].as_str()?, r["error"].as_str()?)))
    {
        eprintln!("warning: replica {id} did not answer: {e}");
    }
    if !matches!(args.output, Output::Table) {
        let rows: Vec<Value> = shown.iter().map(row_json).collect();
        let out = serde_json::json!({
            "windowSecs": secs,
            "proxiesAsked": v["proxiesAsked"],
            "proxiesAnswered": v["proxiesAnswered"],
            "rows": rows,
        });
        return print_value(&out, args.output);
    }
    print_stat_table(&shown, per_caller, args.by_route);
    eprintln!(
        "window {secs}s; {} of {} proxies answered",
        v["proxiesAnswered"], v["proxiesAsked"]
    );
    Ok(())
}

fn row_json(r: &StatRow) -> Value {
    let ms = |q| quantile(&r.latency_buckets, q).map(|s| s * 1000.0);
    serde_json::json!({
        "namespace": r.namespace,
        "direction": r.direction,
        "from": caller(&r.source),
        "source": r.source,
        "service": r.service,
        "route": r.route,
        "requests": r.requests,
        "failures": r.failures,
        "successRate": r.success_rate(),
        "rps": r.rps,
        "p50Ms": ms(0.5),
        "p95Ms": ms(0.95),
        "p99Ms": ms(0.99),
        "proxies": r.proxies,
    })
}

/// `ns/name` of a SPIFFE identity, `-` for a caller that proved none.
fn caller(source: &str) -> String {
    match spiffe_service(source) {
        Some((ns, name)) => format!("{ns}/{name}"),
        None if source.is_empty() => "-".into(),
        None => source.into(),
    }
}

fn print_stat_table(rows: &[StatRow], per_caller: bool, by_route: bool) {
    let ms = |r: &StatRow, q| {
        quantile(&r.latency_buckets, q).map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
    };
    let mut header = format!("{:<12} {:<20}", "NAMESPACE", "SERVICE");
    if per_caller {
        header.push_str(&format!(" {:<28}", "FROM"));
    }
    if by_route {
        header.push_str(&format!(" {:<16}", "ROUTE"));
    }
    println!(
        "{header} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "SUCCESS", "RPS", "P50", "P95", "P99", "REQUESTS"
    );
    for r in rows {
        let mut line = format!("{:<12} {:<20}", r.namespace, r.service);
        if per_caller {
            line.push_str(&format!(" {:<28}", caller(&r.source)));
        }
        if by_route {
            let route = if r.route.is_empty() { "-" } else { &r.route };
            line.push_str(&format!(" {route:<16}"));
        }
        let success = r
            .success_rate()
            .map_or("-".into(), |s| format!("{:.2}%", s * 100.0));
        println!(
            "{line} {success:>8} {:>9.2} {:>9} {:>9} {:>9} {:>8}",
            r.rps,
            ms(r, 0.5),
            ms(r, 0.95),
            ms(r, 0.99),
            r.requests
        );
    }
}

/// Opens a tap and hands each event to `on_event` until it returns false, the stream ends or
/// the duration passes. Returns how many proxies tapped.
async fn run_tap(
    args: &TapArgs,
    mut on_event: impl FnMut(TapEvent) -> bool,
    mut on_tick: impl FnMut(),
    tick: Duration,
) -> anyhow::Result<()> {
    if let Some(d) = &args.direction {
        if d != "inbound" && d != "outbound" {
            bail!("--direction {d:?}: inbound or outbound");
        }
    }
    let rate = args.max_rps.to_string();
    let q = query(&[
        ("service", Some(&args.service)),
        ("namespace", args.namespace.as_deref()),
        ("to", args.to.as_deref()),
        ("path", args.path.as_deref()),
        ("method", args.method.as_deref()),
        ("direction", args.direction.as_deref()),
        ("maxPerSecond", Some(&rate)),
    ]);
    let api = Api::connect(&args.control, &args.auth)?;
    let mut body = api.open_stream(&format!("/api/v1/tap?{q}")).await?;
    let deadline = args.duration.map(|d| Instant::now() + d.0);
    let mut lines = Lines::default();
    let mut ticker = tokio::time::interval(tick);
    ticker.tick().await;
    let mut header_seen = false;
    loop {
        let until_end = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = ticker.tick() => { on_tick(); continue; }
            () = async { match until_end { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => return Ok(()),
        };
        let chunk = match frame {
            None => bail!("the control plane ended the tap"),
            Some(Err(e)) => bail!("the tap's connection broke: {e}"),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        lines.push(&chunk);
        while let Some(line) = lines.next_line() {
            if line.is_empty() {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if !header_seen {
                header_seen = true;
                let proxies = v["tap"]["proxies"].as_u64().unwrap_or(0);
                for r in v["tap"]["replicas"].as_array().into_iter().flatten() {
                    if let Some(e) = r["error"].as_str() {
                        eprintln!("warning: replica {} is not tapping: {e}", r["id"]);
                    }
                }
                if proxies == 0 {
                    bail!(
                        "no connected proxy serves {:?}{}: nothing to tap",
                        args.service,
                        args.namespace
                            .as_deref()
                            .map(|n| format!(" in namespace {n}"))
                            .unwrap_or_default()
                    );
                }
                eprintln!("tapping {proxies} proxies of {}", args.service);
                continue;
            }
            if let Ok(e) = serde_json::from_value::<TapEvent>(v["event"].clone()) {
                if !on_event(e) {
                    return Ok(());
                }
            }
        }
    }
}

/// `trellis tap`.
pub async fn tap(args: TapArgs) -> anyhow::Result<()> {
    let mut seen = 0u64;
    let max = args.max_events;
    let (output, headers) = (args.output, args.headers);
    run_tap(
        &args,
        |e| {
            print_event(&e, output, headers);
            seen += 1;
            max.is_none_or(|m| seen < m)
        },
        || {},
        Duration::from_secs(3600),
    )
    .await
}

fn print_event(e: &TapEvent, output: Output, headers: bool) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if !matches!(output, Output::Table) {
        let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
        return;
    }
    let grpc = e
        .grpc_status
        .as_deref()
        .map(|g| format!(" grpc-status={g}"))
        .unwrap_or_default();
    let reason = if e.reason.is_empty() {
        String::new()
    } else {
        format!(" trellis-error={}", e.reason)
    };
    let dropped = if e.dropped_before > 0 {
        format!(" ({} left out before this)", e.dropped_before)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{} {} {:<8} src={} dst={} :method={} :authority={} :path={} -> :status={}{grpc}{reason} latency={:.1}ms bytes={}/{} proxy={}{dropped}",
        e.time,
        e.namespace,
        e.direction,
        caller(&e.source),
        e.destination,
        e.method,
        e.authority,
        e.path,
        e.status,
        e.duration_ms,
        e.bytes_received,
        e.bytes_sent,
        e.proxy,
    );
    if headers {
        for (k, v) in &e.request_headers {
            let _ = writeln!(out, "    {k}: {v}");
        }
    }
}

/// One line of `top`: requests of one path from one caller to one destination.
#[derive(Debug, Default, Clone)]
struct PathStats {
    count: u64,
    failures: u64,
    best_ms: f64,
    worst_ms: f64,
    last_ms: f64,
}

type PathKey = (String, String, String, String, String);

/// Paths kept at most (the busiest are what `top` shows; a flood of distinct paths stops here).
const MAX_PATHS: usize = 10_000;

/// `trellis top`: a table of the busiest paths, from a tap, redrawn every interval.
pub async fn top(args: TopArgs) -> anyhow::Result<()> {
    let table = std::cell::RefCell::new(HashMap::<PathKey, PathStats>::new());
    let live = std::io::stdout().is_terminal();
    let rows = args.rows;
    let draw = |clear: bool| {
        let t = table.borrow();
        let mut entries: Vec<(&PathKey, &PathStats)> = t.iter().collect();
        entries.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "{:<8} {:<24} {:<20} {:<7} {:<32} {:>7} {:>8} {:>9} {:>9} {:>9}",
            "DIR", "FROM", "TO", "METHOD", "PATH", "COUNT", "SUCCESS", "BEST", "WORST", "LAST"
        );
        for (k, s) in entries.into_iter().take(rows) {
            let success = 100.0 * (s.count - s.failures) as f64 / s.count.max(1) as f64;
            println!(
                "{:<8} {:<24} {:<20} {:<7} {:<32} {:>7} {:>7.1}% {:>7.1}ms {:>7.1}ms {:>7.1}ms",
                k.0, k.1, k.2, k.3, k.4, s.count, success, s.best_ms, s.worst_ms, s.last_ms
            );
        }
    };
    let result = run_tap(
        &args.tap,
        |e| {
            let failed = e.status >= 500 || e.grpc_status.as_deref().is_some_and(|g| g != "0");
            let key = (
                e.direction.clone(),
                caller(&e.source),
                e.destination.clone(),
                e.method.clone(),
                e.path.clone(),
            );
            let mut t = table.borrow_mut();
            if t.len() < MAX_PATHS || t.contains_key(&key) {
                let s = t.entry(key).or_default();
                if s.count == 0 || e.duration_ms < s.best_ms {
                    s.best_ms = e.duration_ms;
                }
                s.worst_ms = s.worst_ms.max(e.duration_ms);
                s.last_ms = e.duration_ms;
                s.count += 1;
                s.failures += u64::from(failed);
            }
            true
        },
        || {
            if live {
                draw(true);
            }
        },
        args.interval.0,
    )
    .await;
    draw(live);
    result
}
