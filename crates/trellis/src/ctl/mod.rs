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
//!
//! **Big applies.** A source bigger than the control plane commits at once (its published
//! limits: etcd takes 4032 documents and about 1.3 MB per transaction; any control plane, the
//! 50 000 documents and 16 MiB of one request) is sent as several applies, *chunks*
//! (`split.rs`): what others refer to first (Services, then Workloads, DestinationPolicies,
//! Routes, policies), each chunk under an apply id derived from the source's, each waited for
//! as long as its size needs, and each followed by a progress line
//! (`applied 4032/50000 from FILE: documents 1-4032 committed at revision R`). What "atomic"
//! means then:
//!
//! * each chunk is all-or-nothing, committed at one revision, and proxies see whole chunks;
//!   the source as a whole is not one transaction;
//! * a failure names the chunk (its documents) and says what was committed before it (the
//!   chunks printed above) and that the rest was not sent;
//! * re-running the same apply is safe: what was committed comes back `unchanged`, the rest
//!   is written.
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

mod api;
mod dashboard;
mod live;
mod mesh;
mod split;

pub use api::*;
pub use dashboard::{dashboard, DashboardArgs};
pub use live::{stat, tap, top, StatArgs, TapArgs, TopArgs};
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

/// What `apply` parses locally: the control plane's limits per request, eight times over, as a
/// source past those is split into several requests.
fn apply_parse_limits() -> trellis_api::Limits {
    let per_request = trellis_api::Limits::default();
    trellis_api::Limits {
        max_source_bytes: per_request.max_source_bytes * 8,
        max_documents: per_request.max_documents * 8,
        max_source_nodes: per_request.max_source_nodes * 8,
        ..per_request
    }
}

/// `trellis apply`: each source is one `POST /api/v1/apply` under its own apply id, so a
/// request cut off after it was sent is sent again (same id, same body) until a replica says
/// what was committed. A source past what the control plane commits at once is split into
/// chunks (see the module docs).
pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    // Check every source locally first: nothing is sent unless all of it is valid.
    let sources = sources(&args.files)?;
    let mut sets = Vec::with_capacity(sources.len());
    for (name, text) in &sources {
        sets.push(trellis_api::parse_documents_with_limits(
            name,
            text,
            &apply_parse_limits(),
        )?);
    }
    // Asked once: when a source may not fit one apply, or the control plane said it does not.
    let mut limits = None;
    for (k, ((name, text), set)) in sources.into_iter().zip(sets).enumerate() {
        let earlier = k > 0;
        let documents = set.resources.len();
        if split::may_need_split(documents, text.len()) {
            if let Some(l) = known_limits(&api, &mut limits).await {
                if apply_split(&api, &name, &set, l, earlier).await? {
                    continue;
                }
            }
        }
        let path = format!("/api/v1/apply?file={}", encode(&name));
        let e = match api
            .apply_once(&path, text, &new_apply_id(), apply_timeout(documents))
            .await
        {
            Ok(reply) => {
                print_applied(&reply.value);
                continue;
            }
            Err(e) => e,
        };
        // Too large for one transaction (413, surely not committed): split it after all.
        let too_large = matches!(&e, CallError::Refused { status, .. } if *status == http::StatusCode::PAYLOAD_TOO_LARGE);
        if too_large && e.cut().is_none() {
            if let Some(l) = known_limits(&api, &mut limits).await {
                if apply_split(&api, &name, &set, l, earlier).await? {
                    continue;
                }
            }
        }
        return Err(apply_error(&e, &name, earlier));
    }
    Ok(())
}

/// The control plane's limits, asked once per run (`cache`).
async fn known_limits(
    api: &Api,
    cache: &mut Option<Option<split::ApplyLimits>>,
) -> Option<split::ApplyLimits> {
    if cache.is_none() {
        *cache = Some(apply_limits(api).await);
    }
    cache.flatten()
}

/// Applies `set` (source `name`) in chunks if it does not fit one apply within `limits`, then
/// prints its notices; false (nothing sent) if it fits.
async fn apply_split(
    api: &Api,
    name: &str,
    set: &trellis_api::ResourceSet,
    limits: split::ApplyLimits,
    earlier: bool,
) -> anyhow::Result<bool> {
    let resources = split::ordered(set.resources.clone());
    let plan = split::chunks(&resources, &limits);
    if plan.len() < 2 {
        return Ok(false);
    }
    apply_in_chunks(api, name, &resources, plan, limits, earlier).await?;
    for n in set.notices() {
        print_notice(&n.to_string());
    }
    Ok(true)
}

