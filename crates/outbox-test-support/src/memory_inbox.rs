use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::MessageId;
use outbox_ports::{
    Cursor, CursorPosition, CursorStore, Inbox, InboxOutcome, StoreError, StoreResult,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// A thread-safe, in-memory [`Inbox`]. Clones share the same records.
#[derive(Debug, Clone, Default)]
pub struct InMemoryInbox {
    seen: Arc<Mutex<HashSet<(String, MessageId)>>>,
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
}

#[async_trait]
impl Inbox for InMemoryInbox {
    async fn record(
        &self,
        consumer_group: &str,
        message_id: MessageId,
        _now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome> {
        if consumer_group.is_empty() {
            return Err(StoreError::InvalidInput(
                "consumer group must not be empty".into(),
            ));
        }
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
