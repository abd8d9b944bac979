use crate::{StoreResult, StoredMessage};
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

/// One message of the outbox log, with the position a cursor records once it has
/// read it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LogEntry {
    /// Where this entry sits in the log; save it to continue after the entry.
    pub position: CursorPosition,
    /// The message, in whatever delivery state it has now (the log holds every status:
    /// pending, in flight, published, dead and recorded audit entries).
    pub message: StoredMessage,
}

impl LogEntry {
    /// Bundles the parts (for adapters).
    pub fn new(position: CursorPosition, message: StoredMessage) -> Self {
        Self { position, message }
    }
}

/// What one [`OutboxLog::read`] returned.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct LogBatch {
    /// The entries after the requested position, in log order.
    pub entries: Vec<LogEntry>,
    /// The read returned fewer entries than asked for, yet committed entries exist
    /// after the last one: they are held back because a transaction that is still open
    /// might commit an entry before them (on PostgreSQL: an open transaction older than
    /// they are), or they committed just now. Read again soon. A reader that sees this
    /// for long is held back by a long transaction (the runtime's `LogSubscriber`
    /// warns).
    pub held_back: bool,
}

impl LogBatch {
    /// Bundles the parts (for adapters).
    pub fn new(entries: Vec<LogEntry>, held_back: bool) -> Self {
        Self { entries, held_back }
    }
}

/// How far a position is behind the end of the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogLag {
    /// Entries after the position (counting those not yet readable), at most
    /// [`LogLag::COUNT_CAP`]: counting is a scan, so it stops there.
    pub entries: u64,
    /// When the oldest of them was written (`None`: nothing to read).
    pub oldest_at: Option<DateTime<Utc>>,
}

impl LogLag {
    /// Where [`LogLag::entries`] stops counting.
    pub const COUNT_CAP: u64 = 1_000_000;

    /// Bundles the parts (for adapters).
    pub fn new(entries: u64, oldest_at: Option<DateTime<Utc>>) -> Self {
        Self { entries, oldest_at }
    }
}

/// The outbox table read as an ordered log, for named cursors: every message
/// written, whatever its delivery state, in an order that is safe to checkpoint.
///
/// **Gap-safe:** once an entry at position `p` has been returned, no entry before `p`
/// can appear later, even when transactions commit out of order. So a subscriber that
/// saves the position of the last entry it handled, and reads after it next time,
/// never skips an entry. How each backend achieves this (and what it costs) is the
/// adapter's business: PostgreSQL orders by transaction id and holds back entries of
/// transactions that might still be followed by older ones; MySQL stamps committed
/// rows with a log sequence in commit order; SQLite commits one writer at a time.
///
/// Positions are opaque; a log only accepts its own (see [`parse_position`]).
/// Entries are read while the table keeps them: published messages removed by
/// retention are gone from the log too, so retention must outlast the slowest cursor.
///
/// [`parse_position`]: OutboxLog::parse_position
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait OutboxLog: Send + Sync {
    /// The position before the first entry: a cursor there reads the whole log.
    fn start(&self) -> CursorPosition;

    /// Up to `limit` entries after `after`, in log order. Fails with
    /// [`StoreError::InvalidPosition`](crate::StoreError::InvalidPosition) for a position
    /// this log cannot continue from.
    async fn read(&self, after: &CursorPosition, limit: usize) -> StoreResult<LogBatch>;

    /// The position just before the earliest unfinished (pending or in-flight) message,
    /// so that a cursor starting there reads everything the relay has not finished;
    /// the [`end`](Self::end) when nothing is unfinished.
    async fn unfinished_start(&self) -> StoreResult<CursorPosition>;

    /// The position of the last entry readable now ([`start`](Self::start) when the log
    /// is empty): a cursor there reads only what comes next.
    async fn end(&self) -> StoreResult<CursorPosition>;

    /// How far `after` is behind the end of the log.
    async fn lag(&self, after: &CursorPosition) -> StoreResult<LogLag>;

    /// Checks an operator's position text, returning it as a position of this log.
    fn parse_position(&self, text: &str) -> StoreResult<CursorPosition>;
}