/// What one apply may hold, as the control plane says; `None` from a control plane that does
/// not say (it takes the whole source, or refuses it with its reason).
async fn apply_limits(api: &Api) -> Option<split::ApplyLimits> {
    let v = api
        .call(http::Method::GET, "/api/v1/apply/limits", None)
        .await
        .ok()?;
    split::ApplyLimits::from_answer(&v)
}

/// Applies `resources` ([`split::ordered`], from source `name`) as the consecutive chunks of
/// `plan` (made within `limits`), printing each chunk's results and a progress line. A chunk
/// refused as too large (413: the store's transaction turned out smaller than published) is
/// split in half, and the rest planned again.
async fn apply_in_chunks(
    api: &Api,
    name: &str,
    resources: &[trellis_api::Resource],
    plan: Vec<split::Chunk>,
    mut limits: split::ApplyLimits,
    earlier_files: bool,
) -> anyhow::Result<()> {
    let total = resources.len();
    let source_id = new_apply_id();
    let (mut done, mut sent) = (0usize, 0usize);
    let mut plan = std::collections::VecDeque::from(plan);
    while let Some(chunk) = plan.pop_front() {
        sent += 1;
        // 32 hex digits, '-', a sequence number: within the 64 characters an apply id may have.
        let id = format!("{source_id}-{sent}");
        let (first, last) = (done + 1, done + chunk.documents);
        let part = format!("{name} (documents {first}-{last} of {total})");
        let path = format!("/api/v1/apply?file={}", encode(&part));
        let timeout = apply_timeout(chunk.documents);
        match api.apply_once(&path, chunk.body, &id, timeout).await {
            Ok(reply) => {
                print_results(&reply.value);
                done = last;
                println!(
                    "applied {done}/{total} from {name}: documents {first}-{last} {}",
                    outcome(&reply.value)
                );
            }
            Err(CallError::Refused { status, .. })
                if status == http::StatusCode::PAYLOAD_TOO_LARGE && chunk.documents > 1 =>
            {
                limits.documents = chunk.documents / 2;
                plan = split::chunks(&resources[done..], &limits).into();
                eprintln!(
                    "note: the control plane refused documents {first}-{last} of {name} as too large for one transaction; sending them in chunks of {}",
                    limits.documents
                );
            }
            Err(e) => return Err(chunk_error(&e, name, (first, last, total), earlier_files)),
        }
    }
    Ok(())
}

/// What a failed chunk (documents `first..=last` of `total`) of `file` means for the mesh.
fn chunk_error(
    e: &CallError,
    file: &str,
    (first, last, total): (usize, usize, usize),
    earlier_files: bool,
) -> anyhow::Error {
    let before = if first > 1 {
        format!(
            "documents 1-{} of {file} were committed before it, as printed above",
            first - 1
        )
    } else {
        format!("nothing of {file} was committed before it")
    };
    let files = if earlier_files {
        "; the files before it were committed, as printed above"
    } else {
        ""
    };
    let after = if last < total {
        format!("; documents {}-{total} were not sent", last + 1)
    } else {
        String::new()
    };
    let rerun = "applying the same file again is safe: what was committed comes back unchanged";
    let fate = match (e.cut(), e) {
        (Some(cut), _) => format!("whether it was committed is unknown: an attempt was cut off after it was sent ({cut}) and no replica has said since what it committed"),
        (None, CallError::Invalid(_)) => "it was not sent".to_string(),
        (None, _) => "it was not applied".to_string(),
    };
    anyhow::anyhow!(
        "documents {first}-{last} of {file} (one transaction): {fate}
{e}
{before}{after}{files}
{rerun}"
    )
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
    print_results(answer);
    for n in answer["notices"].as_array().into_iter().flatten() {
        print_notice(n.as_str().unwrap_or_default());
    }
    if !answer["revision"].is_null() {
        println!("{}", outcome(answer));
    }
}

/// One line per resource of an apply's answer: its key and what was done.
fn print_results(answer: &Value) {
    for r in answer["results"].as_array().into_iter().flatten() {
        println!(
            "{} {}",
            r["key"].as_str().unwrap_or_default(),
            r["action"].as_str().unwrap_or_default()
        );
    }
}

/// What an apply's answer says was committed: `committed at revision R` or `nothing changed
/// (revision R)`, and whether it was confirmed after a dropped connection.
fn outcome(answer: &Value) -> String {
    let revision = match &answer["revision"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => "unknown".to_string(),
    };
    let results = answer["results"].as_array().map_or(&[][..], Vec::as_slice);
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
    format!("{outcome}{confirmed}")
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
