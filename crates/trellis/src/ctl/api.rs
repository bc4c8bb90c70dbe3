//! The client of the control plane's API over its replicas: failover, deadlines, apply ids, and
//! errors that say which replica failed and whether a write may have taken effect.
use super::{ControlArgs, TokenArgs, TOKEN_HINT};
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long one attempt at one replica may take, the whole answer included (an apply gets more:
/// [`apply_timeout`]).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Documents an apply's attempt is given one more second for, beyond [`ATTEMPT_TIMEOUT`].
const APPLY_DOCUMENTS_PER_SECOND: usize = 250;

/// How long one attempt at an apply of `documents` may take: [`ATTEMPT_TIMEOUT`] and a second
/// per [`APPLY_DOCUMENTS_PER_SECOND`] documents, so a big apply that is being committed is not
/// given up on at a fixed deadline (50 000 documents: 230 s).
pub fn apply_timeout(documents: usize) -> Duration {
    ATTEMPT_TIMEOUT + Duration::from_secs((documents / APPLY_DOCUMENTS_PER_SECOND) as u64)
}

/// How long connecting to a replica may take. Within the attempt's 30 s, so a replica that
/// accepts nothing (a dead host) is passed over sooner, and a request that never connected
/// surely never arrived.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause between two passes over the replica list.
const PASS_PAUSE: Duration = Duration::from_millis(300);

/// Passes over the replica list a CLI verb makes before giving up.
const VERB_PASSES: usize = 2;

/// The header that makes `POST /api/v1/apply` idempotent: a control plane that already
/// committed an apply with this id answers with that commit's result (`"replayed": true`)
/// instead of writing again.
pub const APPLY_ID_HEADER: &str = "trellis-apply-id";

/// A fresh apply id: 128 random bits as 32 lowercase hex digits.
pub fn new_apply_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The replica URLs of a `--control` value (trailing `/` removed). An empty item or one that is
/// not an `http://` URL is an error that names it.
pub fn parse_replicas(list: &str) -> anyhow::Result<Vec<String>> {
    if list.trim().is_empty() {
        bail!("--control is empty: give the control plane's URL, or a comma-separated list of its replicas (http://10.0.0.1:15010,http://10.0.0.2:15010)");
    }
    let items: Vec<&str> = list.split(',').collect();
    let many = items.len() > 1;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let what = if many {
                format!("--control item {} ({:?} in {list:?})", i + 1, item.trim())
            } else {
                format!("--control {:?}", item.trim())
            };
            parse_replica(item.trim()).with_context(|| what)
        })
        .collect()
}

/// One replica's URL: `http://host[:port][/prefix]`.
fn parse_replica(item: &str) -> anyhow::Result<String> {
    if item.is_empty() {
        bail!("the item is empty (two commas in a row, or one at an end?)");
    }
    let uri: http::Uri = item
        .parse()
        .map_err(|e| anyhow::anyhow!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("the CLI speaks plain http:// to the control plane, not {other}://"),
        None => bail!("not an http:// URL (did you mean http://{item}?)"),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("the URL has no host");
    }
    if uri.query().is_some() {
        bail!("the URL must not have a query (?...)");
    }
    Ok(item.trim_end_matches('/').to_string())
}

/// One API request, sent as is to each replica tried.
struct Call<'a> {
    method: http::Method,
    path: &'a str,
    body: Bytes,
    /// The apply id (`Trellis-Apply-Id`), for `POST /api/v1/apply`.
    apply_id: Option<&'a str>,
    /// How long one attempt at one replica may take.
    timeout: Duration,
}

impl Call<'_> {
    /// May the request be sent again after it may have arrived? Reads, deletes and replaces
    /// leave the same state when repeated; an apply with an id is answered from its first commit.
    fn resendable(&self) -> bool {
        self.apply_id.is_some()
            || matches!(
                self.method,
                http::Method::GET | http::Method::HEAD | http::Method::PUT | http::Method::DELETE
            )
    }

    /// Does the request change anything (so a cut-off attempt may have taken effect)?
    fn writes(&self) -> bool {
        !matches!(self.method, http::Method::GET | http::Method::HEAD)
    }
}

