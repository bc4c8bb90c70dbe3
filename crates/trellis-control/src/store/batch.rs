//! Batches: several writes that commit as one transaction, all or none — what one `apply` of a
//! multi-document manifest is.
//!
//! A batch is optimistic, like a versioned replace: the caller reads the keys it will write
//! ([`super::Store::get_many`], at one revision), decides what each document does, and commits
//! with what it expects of every key it read ([`Expect`]). If anything it read changed in
//! between, nothing is written and the commit fails with [`super::StoreError::Conflict`] (or
//! [`super::StoreError::BatchConflict`] when the store can only tell that *something* in the
//! batch's key ranges changed); the caller reads again and retries.
//!
//! Every put of a batch gets the **same revision**, on both stores, and watchers receive a
//! batch's events together: the control plane's model never publishes half of one.
//!
//! A batch may carry a [`Receipt`]: an id chosen by the client (the CLI sends one per `apply`)
//! and the answer to give. The receipt is written in the same transaction, so after a dropped
//! connection the client can send the same apply again and learn exactly what was committed
//! ([`Committed::Replayed`]) instead of guessing. Receipts are kept for [`RECEIPT_TTL`].
//!
//! A store may cap what one batch holds ([`BatchLimits`]: etcd bounds a transaction's
//! operations and bytes). The API refuses a bigger apply before reading anything and publishes
//! the limits, so the CLI can split a big manifest into batches that fit.
use super::{ResourceKey, Revision, StoreError};
use std::time::Duration;
use trellis_api::Resource;

/// How long a receipt answers a repeated apply.
pub const RECEIPT_TTL: Duration = Duration::from_secs(3600);

/// Longest receipt id (the CLI sends 32 hex characters).
pub const MAX_RECEIPT_ID: usize = 64;

/// What one batch of a store can hold; `None`: no cap of the store's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchLimits {
    /// Documents (puts and unchanged keys alike: each is read and checked).
    pub documents: Option<usize>,
    /// The sum of [`document_cost`] over the batch's documents.
    pub bytes: Option<usize>,
}

/// What a document weighs against [`BatchLimits::bytes`]: its stored JSON, its key twice (the
/// write and the receipt's line for it) and a fixed allowance for framing. The CLI measures
/// documents the same way when it splits a manifest.
pub fn document_cost(key: &str, json_bytes: usize) -> usize {
    json_bytes + 2 * key.len() + 128
}

impl BatchLimits {
    /// The tighter of two limits, per field.
    pub fn min(self, other: BatchLimits) -> BatchLimits {
        fn tighter(a: Option<usize>, b: Option<usize>) -> Option<usize> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        BatchLimits {
            documents: tighter(self.documents, other.documents),
            bytes: tighter(self.bytes, other.bytes),
        }
    }
}

/// What a batch expects of a key it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists at exactly this version.
    Version(Revision),
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub struct BatchPut {
    pub resource: Resource,
    pub expect: Expect,
}

/// Writes that commit together, checks that must still hold, and an optional receipt.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub puts: Vec<BatchPut>,
    /// Keys read and left alone (the document was unchanged), which must still be as read: an
    /// apply that says "unchanged" must not race a concurrent write to that key.
    pub unchanged: Vec<(ResourceKey, Expect)>,
    /// The revision the expectations were read at.
    pub read_at: Revision,
    pub receipt: Option<Receipt>,
}

/// A client's id for one apply, and the answer to repeat if it comes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: String,
    pub body: Vec<u8>,
}

/// The outcome of [`super::Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Written now, at this revision (the store's revision when there was nothing to write).
    Done { revision: Revision },
    /// A batch with this receipt id was committed before, at `revision`; nothing was written now.
    Replayed { revision: Revision, body: Vec<u8> },
}

/// Checks a receipt id: visible ASCII letters, digits, `-` and `_`, at most [`MAX_RECEIPT_ID`].
pub fn check_receipt_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_RECEIPT_ID {
        return Err(format!(
            "apply id must be 1 to {MAX_RECEIPT_ID} characters, got {}",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("apply id may hold only letters, digits, '-' and '_'".into());
    }
    Ok(())
}

impl Batch {
    /// Every key the batch read, with what it expects, puts first.
    pub fn expectations(&self) -> impl Iterator<Item = (ResourceKey, Expect)> + '_ {
        self.puts
            .iter()
            .map(|p| (ResourceKey::of(&p.resource), p.expect))
            .chain(self.unchanged.iter().cloned())
    }
}

/// What an expectation says about a key's current version (`None` = absent).
pub(crate) fn holds(expect: Expect, current: Option<Revision>) -> bool {
    match (expect, current) {
        (Expect::Absent, None) => true,
        (Expect::Version(v), Some(c)) => v == c,
        _ => false,
    }
}

/// The error for an expectation that does not hold: what `key` is now (`None` = absent).
pub(crate) fn refusal(key: ResourceKey, expect: Expect, current: Option<Revision>) -> StoreError {
    match (expect, current) {
        (Expect::Absent, Some(version)) => StoreError::AlreadyExists { key, version },
        (Expect::Version(_), None) => StoreError::NotFound { key },
        (Expect::Version(expected), Some(current)) => StoreError::Conflict {
            key,
            expected,
            current,
        },
        (Expect::Absent, None) => StoreError::BatchConflict {
            detail: format!("{key} changed while the batch was being committed"),
        },
    }
}
