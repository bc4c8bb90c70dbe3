//! [`StoreError`]: what went wrong, on which key, in which store — phrased so an operator reading
//! it in a log or an API answer knows what to do next.
use super::{LeaseId, ResourceKey, Revision};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{key} not found")]
    NotFound { key: ResourceKey },

    #[error("{key} already exists (version {version}); replace it instead of creating it")]
    AlreadyExists { key: ResourceKey, version: Revision },

    #[error(
        "{key} was changed concurrently: expected version {expected}, but it is at version \
         {current}; read it again and retry"
    )]
    Conflict {
        key: ResourceKey,
        expected: Revision,
        current: Revision,
    },

    /// A batch's read went stale: a key in its ranges changed after it was read. Nothing was
    /// written; read again and retry.
    #[error("{detail}; nothing was written: read again and retry")]
    BatchConflict { detail: String },

    /// A batch that cannot be one transaction of this store.
    #[error("{detail}")]
    TooLarge { detail: String },

    #[error(
        "lease {lease} not found: it expired or was revoked; grant a new lease and register again"
    )]
    LeaseNotFound { lease: LeaseId },

    #[error(
        "cannot watch from revision {requested}: history up to revision {compacted} has been \
         compacted; list again and watch from the list's revision"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    /// The write was refused by validation; nothing was changed.
    #[error("{key} is invalid, nothing was written: {}", list(problems))]
    Invalid {
        key: String,
        /// `(field path, message)` pairs, as `trellis_api::validate::resource` reports them.
        problems: Vec<(String, String)>,
    },

    #[error("invalid resource key: {detail}")]
    InvalidKey { detail: String },

    /// The backend could not be reached or did not answer in time.
    #[error("{store} is unavailable: {detail}")]
    Unavailable { store: String, detail: String },

    /// A stored value does not decode to a valid resource.
    #[error("corrupt value at {key} in {store}: {detail}")]
    Corrupt {
        store: String,
        key: String,
        detail: String,
    },

    /// The backend failed in a way that is not about reachability (disk error, a refused request).
    #[error("{store}: {detail}")]
    Backend { store: String, detail: String },

    /// A store setting (`--store`, `--data-dir`, options) is wrong.
    #[error("invalid store setting {setting:?}: {detail}")]
    Config { setting: String, detail: String },
}

fn list(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(path, message)| {
            if path.is_empty() {
                message.clone()
            } else {
                format!("{path}: {message}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl StoreError {
    /// True for errors that may go away by themselves (retry with backoff).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