/// Why an attempt at one replica gave no answer to act on.
struct Failure {
    reason: String,
    /// The request may have reached the control plane (and taken effect): the connection broke
    /// or the time ran out after it was sent.
    maybe_sent: bool,
}

impl Failure {
    fn unsent(reason: String) -> Self {
        Self {
            reason,
            maybe_sent: false,
        }
    }

    fn maybe_sent(reason: String) -> Self {
        Self {
            reason,
            maybe_sent: true,
        }
    }
}

/// The answer of a successful call.
#[derive(Debug)]
pub struct Reply {
    /// The JSON body (a string when the body is not JSON).
    pub value: Value,
    /// The replica that answered.
    pub replica: String,
    /// The attempts that failed before it, in order: replica and why.
    pub skipped: Vec<(String, String)>,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// A final answer that is not 2xx (4xx, or 5xx other than 503): never failed over.
    Refused {
        /// The answer's status.
        status: http::StatusCode,
        /// The control plane's words, its details, and a hint for 401.
        message: String,
        /// An earlier attempt that was cut off after it was sent (`replica: reason`).
        cut: Option<String>,
    },
    /// No replica answered on any pass.
    Unreachable {
        /// One line per replica: `replica: why` (the last attempt's reason).
        failures: Vec<String>,
        /// An attempt that was cut off after it was sent (`replica: reason`).
        cut: Option<String>,
    },
    /// The connection broke after a request that is not safe to repeat was sent.
    Cut { replica: String, reason: String },
    /// The `--control` list or the request itself is unusable.
    Invalid(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { message, .. } => f.write_str(message),
            CallError::Unreachable { failures, .. } => {
                f.write_str("no control plane replica answered:")?;
                for line in failures {
                    write!(f, "\n  {line}")?;
                }
                Ok(())
            }
            CallError::Cut { replica, reason } => write!(
                f,
                "the connection to the control plane at {replica} broke after the request was sent ({reason}): it may or may not have taken effect, and it is not safe to send again; check before retrying"
            ),
            CallError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// The attempt that was cut off after it was sent (`replica: reason`), if any.
    pub fn cut(&self) -> Option<String> {
        match self {
            CallError::Refused { cut, .. } | CallError::Unreachable { cut, .. } => cut.clone(),
            CallError::Cut { replica, reason } => Some(format!("{replica}: {reason}")),
            CallError::Invalid(_) => None,
        }
    }

    /// The message with a note on an earlier attempt that may have taken effect.
    fn explained(&self) -> String {
        match self.cut() {
            Some(cut) if !matches!(self, CallError::Cut { .. }) => format!(
                "{self}\nnote: an earlier attempt was cut off after it was sent ({cut}); it may have taken effect"
            ),
            _ => self.to_string(),
        }
    }
}

/// The failed attempts of one call.
struct Attempts {
    /// Per replica (list order), the last attempt's reason.
    last: Vec<Option<String>>,
    /// Every failed attempt in order: replica and reason.
    skipped: Vec<(String, String)>,
    /// The first attempt of a write cut off after it was sent.
    cut: Option<String>,
}

impl Attempts {
    fn new(replicas: usize) -> Self {
        Self {
            last: vec![None; replicas],
            skipped: Vec::new(),
            cut: None,
        }
    }

    fn record(&mut self, index: usize, replica: &str, failure: &Failure, writes: bool) {
        if failure.maybe_sent && writes && self.cut.is_none() {
            self.cut = Some(format!("{replica}: {}", failure.reason));
        }
        if let Some(slot) = self.last.get_mut(index) {
            *slot = Some(failure.reason.clone());
        }
        self.skipped
            .push((replica.to_string(), failure.reason.clone()));
    }

    fn unreachable(self, replicas: &[String]) -> CallError {
        let failures = replicas
            .iter()
            .zip(self.last)
            .filter_map(|(r, why)| why.map(|why| format!("{r}: {why}")))
            .collect();
        CallError::Unreachable {
            failures,
            cut: self.cut,
        }
    }
}

/// The error chain of `e` below its own summary (hyper's "client error" says nothing), or the
/// summary when it has no source.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    e.source()
        .map_or_else(|| e.to_string(), trellis_api::error_chain)
}

