//! One `apply`, one transaction: every document of a manifest is written, or none is.
//!
//! The documents are read at one revision ([`Store::get_many`]), each is classified (created,
//! configured, unchanged; a stale `metadata.resourceVersion` refuses the whole apply with 409),
//! and the writes go to the store as one [`Batch`], every put at one revision, so proxies only
//! ever see whole applies. When a document the user gave no version for changed in between, the
//! batch is refused without writing and the apply is decided again from a fresh read (a few
//! times, then 409).
//!
//! **Knowing what was committed.** A client may name its apply (`Trellis-Apply-Id`, which the
//! CLI always sends). The answer is kept with the commit as its receipt, so the same request
//! sent again — after a connection dropped, to this replica or another — gets the original
//! answer with `"replayed": true` and writes nothing. The answer always carries the committed
//! `revision`.
//!
//! **Bigger than one transaction.** An apply past what one batch may hold ([`BatchLimits`]: the
//! store's cap, and the control plane's own `--max-apply-documents`) is refused before anything
//! is read, with 413 and the limits; `GET /api/v1/apply/limits` publishes them so the CLI can
//! split a big manifest into applies that each fit (see the CLI's `apply`).
use crate::api::ApiError;
use crate::store::{
    check_receipt_id, document_cost, Batch, BatchLimits, BatchPut, Committed, Expect, Receipt,
    ResourceKey, Revision, Store, StoreError,
};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use trellis_api::Resource;

/// The header naming an apply.
pub const APPLY_ID_HEADER: &str = "trellis-apply-id";

/// Fresh reads after a batch lost a race, before giving up with 409.
const ATTEMPTS: usize = 5;

/// A document to apply and the version its author expects, if any.
pub struct Document {
    pub resource: Resource,
    pub expected: Option<Revision>,
}

/// The apply id of a request, if it names one.
pub fn apply_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(APPLY_ID_HEADER) else {
        return Ok(None);
    };
    let id = value
        .to_str()
        .map_err(|_| bad(format!("{APPLY_ID_HEADER} must be visible ASCII")))?;
    check_receipt_id(id).map_err(|e| bad(format!("{APPLY_ID_HEADER}: {e}")))?;
    Ok(Some(id.to_string()))
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// Applies `documents` as one transaction and returns the answer:
/// `{"results": [{key, action, version}], "notices": [..], "revision": R, "replayed": bool}`.
pub async fn apply(
    store: &dyn Store,
    documents: Vec<Document>,
    notices: Vec<String>,
    id: Option<String>,
    limits: BatchLimits,
) -> Result<Value, ApiError> {
    refuse_duplicates(&documents)?;
    if let Some(id) = &id {
        if let Some((revision, body)) = store.receipt(id).await? {
            return replayed(revision, &body);
        }
    }
    refuse_oversized(&documents, limits)?;
    let keys: Vec<ResourceKey> = documents
        .iter()
        .map(|d| ResourceKey::of(&d.resource))
        .collect();
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let (current, read_at) = store.get_many(&keys).await?;
        let (batch, results) = decide(&documents, current, read_at, &notices, id.as_deref())?;
        match store.commit(batch).await {
            Ok(Committed::Done { revision }) => return Ok(answer(results, notices, revision)),
            Ok(Committed::Replayed { revision, body }) => return replayed(revision, &body),
            Err(e) if lost_race(&e, &documents) => last = Some(e),
            Err(e @ StoreError::Unavailable { .. }) => return Err(unsure(store, e, id).await),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .map(ApiError::from)
        .unwrap_or_else(|| ApiError::new(StatusCode::CONFLICT, "the apply kept conflicting")))
}

