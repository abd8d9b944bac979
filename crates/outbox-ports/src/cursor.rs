use crate::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A position in the outbox log. Opaque to callers: the store that reads the log
/// defines its encoding (a sequence number, or a transaction id and row id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CursorPosition(pub String);

/// A named subscriber's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cursor {
    /// The subscriber's name.
    pub name: String,
    /// Everything up to and including this position has been read.
    pub position: CursorPosition,
    /// Optimistic-lock version, bumped on every save.
    pub version: u64,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
}

impl Cursor {
    /// Bundles the parts (for adapters).
    pub fn new(
        name: String,
        position: CursorPosition,
        version: u64,
        updated_at: DateTime<Utc>,
    ) -> Self {
        Self {
            name,
            position,
            version,
            updated_at,
        }
    }
}

/// Durable named checkpoints over the outbox log.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CursorStore: Send + Sync {
    /// The cursor called `name`, if it exists.
    async fn load(&self, name: &str) -> StoreResult<Option<Cursor>>;

    /// Moves (or creates, with `expected_version: None`) the cursor, compare-and-set on
    /// its version: a concurrent mover gets [`StoreError::Conflict`](crate::StoreError::Conflict).
    async fn save(
        &self,
        name: &str,
        position: CursorPosition,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Cursor>;
}