/// What a request error says about the request: a connect error means it was never sent.
fn classify(e: &hyper_util::client::legacy::Error) -> Failure {
    if e.is_connect() {
        Failure::unsent(format!("cannot connect: {}", causes(e)))
    } else {
        Failure::maybe_sent(format!(
            "the connection broke before the answer: {}",
            causes(e)
        ))
    }
}

/// The error text of an answer: its `error` field, the body if it is text, or the JSON.
fn error_text(json: &Value) -> String {
    match (json["error"].as_str(), json) {
        (Some(e), _) => e.to_string(),
        (None, Value::String(s)) => s.trim().to_string(),
        (None, v) => v.to_string(),
    }
}

/// The message of a final non-2xx answer: the API's words, its details, and a token hint.
fn refusal_message(status: http::StatusCode, json: &Value) -> String {
    let mut msg = error_text(json);
    for d in json["details"].as_array().into_iter().flatten() {
        msg.push_str("\n  ");
        msg.push_str(d.as_str().unwrap_or_default());
    }
    if status == http::StatusCode::UNAUTHORIZED {
        msg.push('\n');
        msg.push_str(TOKEN_HINT);
    }
    msg
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A client of the control plane's API over its replicas: each call starts at the replica
/// that answered last and fails over to the next on a connect error, a timeout, a connection
/// closed before the whole answer, or a 503 (a replica whose store is away); any other answer
/// is final.
pub struct Api {
    /// The replicas, or why the `--control` value is unusable (every call says so).
    replicas: Result<Vec<String>, String>,
    /// Passes over the list before a call gives up.
    passes: usize,
    /// The replica the next call starts at: the last that answered.
    next: AtomicUsize,
    client: HttpClient,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<http::HeaderValue>,
}

impl Api {
    /// A client that sends no token (see [`Api::with_token`]) and makes one pass over the
    /// replicas per call (a bad `--control` value fails every call).
    pub fn new(args: &ControlArgs) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Self {
            replicas: parse_replicas(&args.control).map_err(|e| format!("{e:#}")),
            passes: 1,
            next: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new()).build(connector),
            authorization: None,
        }
    }

    /// A client for a verb: the control plane's replicas (checked here), the token given for
    /// it, and up to two passes over the replicas per call.
    pub fn connect(control: &ControlArgs, auth: &TokenArgs) -> anyhow::Result<Self> {
        parse_replicas(&control.control)?;
        let mut api = Self::new(control).with_token(auth.resolve()?.as_deref())?;
        api.passes = VERB_PASSES;
        Ok(api)
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
        Ok(self.reply(method, path, body).await?.value)
    }

    /// Like [`Api::call`], and says which replica answered and which failed before it.
    pub async fn reply(
        &self,
        method: http::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Reply> {
        let call = Call {
            method,
            path,
            body: Bytes::from(body.unwrap_or_default()),
            apply_id: None,
            timeout: ATTEMPT_TIMEOUT,
        };
        self.exchange(&call)
            .await
            .map_err(|e| anyhow::anyhow!(e.explained()))
    }

    /// `POST path` with `Trellis-Apply-Id: apply_id`: sent again (same id, same body) after
    /// a cut-off attempt too, as the control plane answers a repeat from its first commit. Each
    /// attempt may take `timeout` ([`apply_timeout`] of the body's documents).
    pub async fn apply_once(
        &self,
        path: &str,
        body: String,
        apply_id: &str,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let call = Call {
            method: http::Method::POST,
            path,
            body: Bytes::from(body),
            apply_id: Some(apply_id),
            timeout,
        };
        self.exchange(&call).await
    }

    /// `GET path` whose answer is a stream (a tap): the first replica that answers 2xx gives
    /// its body; any other answer is an error with the API's words.
    pub async fn open_stream(&self, path: &str) -> anyhow::Result<hyper::body::Incoming> {
        let replicas = self
            .replicas
            .as_ref()
            .map_err(|e| anyhow::anyhow!(e.clone()))?;
        let call = Call {
            method: http::Method::GET,
            path,
            body: Bytes::new(),
            apply_id: None,
            timeout: ATTEMPT_TIMEOUT,
        };
        let mut failures = Vec::new();
        for replica in replicas {
            let request = self
                .request(replica, &call)
                .map_err(|e| anyhow::anyhow!(e.explained()))?;
            let sent = tokio::time::timeout(CONNECT_TIMEOUT * 2, self.client.request(request));
            match sent.await {
                Ok(Ok(rsp)) if rsp.status().is_success() => return Ok(rsp.into_body()),
                Ok(Ok(rsp)) => {
                    let status = rsp.status();
                    let bytes = rsp.into_body().collect().await.map(|b| b.to_bytes());
                    let text = bytes
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if status != http::StatusCode::SERVICE_UNAVAILABLE {
                        bail!(
                            "{replica} answered {status}: {}",
                            refusal_message(status, &json)
                        );
                    }
                    failures.push(format!("{replica}: answered 503: {}", error_text(&json)));
                }
                Ok(Err(e)) => failures.push(format!("{replica}: {}", causes(&e))),
                Err(_) => failures.push(format!("{replica}: no answer in time")),
            }
        }
        bail!("no replica could be reached:\n  {}", failures.join("\n  "))
    }

    /// Tries the replicas in order from the last that answered, `passes` times at most.
    async fn exchange(&self, call: &Call<'_>) -> Result<Reply, CallError> {
        let replicas = self
            .replicas
            .as_ref()
            .map_err(|e| CallError::Invalid(e.clone()))?;
        let n = replicas.len().max(1);
        let start = self.next.load(Ordering::Relaxed) % n;
        let mut attempts = Attempts::new(replicas.len());
        for pass in 0..self.passes {
            if pass > 0 {
                tokio::time::sleep(PASS_PAUSE).await;
            }
            for (i, replica) in replicas.iter().enumerate().cycle().skip(start).take(n) {
                let request = self.request(replica, call)?;
                match self.attempt(request, call.timeout).await {
                    Ok((status, value)) => {
                        self.next.store(i, Ordering::Relaxed);
                        return answered(status, value, replica, attempts);
                    }
                    Err(f) if f.maybe_sent && !call.resendable() => {
                        return Err(CallError::Cut {
                            replica: replica.clone(),
                            reason: f.reason,
                        });
                    }
                    Err(f) => attempts.record(i, replica, &f, call.writes()),
                }
            }
        }
        Err(attempts.unreachable(replicas))
    }

    /// The HTTP request of `call` for one replica.
    fn request(
        &self,
        replica: &str,
        call: &Call<'_>,
    ) -> Result<http::Request<Full<Bytes>>, CallError> {
        let url = format!("{replica}{}", call.path);
        let mut req = http::Request::builder()
            .method(call.method.clone())
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        if let Some(id) = call.apply_id {
            req = req.header(APPLY_ID_HEADER, id);
        }
        req.body(Full::new(call.body.clone()))
            .map_err(|e| CallError::Invalid(format!("cannot build a request for {url:?}: {e}")))
    }

    /// One attempt at one replica, bounded by `timeout`: the whole answer, or why there is none
    /// to act on (a 503 included).
    async fn attempt(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Value), Failure> {
        tokio::time::timeout(timeout, self.send(request))
            .await
            .unwrap_or_else(|_| {
                Err(Failure::maybe_sent(format!(
                    "no answer within {} s",
                    timeout.as_secs()
                )))
            })
    }

    async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Value), Failure> {
        let rsp = self
            .client
            .request(request)
            .await
            .map_err(|e| classify(&e))?;
        let status = rsp.status();
        let bytes = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                Failure::maybe_sent(format!(
                    "the connection broke while the answer was read: {}",
                    causes(&e)
                ))
            })?
            .to_bytes();
        let json: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            return Err(Failure::unsent(format!(
                "answered 503: {}",
                error_text(&json)
            )));
        }
        Ok((status, json))
    }
}

/// The outcome of a final answer from `replica`.
fn answered(
    status: http::StatusCode,
    value: Value,
    replica: &str,
    attempts: Attempts,
) -> Result<Reply, CallError> {
    if status.is_success() {
        return Ok(Reply {
            value,
            replica: replica.to_string(),
            skipped: attempts.skipped,
        });
    }
    Err(CallError::Refused {
        status,
        message: refusal_message(status, &value),
        cut: attempts.cut,
    })
}
