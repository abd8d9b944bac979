use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::MessageId;
use outbox_ports::{
    Cursor, CursorPosition, CursorStore, Inbox, InboxOutcome, StoreError, StoreResult,
    TransactionalInbox,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// A thread-safe, in-memory [`Inbox`] and [`TransactionalInbox`]. Clones share the
/// same records.
///
/// As a [`TransactionalInbox`] its transaction is a [`MemoryTx`]: handlers stage their
/// effects in it with [`MemoryTx::push_effect`], and a commit applies the staged ids
/// and effects together (see [`effects`](Self::effects)). `fail_next_*` inject database
/// failures.
#[derive(Debug, Clone, Default)]
pub struct InMemoryInbox {
    seen: Arc<Mutex<HashSet<(String, MessageId)>>>,
    effects: Arc<Mutex<Vec<String>>>,
    faults: Arc<Mutex<InboxFaults>>,
}

#[derive(Debug, Default)]
struct InboxFaults {
    begin_failures: u32,
    lost_commit_replies: u32,
}

/// A transaction of [`InMemoryInbox`]: the ids recorded and effects staged in it.
#[derive(Debug, Default)]
pub struct MemoryTx {
    recorded: Vec<(String, MessageId)>,
    effects: Vec<String>,
}

impl MemoryTx {
    /// Stages a business effect; it becomes visible in [`InMemoryInbox::effects`] only
    /// if the transaction commits.
    pub fn push_effect(&mut self, effect: impl Into<String>) {
        self.effects.push(effect.into());
    }
}

impl InMemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many ids `consumer_group` has recorded.
    pub fn len(&self, consumer_group: &str) -> usize {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter().filter(|(g, _)| g == consumer_group).count()
    }

    /// Every committed effect, in commit order.
    pub fn effects(&self) -> Vec<String> {
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The next `n` transactions fail to begin (the database is down).
    pub fn fail_next_begins(&self, n: u32) {
        self.faults().begin_failures = n;
    }

    /// The next `n` commits succeed but report an error (the connection dropped before
    /// the reply), so the caller cannot tell whether they happened.
    pub fn lose_next_commit_replies(&self, n: u32) {
        self.faults().lost_commit_replies = n;
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, InboxFaults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn check_group(consumer_group: &str) -> StoreResult<()> {
    if consumer_group.is_empty() {
        return Err(StoreError::InvalidInput(
            "consumer group must not be empty".into(),
        ));
    }
    Ok(())
}

#[async_trait]
impl TransactionalInbox for InMemoryInbox {
    type Tx = MemoryTx;

    async fn begin(&self) -> StoreResult<MemoryTx> {
        let mut faults = self.faults();
        if faults.begin_failures > 0 {
            faults.begin_failures -= 1;
            return Err(StoreError::Unavailable("injected: database down".into()));
        }
        Ok(MemoryTx::default())
    }

    async fn record_in(
        &self,
        tx: &mut MemoryTx,
        consumer_group: &str,
        message_id: MessageId,
        _now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome> {
        check_group(consumer_group)?;
        let key = (consumer_group.to_owned(), message_id);
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(&key) || tx.recorded.contains(&key) {
            return Ok(InboxOutcome::Duplicate);
        }
        tx.recorded.push(key);
        Ok(InboxOutcome::First)
    }

    async fn commit(&self, tx: MemoryTx) -> StoreResult<()> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // A concurrent transaction committed the same id first: like a unique-key
        // violation, the whole transaction fails.
        if let Some((group, id)) = tx.recorded.iter().find(|k| seen.contains(k)) {
            return Err(StoreError::Conflict {
                what: "inbox record",
                id: format!("{group}/{id}"),
                expected: 0,
            });
        }
        seen.extend(tx.recorded);
        self.effects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(tx.effects);
        let mut faults = self.faults();
        if faults.lost_commit_replies > 0 {
            faults.lost_commit_replies -= 1;
            return Err(StoreError::Unavailable(
                "injected: connection lost before the commit reply".into(),
            ));
        }
        Ok(())
    }

    async fn rollback(&self, _tx: MemoryTx) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl Inbox for InMemoryInbox {
    async fn record(
        &self,
        consumer_group: &str,
        message_id: MessageId,
        _now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome> {
        check_group(consumer_group)?;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(if seen.insert((consumer_group.to_owned(), message_id)) {
            InboxOutcome::First
        } else {
            InboxOutcome::Duplicate
        })
    }
}

/// A thread-safe, in-memory [`CursorStore`]. Clones share the same cursors.
#[derive(Debug, Clone, Default)]
pub struct InMemoryCursorStore {
    cursors: Arc<Mutex<HashMap<String, Cursor>>>,
}

impl InMemoryCursorStore {
    /// No cursors.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CursorStore for InMemoryCursorStore {
    async fn load(&self, name: &str) -> StoreResult<Option<Cursor>> {
        let cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(cursors.get(name).cloned())
    }

    async fn save(
        &self,
        name: &str,
        position: CursorPosition,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Cursor> {
        if name.is_empty() {
            return Err(StoreError::InvalidInput(
                "cursor name must not be empty".into(),
            ));
        }
        let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
        let current = cursors.get(name).map(|c| c.version);
        if current != expected_version {
            return Err(StoreError::Conflict {
                what: "cursor",
                id: name.to_owned(),
                expected: expected_version.unwrap_or(0),
            });
        }
        let cursor = Cursor::new(name.to_owned(), position, current.unwrap_or(0) + 1, now);
        cursors.insert(name.to_owned(), cursor.clone());
        Ok(cursor)
    }
}
