//! `trellis check` and `trellis proxy-config`: the mesh as the control plane's replicas see it.
use super::*;
use anyhow::bail;
use clap::Args;
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub struct ProxyConfigArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
    /// A proxy's node id, or a service name (every proxy of it).
    pub name: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Short name of a type URL: `type.googleapis.com/trellis.v1.Route` → `Route`.
fn short_type(url: &str) -> &str {
    url.rsplit('.').next().unwrap_or(url)
}

/// What each matching proxy holds: per type, the version sent, the version it acknowledged, and
/// the last rejection with its reason.
pub async fn proxy_config(args: ProxyConfigArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    let v = api.call(http::Method::GET, "/api/v1/proxies", None).await?;
    let proxies: Vec<&Value> = v["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"] == args.name.as_str() || p["service"] == args.name.as_str())
        .collect();
    if proxies.is_empty() {
        bail!(
            "no connected proxy is named {:?} or serves a service of that name",
            args.name
        );
    }
    if !matches!(args.output, Output::Table) {
        return print_value(
            &Value::Array(proxies.into_iter().cloned().collect()),
            args.output,
        );
    }
    for p in proxies {
        println!(
            "proxy {} (service {}, {} stream, {})",
            p["id"].as_str().unwrap_or_default(),
            p["service"].as_str().unwrap_or_default(),
            p["mode"].as_str().unwrap_or_default(),
            if p["inSync"] == true {
                "in sync"
            } else {
                "NOT in sync"
            }
        );
        println!("  {:<24} {:<20} {:<20} LAST NACK", "TYPE", "SENT", "ACKED");
        for (url, t) in p["types"].as_object().into_iter().flatten() {
            let nack = match &t["last_nack"] {
                Value::Null => "-".to_string(),
                n => format!(
                    "version {}: {}",
                    n["version"].as_str().unwrap_or_default(),
                    n["error"].as_str().unwrap_or_default()
                ),
            };
            println!(
                "  {:<24} {:<20} {:<20} {}",
                short_type(url),
                t["sent_version"].as_str().unwrap_or("-"),
                t["acked_version"].as_str().unwrap_or("-"),
                nack
            );
        }
    }
    Ok(())
}

/// Is the mesh healthy, as any replica sees it: every replica listed in `--control` answers
/// with its store reachable; no replica the store knows of is down; the store can be read;
/// every registered workload's proxy is connected (to any replica); and every connected proxy
/// holds what the current config says it should. A proxy out of sync right after a change is
/// asked about again for a few seconds before it counts. Exits non-zero only for these.
pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    let mut problems = probe_listed(&args).await?;
    let health = api.reply(http::Method::GET, "/api/v1/health", None).await?;
    for (replica, why) in &health.skipped {
        println!("warn replica {replica} did not answer: {}", one_line(why));
    }
    println!("ok   control plane at {} answers", health.replica);
    let mut status = api
        .reply(http::Method::GET, "/api/v1/proxies", None)
        .await?;
    for _ in 0..SYNC_RETRIES {
        if out_of_sync(&status.value).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        status = api
            .reply(http::Method::GET, "/api/v1/proxies", None)
            .await?;
    }
    println!("     (the mesh as replica {} sees it)", status.replica);
    let status = status.value;
    if let Some(e) = status["store"].as_str() {
        println!("FAIL the store cannot be read: {e}");
        problems += 1;
    }
    for r in status["replicas"].as_array().into_iter().flatten() {
        let (id, addr) = (
            r["id"].as_str().unwrap_or("?"),
            r["api"].as_str().unwrap_or("?"),
        );
        if r["up"] == true {
            println!(
                "ok   replica {id} at {addr} is up (config at revision {})",
                r["modelRevision"]
            );
        } else {
            problems += 1;
            println!(
                "FAIL replica {id} at {addr} is down: no heartbeat for {:.1} s",
                r["heartbeatAgeMs"].as_f64().unwrap_or(0.0) / 1000.0
            );
        }
    }
    let proxies: Vec<Value> = status["proxies"].as_array().cloned().unwrap_or_default();
    let workloads = api
        .call(http::Method::GET, "/api/v1/resources?kind=Workload", None)
        .await?;
    for w in workloads["items"].as_array().into_iter().flatten() {
        let name = w["metadata"]["name"].as_str().unwrap_or_default();
        match proxies.iter().find(|p| p["id"] == name) {
            Some(p) => println!(
                "ok   workload {name} has a connected proxy (on replica {})",
                p["replica"].as_str().unwrap_or("?")
            ),
            None => {
                println!("FAIL workload {name} is registered but no proxy named {name} is connected to any replica");
                problems += 1;
            }
        }
    }
    let stale = out_of_sync(&status);
    for p in &proxies {
        let id = p["id"].as_str().unwrap_or_default();
        match stale.iter().find(|(sid, _)| sid == id) {
            None => println!("ok   proxy {id} is in sync"),
            Some((_, why)) => {
                problems += 1;
                println!("FAIL proxy {id} is not in sync{why}");
            }
        }
    }
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    println!("the mesh is healthy ({} proxies connected)", proxies.len());
    Ok(())
}

/// How many times `check` asks again about proxies out of sync (1 s apart).
const SYNC_RETRIES: usize = 4;

/// Every replica named in `--control` (when it names several): answers, store reachable.
async fn probe_listed(args: &CheckArgs) -> anyhow::Result<usize> {
    let listed = parse_replicas(&args.control.control)?;
    if listed.len() < 2 {
        return Ok(0);
    }
    let mut problems = 0;
    for url in listed {
        let one = Api::new(&ControlArgs {
            control: url.clone(),
        })
        .with_token(args.auth.resolve()?.as_deref())?;
        match one.call(http::Method::GET, "/api/v1/health", None).await {
            Ok(_) => println!("ok   replica {url} answers and reaches the store"),
            Err(e) => {
                problems += 1;
                println!("FAIL replica {url}: {}", one_line(&e.to_string()));
            }
        }
    }
    Ok(problems)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The proxies not in sync, with why (their rejections, if any), by id.
fn out_of_sync(status: &Value) -> Vec<(String, String)> {
    status["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let nacks: Vec<String> = p["types"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(url, t)| {
                    let n = &t["last_nack"];
                    let current = n["version"] == t["sent_version"];
                    (!n.is_null() && current).then(|| {
                        format!(
                            "{} rejected: {}",
                            short_type(url),
                            n["error"].as_str().unwrap_or_default()
                        )
                    })
                })
                .collect();
            if p["inSync"] == true && nacks.is_empty() {
                return None;
            }
            let why = if nacks.is_empty() {
                String::new()
            } else {
                format!(": {}", nacks.join("; "))
            };
            Some((p["id"].as_str().unwrap_or_default().to_string(), why))
        })
        .collect()
}
