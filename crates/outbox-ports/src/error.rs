use outbox_domain::{InvalidMessage, MessageId, TransitionError};

/// The result type of every storage port.
pub type StoreResult<T, E = StoreError> = std::result::Result<T, E>;

/// Why a storage port call failed. Shared by [`MessageStore`](crate::MessageStore),
/// [`Inbox`](crate::Inbox), [`CompensationStore`](crate::CompensationStore) and
/// [`CursorStore`](crate::CursorStore); adapters translate their backend's errors into
/// it, so no driver error type leaks through a port. A failed call wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A message with this id already exists; the whole enqueue was rejected.
    /// Caller bug, or a retried call whose first attempt committed.
    #[error("message {0} already exists")]
    DuplicateMessage(MessageId),
    /// The named record does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// What kind of record.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The record changed since it was read (optimistic version mismatch). Reload and
    /// decide again; nothing was overwritten.
    #[error("{what} {id} was changed concurrently (expected version {expected})")]
    Conflict {
        /// What kind of record.
        what: &'static str,
        /// Its id.
        id: String,
        /// The version the caller expected.
        expected: u64,
    },
    /// The requested change is not allowed in the message's current state.
    #[error("message {id}: {source}")]
    Transition {
        /// The message.
        id: MessageId,
        /// Why the state machine refused.
        #[source]
        source: TransitionError,
    },
    /// A message broke a validation rule; nothing of the call was written (and the
    /// caller's transaction, if one was passed, is still usable). Caller bug.
    #[error("message {id} rejected: {source}")]
    InvalidMessage {
        /// The message.
        id: MessageId,
        /// The rule it broke.
        #[source]
        source: InvalidMessage,
    },
    /// Bad input, such as a zero batch size. Caller bug.
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// A cursor position this log cannot continue from: text that is not one of its
    /// positions, or a position ahead of the log itself (on PostgreSQL, a database
    /// restored from a dump, whose transaction ids start lower again). Nothing was read;
    /// move the cursor (`outbox cursor reset`).
    #[error("invalid cursor position: {0}")]
    InvalidPosition(String),
    /// The database could not be reached or timed out. Retry with backoff.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure. Retrying is unlikely to help.
    #[error("storage failure: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