/// Refuses an apply that cannot be one batch, naming the limit it passes. Checked after the
/// receipt, so a repeat of a committed apply is answered even if the limits were lowered since.
fn refuse_oversized(documents: &[Document], limits: BatchLimits) -> Result<(), ApiError> {
    let split = "nothing was applied: split the manifest (`trellis apply` does so by itself; see GET /api/v1/apply/limits)";
    if let Some(max) = limits.documents.filter(|max| documents.len() > *max) {
        return Err(StoreError::TooLarge {
            detail: format!(
                "this apply has {} documents; one transaction takes at most {max}; {split}",
                documents.len()
            ),
        }
        .into());
    }
    if let Some(max) = limits.bytes {
        let cost: usize = documents.iter().map(cost_of).sum();
        if cost > max {
            return Err(StoreError::TooLarge {
                detail: format!(
                    "this apply weighs {cost} bytes as one transaction ({} documents); one transaction takes at most {max}; {split}",
                    documents.len()
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// A document's weight against [`BatchLimits::bytes`]: its JSON as stored.
fn cost_of(d: &Document) -> usize {
    let json = serde_json::to_vec(&d.resource).map_or(0, |j| j.len());
    document_cost(&ResourceKey::of(&d.resource).to_string(), json)
}

fn refuse_duplicates(documents: &[Document]) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for d in documents {
        let key = ResourceKey::of(&d.resource);
        if !seen.insert(key.clone()) {
            return Err(bad(format!(
                "{key} appears twice in this apply; nothing was applied"
            )));
        }
    }
    Ok(())
}

/// Classifies every document against what is stored, and builds the batch.
fn decide(
    documents: &[Document],
    current: Vec<Option<crate::store::Stored>>,
    read_at: Revision,
    notices: &[String],
    id: Option<&str>,
) -> Result<(Batch, Vec<Value>), ApiError> {
    let mut batch = Batch {
        read_at,
        ..Batch::default()
    };
    let mut results = Vec::with_capacity(documents.len());
    for (doc, before) in documents.iter().zip(current) {
        let key = ResourceKey::of(&doc.resource);
        let (action, version) = match (&before, doc.expected) {
            (None, Some(_)) => {
                return Err(StoreError::NotFound { key }.into());
            }
            (Some(b), Some(expected)) if b.version != expected => {
                return Err(StoreError::Conflict {
                    key,
                    expected,
                    current: b.version,
                }
                .into());
            }
            (Some(b), _) if b.resource == doc.resource => {
                batch
                    .unchanged
                    .push((key.clone(), Expect::Version(b.version)));
                ("unchanged", Some(b.version))
            }
            (Some(b), _) => {
                batch.puts.push(BatchPut {
                    resource: doc.resource.clone(),
                    expect: Expect::Version(b.version),
                });
                ("configured", None)
            }
            (None, None) => {
                batch.puts.push(BatchPut {
                    resource: doc.resource.clone(),
                    expect: Expect::Absent,
                });
                ("created", None)
            }
        };
        results.push(json!({"key": key.to_string(), "action": action, "version": version}));
    }
    if let Some(id) = id {
        // Versions of written documents are the commit's revision, filled in on reading back.
        let body = json!({"results": results, "notices": notices});
        batch.receipt = Some(Receipt {
            id: id.to_string(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        });
    }
    Ok((batch, results))
}

/// Whether a refused batch only lost a race on a document whose author named no version: then
/// a fresh read decides again.
fn lost_race(e: &StoreError, documents: &[Document]) -> bool {
    let key = match e {
        StoreError::BatchConflict { .. } => return true,
        StoreError::Conflict { key, .. }
        | StoreError::AlreadyExists { key, .. }
        | StoreError::NotFound { key } => key,
        _ => return false,
    };
    documents
        .iter()
        .any(|d| d.expected.is_none() && ResourceKey::of(&d.resource) == *key)
}

fn answer(mut results: Vec<Value>, notices: Vec<String>, revision: Revision) -> Value {
    for r in &mut results {
        if r["version"].is_null() {
            r["version"] = json!(revision);
        }
    }
    json!({"results": results, "notices": notices, "revision": revision, "replayed": false})
}

/// The answer of an earlier commit with the same apply id.
fn replayed(revision: Revision, body: &[u8]) -> Result<Value, ApiError> {
    let stored: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the receipt of this apply id is unreadable ({e}); the apply was committed at revision {revision}"),
        )
    })?;
    let results = stored["results"].as_array().cloned().unwrap_or_default();
    let notices: Vec<String> = stored["notices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    let mut v = answer(results, notices, revision);
    v["replayed"] = json!(true);
    Ok(v)
}

/// The store stopped answering during the commit, which may or may not have landed: look for
/// the receipt once, and otherwise say what the client can do.
async fn unsure(store: &dyn Store, e: StoreError, id: Option<String>) -> ApiError {
    let hint = match id {
        Some(id) => match store.receipt(&id).await {
            Ok(Some((revision, _))) => {
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; the apply was committed at revision {revision}: send it again with the same {APPLY_ID_HEADER} to read its answer"),
                )
            }
            // No receipt yet does not prove it never lands (etcd may still apply it).
            _ => format!(
                "it may or may not have been committed: send it again with the same {APPLY_ID_HEADER} ({id}) to find out; it is never applied twice"
            ),
        },
        None => "it may or may not have been committed: read before retrying".into(),
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; {hint}"))
}
