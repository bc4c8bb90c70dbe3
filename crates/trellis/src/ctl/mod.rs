//! The Kubernetes-style verbs against a control plane: `apply`, `get`, `describe`, `delete`,
//! `proxy-config`, `check`, and `validate`, which needs none. They speak the control plane's
//! HTTP JSON API and print what it says, errors included (with file, document and field path
//! for invalid config), and the notices of what was applied or validated (`notice: ...` on
//! standard error, one per line: a policy that denies by default only because it has ALLOW
//! rules, for instance).
//!
//! Every verb presents the control plane's join token (`--token`, `--token-file`, or
//! `TRELLIS_TOKEN` / `TRELLIS_TOKEN_FILE`): the control plane refuses anything else.
//!
//! `--control` may list several replicas: a call goes to the one that answered last and fails
//! over to the next on a connect error, a timeout, a connection closed before the whole answer,
//! or a 503 (a replica whose store is away), two passes at most; any other answer is final.
//! `apply` sends each source under a random `Trellis-Apply-Id`, so it can send it again after
//! a cut-off attempt and learn from the replayed answer what the first attempt committed.
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

mod api;
mod mesh;

pub use api::*;
pub use mesh::{check, proxy_config, ProxyConfigArgs};

/// A secret given on the command line or in the environment: `Debug` never shows it.
#[derive(Clone)]
pub struct SecretArg(pub String);

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The join token the control plane requires.
#[derive(Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// The control plane's join token, sent as `Authorization: Bearer <token>` (takes precedence
    /// over --token-file).
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: Option<SecretArg>,
    /// A file holding the join token, such as the one `trellis control` writes
    /// (`<data-dir>/join-token`).
    #[arg(long, env = "TRELLIS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token to send, if any was given.
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.0.trim().to_string()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            bail!("the token file {} is empty", path.display());
        }
        Ok(Some(token.to_string()))
    }
}

/// What a 401 answer adds to the control plane's own words.
pub const TOKEN_HINT: &str = "hint: the control plane requires its join token: pass --token or --token-file (or set TRELLIS_TOKEN / TRELLIS_TOKEN_FILE)";

/// Where the control plane is: one replica or several.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// Control plane address (its HTTP API), or a comma-separated list of replicas
    /// (`http://a:15010,http://b:15010`): each request goes to the replica that answered last
    /// and fails over to the next when one cannot be reached, drops the connection, times out
    /// or answers 503.
    #[arg(
        long,
        env = "TRELLIS_CONTROL",
        default_value = "http://127.0.0.1:15010"
    )]
    pub control: String,
}

#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
    /// A file, a directory of *.yaml/*.yml/*.json files, or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
    /// Kind (`services`, `route`, `dp`, ...).
    pub kind: String,
    pub name: Option<String>,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
    pub kind: String,
    pub name: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

/// `trellis check`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub auth: TokenArgs,
}

/// How long one attempt at one replica may take, the whole answer included.
/// Expands `-f` arguments into (name, text) sources.
fn sources(files: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            out.push(("stdin".into(), text));
            continue;
        }
        let path = PathBuf::from(f);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .with_context(|| format!("cannot read directory {f}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_config(p))
                .collect();
            entries.sort();
            for p in entries {
                out.push(read(&p)?);
            }
        } else {
            out.push(read(&path)?);
        }
    }
    Ok(out)
}

