use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::{
    BackoffPolicy, Delivery, DeliveryEvent, ErrorText, Lease, LeaseToken, MessageId, MessageLimits,
    MessageStatus, OrderingKey, OutboxMessage, select_heads,
};
use outbox_ports::{
    ClaimRequest, ClaimedMessage, CursorPosition, ListFilter, LogBatch, LogEntry, LogLag,
    MessageStore, OutboxLog, OutboxStats, SettleReport, Settlement, StoreError, StoreResult,
    StoredMessage,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use uuid::Uuid;

/// A thread-safe, in-memory [`MessageStore`] and [`OutboxLog`]. Clones share the same
/// messages.
///
/// It applies the domain's state machine and ordering rule directly, so it is the
/// reference the SQL adapters are compared with. Claims scan only unfinished messages,
/// so their cost does not grow with the number of published messages kept.
#[derive(Debug, Clone)]
pub struct InMemoryStore {
    inner: Arc<Mutex<State>>,
    max_attempts: u32,
    limits: MessageLimits,
}

#[derive(Debug, Default)]
struct State {
    /// Messages in write order, by index (`seq` minus one); purged messages are gone.
    log: BTreeMap<usize, (OutboxMessage, Delivery)>,
    next: usize,
    by_id: HashMap<MessageId, usize>,
    /// Indices of pending and in-flight messages.
    unfinished: BTreeSet<usize>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStore {
    /// Checks and appends `messages`, all or none, each with the delivery state
    /// `initial` gives it.
    fn append(
        &self,
        messages: Vec<OutboxMessage>,
        initial: impl Fn(&OutboxMessage) -> Delivery,
    ) -> StoreResult<Vec<MessageId>> {
        for m in &messages {
            self.limits
                .check(m)
                .map_err(|source| StoreError::InvalidMessage { id: m.id, source })?;
        }
        let mut state = self.lock();
        let mut seen = std::collections::HashSet::new();
        for m in &messages {
            if state.by_id.contains_key(&m.id) || !seen.insert(m.id) {
                return Err(StoreError::DuplicateMessage(m.id));
            }
        }
        let mut ids = Vec::with_capacity(messages.len());
        for m in messages {
            let idx = state.next;
            state.next += 1;
            ids.push(m.id);
            state.by_id.insert(m.id, idx);
            let delivery = initial(&m);
            if delivery.status.is_unfinished() {
                state.unfinished.insert(idx);
            }
            state.log.insert(idx, (m, delivery));
        }
        Ok(ids)
    }

    /// An empty store giving each message the default policy's attempts (20).
    pub fn new() -> Self {
        Self::with_max_attempts(BackoffPolicy::default().max_attempts())
    }

    /// An empty store giving each message `max_attempts` attempts.
    pub fn with_max_attempts(max_attempts: u32) -> Self {
        Self {
            inner: Arc::default(),
            max_attempts: max_attempts.max(1),
            limits: MessageLimits::default(),
        }
    }

    /// The same store, validating messages with `limits`.
    pub fn with_limits(mut self, limits: MessageLimits) -> Self {
        self.limits = limits;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn stored(&self, idx: usize) -> StoredMessage {
        let (message, delivery) = &self.log[&idx];
        StoredMessage::new(idx as u64 + 1, message.clone(), delivery.clone())
    }

    /// Applies `event` to the message at `idx`, keeping the unfinished index in step.
    fn apply(&mut self, idx: usize, event: DeliveryEvent, now: DateTime<Utc>) -> StoreResult<()> {
        let Some((message, delivery)) = self.log.get_mut(&idx) else {
            return Err(StoreError::NotFound {
                what: "message",
                id: format!("#{}", idx + 1),
            });
        };
        let next = delivery
            .apply(event, now)
            .map_err(|source| StoreError::Transition {
                id: message.id,
                source,
            })?;
        *delivery = next;
        if delivery.status.is_unfinished() {
            self.unfinished.insert(idx);
        } else {
            self.unfinished.remove(&idx);
        }
        Ok(())
    }

    /// The counters over the messages `wanted` accepts.
    fn stats(&self, wanted: impl Fn(&OutboxMessage) -> bool) -> OutboxStats {
        let mut counts: HashMap<MessageStatus, u64> = HashMap::new();
        let mut retrying = 0;
        for (_, d) in self.log.values().filter(|(m, _)| wanted(m)) {
            *counts.entry(d.status).or_default() += 1;
            if d.status == MessageStatus::Pending && d.attempts > 0 {
                retrying += 1;
            }
        }
        let count = |s| counts.get(&s).copied().unwrap_or(0);
        let unfinished = self
            .unfinished
            .iter()
            .map(|i| &self.log[i])
            .filter(|(m, _)| wanted(m));
        let mut oldest = None;
        // The first unfinished message of each key, in write order: a key is parked
        // when that head is pending after a failed attempt.
        let mut heads: HashMap<OrderingKey, &Delivery> = HashMap::new();
        for (m, d) in unfinished {
            oldest = oldest.or(Some(m.created_at));
            heads.entry(m.ordering_key()).or_insert(d);
        }
        let parked = heads
            .values()
            .filter(|d| d.status == MessageStatus::Pending && d.attempts > 0)
            .count() as u64;
        OutboxStats::new(
            count(MessageStatus::Pending) - retrying,
            retrying,
            count(MessageStatus::InFlight),
            count(MessageStatus::Published),
            count(MessageStatus::Consumed),
            count(MessageStatus::Dead),
            oldest,
        )
        .with_recorded(count(MessageStatus::Recorded))
        .with_parked_keys(parked)
    }

    fn index(&self, id: MessageId) -> StoreResult<usize> {
        self.by_id
            .get(&id)
            .copied()
            .ok_or_else(|| StoreError::NotFound {
                what: "message",
                id: id.to_string(),
            })
    }
}

#[async_trait]
impl MessageStore for InMemoryStore {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        let max_attempts = self.max_attempts;
        self.append(messages, |m| Delivery::new(max_attempts, m.created_at))
    }

    async fn record(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        self.append(messages, |m| Delivery::recorded(m.created_at))
    }

    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Vec<ClaimedMessage>> {
        request.validate()?;
        let mut state = self.lock();
        let now = request.now;
        let heads = select_heads(
            state
                .unfinished
                .iter()
                .map(|&i| (i, state.log[&i].0.ordering_key(), &state.log[&i].1)),
            now,
            request.limit,
        );
        let expires_at = request.lease_expires_at();
        let mut claimed = Vec::with_capacity(heads.len());
        for idx in heads {
            let lease = Lease {
                owner: request.owner.clone(),
                token: LeaseToken::from_uuid(Uuid::new_v4()),
                expires_at,
            };
            state.apply(
                idx,
                DeliveryEvent::Claim {
                    lease: lease.clone(),
                },
                now,
            )?;
            let (message, delivery) = &state.log[&idx];
            claimed.push(ClaimedMessage {
                seq: idx as u64 + 1,
                message: message.clone(),
                lease,
                attempts: delivery.attempts,
                max_attempts: delivery.max_attempts,
            });
        }
        Ok(claimed)
    }

    async fn settle(
        &self,
        settlements: Vec<Settlement>,
        now: DateTime<Utc>,
    ) -> StoreResult<SettleReport> {
        let mut state = self.lock();
        // Resolve every id before changing anything, so an unknown id fails the whole
        // call with nothing written.
        let indices = settlements
            .iter()
            .map(|s| state.index(s.id))
            .collect::<StoreResult<Vec<_>>>()?;
        let mut report = SettleReport::default();
        for (s, idx) in settlements.into_iter().zip(indices) {
            let (id, token) = (s.id, s.token);
            let event = s.event();
            let owned = state.log[&idx]
                .1
                .lease
                .as_ref()
                .is_some_and(|l| l.token == token);
            if owned {
                state.apply(idx, event, now)?;
                report.settled += 1;
            } else {
                report.lease_lost.push(id);
            }
        }
        Ok(report)
    }

    async fn release_expired(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        let mut state = self.lock();
        let expired: Vec<usize> = state
            .unfinished
            .iter()
            .copied()
            .filter(|&i| state.log[&i].1.lease_expired(now))
            .take(limit)
            .collect();
        for &idx in &expired {
            state.apply(idx, DeliveryEvent::ExpireLease, now)?;
        }
        Ok(expired.len() as u64)
    }

    async fn mark_consumed(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64> {
        let mut state = self.lock();
        let mut changed = 0;
        for &id in ids {
            let Some(&idx) = state.by_id.get(&id) else {
                continue;
            };
            let status = state.log[&idx].1.status;
            if matches!(status, MessageStatus::Consumed | MessageStatus::Dead) {
                continue;
            }
            state.apply(idx, DeliveryEvent::Consume, now)?;
            changed += 1;
        }
        Ok(changed)
    }

    async fn replay_dead(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64> {
        let mut state = self.lock();
        let mut changed = 0;
        for &id in ids {
            let Some(&idx) = state.by_id.get(&id) else {
                continue;
            };
            if state.log[&idx].1.status == MessageStatus::Dead {
                state.apply(idx, DeliveryEvent::Replay, now)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn kill(&self, id: MessageId, reason: ErrorText, now: DateTime<Utc>) -> StoreResult<()> {
        let mut state = self.lock();
        let idx = state.index(id)?;
        state.apply(idx, DeliveryEvent::Kill { reason }, now)
    }

    async fn get(&self, id: MessageId) -> StoreResult<Option<StoredMessage>> {
        let state = self.lock();
        Ok(state.by_id.get(&id).map(|&idx| state.stored(idx)))
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<StoredMessage>> {
        let state = self.lock();
        let start = filter
            .after_seq
            .map_or(0, |s| usize::try_from(s).unwrap_or(usize::MAX));
        Ok(state
            .log
            .range(start..)
            .filter(|&(&i, (m, d))| filter.matches(i as u64 + 1, m, d.status))
            .take(filter.limit)
            .map(|(&i, _)| state.stored(i))
            .collect())
    }

    async fn stats(&self) -> StoreResult<OutboxStats> {
        let state = self.lock();
        Ok(state.stats(|_| true))
    }

    async fn stats_by_service(&self) -> StoreResult<BTreeMap<String, OutboxStats>> {
        let state = self.lock();
        let services: BTreeSet<&str> = state
            .log
            .values()
            .map(|(m, _)| m.service.as_str())
            .collect();
        Ok(services
            .into_iter()
            .map(|service| (service.to_owned(), state.stats(|m| m.service == service)))
            .collect())
    }

    async fn delete_dead(&self, ids: &[MessageId]) -> StoreResult<u64> {
        let mut state = self.lock();
        let mut deleted = 0;
        for id in ids {
            let Some(&idx) = state.by_id.get(id) else {
                continue;
            };
            if state.log[&idx].1.status == MessageStatus::Dead {
                state.log.remove(&idx);
                state.by_id.remove(id);
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn purge_finished(
        &self,
        published_before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        let mut state = self.lock();
        let mut doomed: Vec<(DateTime<Utc>, usize)> = state
            .log
            .iter()
            .filter(|(_, (_, d))| {
                matches!(d.status, MessageStatus::Published | MessageStatus::Consumed)
            })
            .filter_map(|(&i, (_, d))| {
                d.published_at
                    .filter(|&at| at < published_before)
                    .map(|at| (at, i))
            })
            .collect();
        // Oldest published first, ties in write order.
        doomed.sort_unstable();
        doomed.truncate(limit);
        let doomed: Vec<usize> = doomed.into_iter().map(|(_, i)| i).collect();
        for idx in &doomed {
            if let Some((m, _)) = state.log.remove(idx) {
                state.by_id.remove(&m.id);
            }
        }
        Ok(doomed.len() as u64)
    }
}

/// The log is the messages in write order; positions are their `seq`. Writes are
/// atomic under one lock, so write order is commit order and the log is gap-safe.
#[async_trait]
impl OutboxLog for InMemoryStore {
    fn start(&self) -> CursorPosition {
        CursorPosition("0".to_owned())
    }

    async fn read(&self, after: &CursorPosition, limit: usize) -> StoreResult<LogBatch> {
        let after = seq_of(&after.0)?;
        let state = self.lock();
        let entries = state
            .log
            .range(usize::try_from(after).unwrap_or(usize::MAX)..)
            .take(limit)
            .map(|(idx, _)| {
                let stored = state.stored(*idx);
                LogEntry::new(CursorPosition(stored.seq.to_string()), stored)
            })
            .collect();
        Ok(LogBatch::new(entries, false))
    }

    async fn unfinished_start(&self) -> StoreResult<CursorPosition> {
        let first = self.lock().unfinished.first().copied();
        match first {
            // The position before the message at `idx` is its seq minus one: `idx`.
            Some(idx) => Ok(CursorPosition(idx.to_string())),
            None => self.end().await,
        }
    }

    async fn end(&self) -> StoreResult<CursorPosition> {
        let last = self
            .lock()
            .log
            .last_key_value()
            .map_or(0, |(idx, _)| idx + 1);
        Ok(CursorPosition(last.to_string()))
    }

    async fn lag(&self, after: &CursorPosition) -> StoreResult<LogLag> {
        let after = seq_of(&after.0)?;
        let state = self.lock();
        let mut unread = state
            .log
            .range(usize::try_from(after).unwrap_or(usize::MAX)..);
        let oldest_at = unread.clone().next().map(|(_, (m, _))| m.created_at);
        let entries = unread
            .by_ref()
            .take(usize::try_from(LogLag::COUNT_CAP).unwrap_or(usize::MAX))
            .count();
        Ok(LogLag::new(entries as u64, oldest_at))
    }

    fn parse_position(&self, text: &str) -> StoreResult<CursorPosition> {
        seq_of(text).map(|s| CursorPosition(s.to_string()))
    }
}

fn seq_of(text: &str) -> StoreResult<u64> {
    text.parse().map_err(|_| {
        StoreError::InvalidPosition(format!(
            "`{text}` is not a position (expected a whole number)"
        ))
    })
}
