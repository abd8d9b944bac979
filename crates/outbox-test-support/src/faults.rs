use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::{ErrorText, MessageId, OutboxMessage};
use outbox_ports::{
    ClaimRequest, ClaimedMessage, ListFilter, MessageStore, OutboxStats, PublishError,
    PublishErrorKind, PublishOutcome, Publisher, SettleReport, Settlement, StoreError, StoreResult,
    StoredMessage,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

#[derive(Debug, Default)]
struct PublishRules {
    /// The next this-many messages fail.
    fail_next: u32,
    fail_next_kind: Option<PublishErrorKind>,
    /// Every message fails.
    fail_all: Option<PublishErrorKind>,
    /// Every n-th message fails transiently.
    fail_every: Option<usize>,
    /// Messages with this partition key fail, `Some(n)` times or forever.
    keys: HashMap<String, (PublishErrorKind, Option<u32>)>,
    delay: Option<Duration>,
}

/// Wraps a [`Publisher`] and makes chosen messages fail, per message, as a broker would.
/// Failing messages never reach the inner publisher. Clones share the rules.
#[derive(Debug, Clone)]
pub struct FaultyPublisher<P> {
    inner: P,
    rules: Arc<Mutex<PublishRules>>,
    seen: Arc<AtomicUsize>,
}

impl<P> FaultyPublisher<P> {
    /// A wrapper that injects nothing until told to.
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            rules: Arc::default(),
            seen: Arc::default(),
        }
    }

    fn rules(&self) -> MutexGuard<'_, PublishRules> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` messages fail with `kind`.
    pub fn fail_times(&self, n: u32, kind: PublishErrorKind) -> &Self {
        let mut r = self.rules();
        r.fail_next = n;
        r.fail_next_kind = Some(kind);
        self
    }

    /// Every message fails with `kind` until [`heal`](Self::heal).
    pub fn fail_always(&self, kind: PublishErrorKind) -> &Self {
        self.rules().fail_all = Some(kind);
        self
    }

    /// Every `n`th message (counting all messages seen) fails transiently.
    pub fn fail_every(&self, n: usize) -> &Self {
        self.rules().fail_every = (n > 0).then_some(n);
        self
    }

    /// Messages with partition key `key` fail with `kind`, `times` times or forever.
    pub fn fail_key(
        &self,
        key: impl Into<String>,
        kind: PublishErrorKind,
        times: Option<u32>,
    ) -> &Self {
        self.rules().keys.insert(key.into(), (kind, times));
        self
    }

    /// Every publish call waits `delay` first.
    pub fn delay(&self, delay: Duration) -> &Self {
        self.rules().delay = Some(delay);
        self
    }

    /// Removes every rule.
    pub fn heal(&self) -> &Self {
        *self.rules() = PublishRules::default();
        self
    }

    /// How many messages were offered, failed or not.
    pub fn messages_seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// The wrapped publisher.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Decides one message's injected failure, if any.
    fn injected(&self, message: &OutboxMessage) -> Option<PublishError> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        let mut r = self.rules();
        let error = |kind| match kind {
            PublishErrorKind::Permanent => PublishError::permanent("injected permanent fault"),
            _ => PublishError::transient("injected transient fault"),
        };
        if let Some(kind) = r.fail_all {
            return Some(error(kind));
        }
        if let Some((kind, times)) = r.keys.get_mut(&message.partition_key) {
            match times {
                None => return Some(error(*kind)),
                Some(left) if *left > 0 => {
                    *left -= 1;
                    return Some(error(*kind));
                }
                Some(_) => {}
            }
        }
        if r.fail_next > 0 {
            r.fail_next -= 1;
            return Some(error(
                r.fail_next_kind.unwrap_or(PublishErrorKind::Transient),
            ));
        }
        if r.fail_every.is_some_and(|every| n.is_multiple_of(every)) {
            return Some(error(PublishErrorKind::Transient));
        }
        None
    }
}

#[async_trait]
impl<P: Publisher> Publisher for FaultyPublisher<P> {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let delay = self.rules().delay;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let injected: Vec<Option<PublishError>> = batch.iter().map(|m| self.injected(m)).collect();
        let passed: Vec<OutboxMessage> = batch
            .iter()
            .zip(&injected)
            .filter(|(_, e)| e.is_none())
            .map(|(m, _)| m.clone())
            .collect();
        let mut inner = if passed.is_empty() {
            Vec::new()
        } else {
            self.inner.publish(&passed).await
        }
        .into_iter();
        injected
            .into_iter()
            .map(|e| match e {
                Some(e) => Err(e),
                None => inner.next().unwrap_or_else(|| {
                    Err(PublishError::transient("inner publisher lost an outcome"))
                }),
            })
            .collect()
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.inner.flush(timeout).await
    }
}

/// A [`MessageStore`] operation that [`FaultyStore`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// [`MessageStore::enqueue`] and [`MessageStore::record`]
    Enqueue,
    /// [`MessageStore::claim`]
    Claim,
    /// [`MessageStore::settle`]
    Settle,
    /// [`MessageStore::release_expired`]
    ReleaseExpired,
}

#[derive(Debug, Default)]
struct StoreRules {
    fail_next: HashMap<StoreOp, u32>,
    delay: HashMap<StoreOp, Duration>,
    /// Calls per operation, failed or not.
    calls: HashMap<StoreOp, usize>,
}

/// Wraps a [`MessageStore`] and makes chosen operations fail with
/// [`StoreError::Unavailable`] (as a database restart would) or stall. Clones share the
/// rules. A failed call does not reach the inner store.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    rules: Arc<Mutex<StoreRules>>,
}

impl<S> FaultyStore<S> {
    /// A wrapper that injects nothing until told to.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rules: Arc::default(),
        }
    }

    fn rules(&self) -> MutexGuard<'_, StoreRules> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` calls of `op` fail.
    pub fn fail_next(&self, op: StoreOp, n: u32) -> &Self {
        self.rules().fail_next.insert(op, n);
        self
    }

    /// Every call of `op` waits `delay` first.
    pub fn delay(&self, op: StoreOp, delay: Duration) -> &Self {
        self.rules().delay.insert(op, delay);
        self
    }

    /// Removes every rule (the call counts stay).
    pub fn heal(&self) -> &Self {
        let mut r = self.rules();
        r.fail_next.clear();
        r.delay.clear();
        self
    }

    /// How many times `op` was called, failed or not.
    pub fn calls(&self, op: StoreOp) -> usize {
        self.rules().calls.get(&op).copied().unwrap_or(0)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn gate(&self, op: StoreOp) -> StoreResult<()> {
        let delay = {
            let mut r = self.rules();
            *r.calls.entry(op).or_default() += 1;
            r.delay.get(&op).copied()
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut r = self.rules();
        match r.fail_next.get_mut(&op) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Err(StoreError::Unavailable(format!("injected {op:?} fault")))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl<S: MessageStore> MessageStore for FaultyStore<S> {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        self.gate(StoreOp::Enqueue).await?;
        self.inner.enqueue(messages).await
    }

    async fn record(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        self.gate(StoreOp::Enqueue).await?;
        self.inner.record(messages).await
    }

    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Vec<ClaimedMessage>> {
        self.gate(StoreOp::Claim).await?;
        self.inner.claim(request).await
    }

    async fn settle(
        &self,
        settlements: Vec<Settlement>,
        now: DateTime<Utc>,
    ) -> StoreResult<SettleReport> {
        self.gate(StoreOp::Settle).await?;
        self.inner.settle(settlements, now).await
    }

    async fn release_expired(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        self.gate(StoreOp::ReleaseExpired).await?;
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
