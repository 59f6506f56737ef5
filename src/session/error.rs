//! The one error type every session store returns.

use std::time::Duration;

use super::credential::InvalidFingerprint;
use super::model::InvalidSessionId;

/// Why a store operation failed.
///
/// Callers branch on [`StoreError::is_retryable`]: the closure outbox keeps retrying
/// retryable failures (the store may have applied the write or not; every write is
/// idempotent) and dead-letters the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store locator given to [`open_store`](super::open_store) cannot be used.
    #[error("invalid store url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// An argument was rejected before anything was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The cursor was not produced by this store (or by a store with another layout).
    #[error("invalid event cursor {cursor:?}: {reason}")]
    InvalidCursor { cursor: String, reason: String },
    /// The store could not be reached or answered with a transient failure
    /// (connection refused or dropped, cluster resharding, loading, read-only replica).
    /// The operation may or may not have been applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The operation did not finish within the configured time. Same ambiguity as
    /// [`StoreError::Unavailable`].
    #[error("store operation timed out after {0:?}")]
    Timeout(Duration),
    /// The store answered with an error that retrying will not fix (a script error, a disk
    /// error of the embedded database).
    #[error("store failed: {0}")]
    Failed(String),
    /// Stored data could not be decoded; it was written by something else or damaged.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        StoreError::InvalidInput(message.into())
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        StoreError::Corrupt(message.into())
    }
}

impl From<crate::class::InvalidClass> for StoreError {
    fn from(error: crate::class::InvalidClass) -> Self {
        StoreError::invalid(error.to_string())
    }
}

impl From<InvalidSessionId> for StoreError {
    fn from(err: InvalidSessionId) -> Self {
        StoreError::InvalidInput(err.to_string())
    }
}

impl From<InvalidFingerprint> for StoreError {
    fn from(err: InvalidFingerprint) -> Self {
        StoreError::InvalidInput(err.to_string())
    }
}
