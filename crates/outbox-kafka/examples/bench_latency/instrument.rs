//! What the relay does, timed: a store and a publisher that record into a [`Tracker`],
//! and a waker that counts.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use outbox_domain::{ErrorText, MessageId, OutboxMessage};
use outbox_kafka::KafkaPublisher;
use outbox_ports::{
    ClaimRequest, ClaimedMessage, ListFilter, MessageStore, OutboxStats, PublishError,
    PublishOutcome, Publisher, SettleReport, Settlement, StoreResult, StoredMessage, Wake,
};
use outbox_sea_orm::SeaOrmStore;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When each message was committed, claimed and acknowledged, and how long the relay's
/// steps took. One per cell.
#[derive(Default)]
pub(crate) struct Tracker {
    /// Message → (commit instant, segment of its slot: 0 is the warm-up).
    pub(crate) commits: Mutex<HashMap<MessageId, (Instant, usize)>>,
    /// Message → (start, end) of the claim that first took it.
    pub(crate) claimed: Mutex<HashMap<MessageId, (Instant, Instant)>>,
    /// Message → when its publish came back `Ok`.
    pub(crate) acks: Mutex<HashMap<MessageId, Instant>>,
    /// Claims that found work: how long each took.
    pub(crate) claims: Mutex<Vec<Duration>>,
    pub(crate) empty_claims: AtomicU64,
    /// Publish calls: (messages, how long until the last outcome).
    pub(crate) publishes: Mutex<Vec<(usize, Duration)>>,
    /// Settle calls: how long each took.
    pub(crate) settles: Mutex<Vec<Duration>>,
    /// Writer transactions: begin to commit returned.
    pub(crate) transactions: Mutex<Vec<Duration>>,
}

impl Tracker {
    pub(crate) fn committed(&self) -> usize {
        lock(&self.commits).len()
    }

    pub(crate) fn acked(&self) -> usize {
        lock(&self.acks).len()
    }
}

/// A `MessageStore` that times `claim` and `settle` and delegates everything.
pub(crate) struct TimedStore {
    pub(crate) inner: SeaOrmStore,
    pub(crate) tracker: Arc<Tracker>,
}

#[async_trait]
impl MessageStore for TimedStore {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        self.inner.enqueue(messages).await
    }

    async fn record(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        self.inner.record(messages).await
    }

    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Vec<ClaimedMessage>> {
        let start = Instant::now();
        let claimed = self.inner.claim(request).await?;
        let end = Instant::now();
        if claimed.is_empty() {
            self.tracker.empty_claims.fetch_add(1, Ordering::Relaxed);
        } else {
            lock(&self.tracker.claims).push(end - start);
            let mut map = lock(&self.tracker.claimed);
            for c in &claimed {
                map.entry(c.message.id).or_insert((start, end));
            }
        }
        Ok(claimed)
    }

    async fn settle(
        &self,
        settlements: Vec<Settlement>,
        now: DateTime<Utc>,
    ) -> StoreResult<SettleReport> {
        let start = Instant::now();
        let report = self.inner.settle(settlements, now).await;
        lock(&self.tracker.settles).push(start.elapsed());
        report
    }

    async fn release_expired(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        self.inner.release_expired(now, limit).await
    }

    async fn mark_consumed(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.mark_consumed(ids, now).await
    }

    async fn replay_dead(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.replay_dead(ids, now).await
    }

    async fn kill(&self, id: MessageId, reason: ErrorText, now: DateTime<Utc>) -> StoreResult<()> {
        self.inner.kill(id, reason, now).await
    }

    async fn get(&self, id: MessageId) -> StoreResult<Option<StoredMessage>> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<StoredMessage>> {
        self.inner.list(filter).await
    }

    async fn stats(&self) -> StoreResult<OutboxStats> {
        self.inner.stats().await
    }

    async fn stats_by_service(&self) -> StoreResult<BTreeMap<String, OutboxStats>> {
        self.inner.stats_by_service().await
    }

    async fn delete_dead(&self, ids: &[MessageId]) -> StoreResult<u64> {
        self.inner.delete_dead(ids).await
    }

    async fn purge_finished(
        &self,
        published_before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        self.inner.purge_finished(published_before, limit).await
    }
}

/// A `Publisher` that hands each message of a batch to the inner publisher on its own
/// (all at once, as `KafkaPublisher` itself sends them) so that each gets its own ack
/// instant: when its outcome comes back `Ok`. The relay still sees one call per batch.
pub(crate) struct AckClock {
    pub(crate) inner: Arc<KafkaPublisher>,
    pub(crate) tracker: Arc<Tracker>,
}

#[async_trait]
impl Publisher for AckClock {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        self.inner.publish(batch).await
    }

    async fn publish_claimed(&self, batch: &[ClaimedMessage]) -> Vec<PublishOutcome> {
        let start = Instant::now();
        let sends = batch.iter().map(|c| async move {
            let outcome = self
                .inner
                .publish_claimed(std::slice::from_ref(c))
                .await
                .pop()
                .unwrap_or_else(|| Err(PublishError::transient("publisher returned no outcome")));
            if outcome.is_ok() {
                lock(&self.tracker.acks).insert(c.message.id, Instant::now());
            }
            outcome
        });
        let outcomes = join_all(sends).await;
        lock(&self.tracker.publishes).push((batch.len(), start.elapsed()));
        outcomes
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.inner.flush(timeout).await
    }
}

/// Counts the wakes a `PgWakeListener` delivers.
#[derive(Default)]
pub(crate) struct WakeCounter(pub(crate) AtomicU64);

impl Wake for WakeCounter {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