fn is_config(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn read(p: &Path) -> anyhow::Result<(String, String)> {
    let name = p.display().to_string();
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {name}"))?;
    Ok((name, text))
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints a notice about valid config (standard error, so standard output stays one line per
/// resource).
fn print_notice(notice: &str) {
    eprintln!("notice: {notice}");
}

/// `trellis validate FILE...`: parses and validates each file as the control plane would, and
/// prints `FILE: ok (N resources)` and its notices, or every problem.
pub fn validate(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut failed = false;
    for f in files {
        let name = f.display().to_string();
        let text =
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?;
        match trellis_api::parse_documents(&name, &text) {
            Ok(set) => {
                println!("{name}: ok ({} resources)", set.resources.len());
                for n in set.notices() {
                    print_notice(&n.to_string());
                }
            }
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        anyhow::bail!("invalid config");
    }
    Ok(())
}

/// `trellis apply`: each source is one `POST /api/v1/apply` under its own apply id, so a
/// request cut off after it was sent is sent again (same id, same body) until a replica says
/// what was committed.
pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    // Check every source locally first: nothing is sent unless all of it is valid.
    let sources = sources(&args.files)?;
    for (name, text) in &sources {
        trellis_api::parse_documents(name, text)?;
    }
    for (k, (name, text)) in sources.into_iter().enumerate() {
        let path = format!("/api/v1/apply?file={}", encode(&name));
        let reply = api
            .apply_once(&path, text, &new_apply_id())
            .await
            .map_err(|e| apply_error(&e, &name, k > 0))?;
        print_applied(&reply.value);
    }
    Ok(())
}

/// What a failed apply of `file` means for the mesh. A refusal or a failure to reach any
/// replica wrote nothing (the control plane's apply is all-or-nothing), unless an attempt was
/// cut off after it was sent: then whether it was committed is unknown.
fn apply_error(e: &CallError, file: &str, earlier_committed: bool) -> anyhow::Error {
    let earlier = if earlier_committed {
        "\nthe files before it were committed, as printed above"
    } else {
        ""
    };
    if let Some(cut) = e.cut() {
        let last = match e {
            CallError::Refused { .. } => format!("the last answer: {e}"),
            _ => e.to_string(),
        };
        return anyhow::anyhow!(
            "whether {file} was applied is unknown: an attempt was cut off after it was sent ({cut}) and no replica has said since what it committed; check with `trellis get` before applying again\n{last}{earlier}"
        );
    }
    match e {
        CallError::Invalid(_) => anyhow::anyhow!("{e}"),
        _ if earlier_committed => {
            anyhow::anyhow!("nothing from {file} was applied: {e}{earlier}")
        }
        _ => anyhow::anyhow!("nothing was applied: {e}"),
    }
}

/// Prints an apply's answer: one line per resource, its notices, and the revision it was
/// committed at (when the control plane says).
fn print_applied(answer: &Value) {
    let results = answer["results"].as_array().map_or(&[][..], Vec::as_slice);
    for r in results {
        println!(
            "{} {}",
            r["key"].as_str().unwrap_or_default(),
            r["action"].as_str().unwrap_or_default()
        );
    }
    for n in answer["notices"].as_array().into_iter().flatten() {
        print_notice(n.as_str().unwrap_or_default());
    }
    let revision = match &answer["revision"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return,
    };
    let unchanged = results.iter().all(|r| r["action"] == "unchanged");
    let outcome = if unchanged {
        format!("nothing changed (revision {revision})")
    } else {
        format!("committed at revision {revision}")
    };
    let confirmed = if answer["replayed"] == true {
        " (confirmed after the connection dropped)"
    } else {
        ""
    };
    println!("{outcome}{confirmed}");
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    let value = match &args.name {
        Some(name) => {
            let path = format!(
                "/api/v1/resources/{}/{}/{}",
                encode(&args.kind),
                encode(&args.namespace),
                encode(name)
            );
            api.call(http::Method::GET, &path, None).await?
        }
        None => {
            let path = format!(
                "/api/v1/resources?kind={}&namespace={}",
                encode(&args.kind),
                encode(&args.namespace)
            );
            api.call(http::Method::GET, &path, None).await?["items"].clone()
        }
    };
    print_value(&value, args.output)
}

pub fn print_value(value: &Value, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => match value {
            Value::Array(items) => {
                for item in items {
                    print!("---\n{}", serde_yaml_ng::to_string(item)?);
                }
            }
            v => print!("{}", serde_yaml_ng::to_string(v)?),
        },
        Output::Table => {
            let items = match value {
                Value::Array(items) => items.clone(),
                v => vec![v.clone()],
            };
            println!(
                "{:<22} {:<12} {:<32} {:>8}",
                "KIND", "NAMESPACE", "NAME", "VERSION"
            );
            for i in items {
                let m = &i["metadata"];
                let line = format!(
                    "{:<22} {:<12} {:<32} {:>8}",
                    i["kind"].as_str().unwrap_or_default(),
                    m["namespace"].as_str().unwrap_or_default(),
                    m["name"].as_str().unwrap_or_default(),
                    m["resourceVersion"].as_str().unwrap_or_default()
                );
                // A service's virtual IP is what one looks it up for.
                match i["spec"]["address"].as_str() {
                    Some(vip) if i["kind"] == "ServiceAddress" => println!("{line}  {vip}"),
                    _ => println!("{line}"),
                }
            }
        }
    }
    Ok(())
}

pub async fn describe(args: GetArgs) -> anyhow::Result<()> {
    let Some(name) = args.name.clone() else {
        bail!("describe needs a name: trellis describe KIND NAME");
    };
    let api = Api::connect(&args.control, &args.auth)?;
    let path = format!(
        "/api/v1/resources/{}/{}/{}",
        encode(&args.kind),
        encode(&args.namespace),
        encode(&name)
    );
    let value = api.call(http::Method::GET, &path, None).await?;
    print!("{}", serde_yaml_ng::to_string(&value)?);
    let proxies = api.call(http::Method::GET, "/api/v1/proxies", None).await?;
    let kind = value["kind"].as_str().unwrap_or_default();
    if kind == "Service" {
        let holders: Vec<String> = proxies["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["service"].as_str() == Some(name.as_str()))
            .map(|p| p["id"].as_str().unwrap_or_default().to_string())
            .collect();
        println!(
            "# proxies of this service: {}",
            if holders.is_empty() {
                "none connected".into()
            } else {
                holders.join(", ")
            }
        );
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    let path = format!(
        "/api/v1/resources/{}/{}/{}",
        encode(&args.kind),
        encode(&args.namespace),
        encode(&args.name)
    );
    let v = api.call(http::Method::DELETE, &path, None).await?;
    println!("{} deleted", v["deleted"].as_str().unwrap_or_default());
    Ok(())
}
