//! The Kubernetes-style verbs against a control plane: `apply`, `get`, `describe`, `delete`,
//! `proxy-config`, `check`, and `validate`, which needs none. They speak the control plane's
//! HTTP JSON API and print what it says, errors included (with file, document and field path
//! for invalid config), and the notices of what was applied or validated (`notice: ...` on
//! standard error, one per line: a policy that denies by default only because it has ALLOW
//! rules, for instance).
//!
//! Every verb presents the control plane's join token (`--token`, `--token-file`, or
//! `TRELLIS_TOKEN` / `TRELLIS_TOKEN_FILE`): the control plane refuses anything else.
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

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

/// Where the control plane is.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// Control plane address (its HTTP API).
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

pub struct Api {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<http::HeaderValue>,
}

impl Api {
    /// A client that sends no token (see [`Api::with_token`]).
    pub fn new(args: &ControlArgs) -> Self {
        Self {
            base: args.control.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            authorization: None,
        }
    }

    /// A client for a verb: the control plane's address and the token given for it.
    pub fn connect(control: &ControlArgs, auth: &TokenArgs) -> anyhow::Result<Self> {
        Self::new(control).with_token(auth.resolve()?.as_deref())
    }

    /// Sends `token` as `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<&str>) -> anyhow::Result<Self> {
        self.authorization = match token {
            None => None,
            Some(t) => {
                let mut v =
                    http::HeaderValue::from_str(&format!("Bearer {}", t.trim())).map_err(|_| {
                        anyhow::anyhow!(
                            "the token cannot be sent in an HTTP header: it must be visible ASCII"
                        )
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(self)
    }

    /// Sends a request; returns the JSON body of a 2xx answer, or an error with the API's words.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("bad control plane address {url:?}"))?;
        let rsp =
            tokio::time::timeout(std::time::Duration::from_secs(30), self.client.request(req))
                .await
                .with_context(|| {
                    format!(
                        "no answer from the control plane at {} within 30 s",
                        self.base
                    )
                })?
                .with_context(|| format!("cannot reach the control plane at {}", self.base))?;
        let status = rsp.status();
        let bytes = rsp.into_body().collect().await?.to_bytes();
        let json: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok(json);
        }
        let mut msg = json["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| json.to_string());
        for d in json["details"].as_array().into_iter().flatten() {
            msg.push_str("\n  ");
            msg.push_str(d.as_str().unwrap_or_default());
        }
        if status == http::StatusCode::UNAUTHORIZED {
            msg.push('\n');
            msg.push_str(TOKEN_HINT);
        }
        bail!("{msg}")
    }
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

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    // Check every source locally first: nothing is sent unless all of it is valid.
    let sources = sources(&args.files)?;
    for (name, text) in &sources {
        trellis_api::parse_documents(name, text)?;
    }
    for (name, text) in sources {
        let path = format!("/api/v1/apply?file={}", encode(&name));
        let result = api.call(http::Method::POST, &path, Some(text)).await?;
        for r in result["results"].as_array().into_iter().flatten() {
            println!(
                "{} {}",
                r["key"].as_str().unwrap_or_default(),
                r["action"].as_str().unwrap_or_default()
            );
        }
        for n in result["notices"].as_array().into_iter().flatten() {
            print_notice(n.as_str().unwrap_or_default());
        }
    }
    Ok(())
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
                println!(
                    "{:<22} {:<12} {:<32} {:>8}",
                    i["kind"].as_str().unwrap_or_default(),
                    m["namespace"].as_str().unwrap_or_default(),
                    m["name"].as_str().unwrap_or_default(),
                    m["resourceVersion"].as_str().unwrap_or_default()
                );
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

/// Is the mesh healthy: the control plane answers, every registered workload's proxy is
/// connected, and every connected proxy holds (has acknowledged) what it was sent.
pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let api = Api::connect(&args.control, &args.auth)?;
    api.call(http::Method::GET, "/api/v1/health", None).await?;
    println!("ok   control plane at {} answers", args.control.control);
    let proxies = api.call(http::Method::GET, "/api/v1/proxies", None).await?;
    let proxies: Vec<Value> = proxies["proxies"].as_array().cloned().unwrap_or_default();
    let workloads = api
        .call(http::Method::GET, "/api/v1/resources?kind=Workload", None)
        .await?;
    let mut problems = 0;
    for w in workloads["items"].as_array().into_iter().flatten() {
        let name = w["metadata"]["name"].as_str().unwrap_or_default();
        if proxies.iter().any(|p| p["id"] == name) {
            println!("ok   workload {name} has a connected proxy");
        } else {
            println!("FAIL workload {name} is registered but no proxy named {name} is connected to this replica");
            problems += 1;
        }
    }
    for p in &proxies {
        let id = p["id"].as_str().unwrap_or_default();
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
            println!("ok   proxy {id} is in sync");
        } else {
            problems += 1;
            println!(
                "FAIL proxy {id} is not in sync{}",
                if nacks.is_empty() {
                    String::new()
                } else {
                    format!(": {}", nacks.join("; "))
                }
            );
        }
    }
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    println!("the mesh is healthy ({} proxies connected)", proxies.len());
    Ok(())
}
