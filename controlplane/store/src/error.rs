//! The one error type every [`Store`](crate::Store) operation returns.
//!
//! Variants carry structured fields so the apiserver can map them to Kubernetes statuses
//! without parsing messages: `AlreadyExists` and `Conflict` become 409, `NotFound` 404,
//! `Compacted` 410 Expired, `FutureRevision` 504 "Too large resource version" (as
//! kube-apiserver does), everything else 500.

use crate::Revision;

/// Result alias used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in a store operation, and what the caller should do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create` found a live value under the key.
    #[error("key {key:?} already exists; read it and update it instead of creating it")]
    AlreadyExists { key: String },

    /// `update`/`delete` (or a CAS) found no live value under the key.
    #[error("key {key:?} not found; create it first")]
    NotFound { key: String },

    /// Compare-and-swap failed: the key was modified since the caller read it.
    #[error(
        "conflict on key {key:?}: expected mod revision {expected}, current is {current}; \
         re-read the key and retry the write"
    )]
    Conflict {
        key: String,
        expected: Revision,
        current: Revision,
    },

    /// The requested revision is older than the compacted revision: the history needed to
    /// answer is gone.
    #[error(
        "revision {requested} has been compacted (oldest readable revision is {compacted}); \
         list again at the current revision and watch from the list's revision"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    /// The requested revision has not happened yet.
    #[error(
        "revision {requested} is in the future (current revision is {current}); \
         use a revision this store has returned"
    )]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },

    /// A watcher did not consume its events fast enough and was cut off so that it does not
    /// hold back writers or other watchers.
    #[error(
        "watch on prefix {prefix:?} fell more than {buffer} events behind and was cancelled; \
         watch again from the last revision received (or relist if that is compacted)"
    )]
    WatcherTooSlow { prefix: String, buffer: usize },

    /// The request itself is malformed (for example a zero revision where one is required).
    #[error("invalid request: {reason}")]
    InvalidArgument { reason: String },

    /// Data read back from the backend does not have the shape this crate wrote.
    #[error(
        "store data is corrupt at {location}: {reason}; restore the store from a backup \
         (the store will not guess)"
    )]
    Corrupt { location: String, reason: String },

    /// The backend (redb file, etcd cluster) failed; the message names which one and why.
    #[error("{backend} backend failed during {operation}: {source}")]
    Backend {
        backend: &'static str,
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl StoreError {
    pub(crate) fn backend(
        backend: &'static str,
        operation: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        StoreError::Backend {
            backend,
            operation,
            source: source.into(),
        }
    }
}
