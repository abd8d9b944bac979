use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::{CompensationItem, NewCompensationItem};
use outbox_ports::{CompensationFilter, CompensationStore, StoreError, StoreResult};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use uuid::Uuid;

/// A thread-safe, in-memory [`CompensationStore`]. Clones share the same items.
#[derive(Debug, Clone, Default)]
pub struct InMemoryCompensationStore {
    items: Arc<Mutex<Vec<CompensationItem>>>,
}

impl InMemoryCompensationStore {
    /// No items.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CompensationStore for InMemoryCompensationStore {
    async fn record(
        &self,
        items: Vec<NewCompensationItem>,
        max_retries: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>> {
        outbox_ports::check_max_retries(max_retries)?;
        let mut all = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let new: Vec<CompensationItem> = items
            .into_iter()
            .map(|item| CompensationItem::new(Uuid::now_v7(), item, max_retries, now))
            .collect();
        let ids = new.iter().map(|i| i.id).collect();
        all.extend(new);
        Ok(ids)
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        reserve_for: Duration,
    ) -> StoreResult<Vec<CompensationItem>> {
        let reserve = outbox_ports::reservation(reserve_for)?;
        let mut all = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].status.is_retryable() && all[i].next_retry_at <= now)
            .collect();
        due.sort_by_key(|&i| (all[i].next_retry_at, i));
        due.truncate(limit);
        Ok(due
            .into_iter()
            .map(|i| {
                let item = &mut all[i];
                item.next_retry_at = now + reserve;
                item.version += 1;
                item.updated_at = now;
                item.clone()
            })
            .collect())
    }

    async fn update(&self, item: &CompensationItem, expected_version: u64) -> StoreResult<()> {
        let mut all = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let stored =
            all.iter_mut()
                .find(|i| i.id == item.id)
                .ok_or_else(|| StoreError::NotFound {
                    what: "compensation item",
                    id: item.id.to_string(),
                })?;
        if stored.version != expected_version {
            return Err(StoreError::Conflict {
                what: "compensation item",
                id: item.id.to_string(),
                expected: expected_version,
            });
        }
        *stored = item.clone();
        Ok(())
    }

    async fn get(&self, id: Uuid) -> StoreResult<Option<CompensationItem>> {
        let all = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(all.iter().find(|i| i.id == id).cloned())
    }

    async fn list(&self, filter: &CompensationFilter) -> StoreResult<Vec<CompensationItem>> {
        let all = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(all
            .iter()
            .filter(|i| filter.status.is_none_or(|s| i.status == s))
            .filter(|i| filter.batch_id.as_ref().is_none_or(|b| &i.batch_id == b))
            .take(filter.limit)
            .cloned()
            .collect())
    }
}
