use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::{
    Delivery, DeliveryEvent, ErrorText, Lease, LeaseToken, MessageId, MessageStatus, OutboxMessage,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// A message with its delivery state, as a store keeps it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoredMessage {
    /// Position in write order within the store; ordering and listing follow it.
    pub seq: u64,
    /// The envelope.
    pub message: OutboxMessage,
    /// The delivery state.
    pub delivery: Delivery,
}

impl StoredMessage {
    /// Bundles the parts (for adapters).
    pub fn new(seq: u64, message: OutboxMessage, delivery: Delivery) -> Self {
        Self {
            seq,
            message,
            delivery,
        }
    }
}

/// A relay's request for work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The relay instance, recorded in the lease for operators.
    pub owner: String,
    /// At most this many messages.
    pub limit: usize,
    /// How long the claim holds before the messages return to the pool.
    pub lease_for: Duration,
    /// The current time (from the relay's [`Clock`](crate::Clock)).
    pub now: DateTime<Utc>,
}

impl ClaimRequest {
    /// Rejects requests no store can serve (zero limit, zero lease). Every adapter calls
    /// this first, so all of them answer bad input the same way.
    pub fn validate(&self) -> StoreResult<()> {
        if self.limit == 0 {
            return Err(StoreError::InvalidInput(
                "claim limit must be at least 1".into(),
            ));
        }
        if self.lease_for.is_zero() {
            return Err(StoreError::InvalidInput(
                "lease duration must be greater than zero".into(),
            ));
        }
        if chrono::Duration::from_std(self.lease_for).is_err() {
            return Err(StoreError::InvalidInput(format!(
                "lease duration {:?} is too long",
                self.lease_for
            )));
        }
        Ok(())
    }

    /// When a lease taken by this request expires.
    pub fn lease_expires_at(&self) -> DateTime<Utc> {
        let lease = chrono::Duration::from_std(self.lease_for).unwrap_or(chrono::Duration::MAX);
        self.now
            .checked_add_signed(lease)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A message handed to a relay, with the lease that entitles it to settle it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedMessage {
    /// The message's position in its outbox table ([`StoredMessage::seq`]): unique
    /// there and increasing in write order. A key's messages are delivered in this
    /// order, so per key it only grows from one delivery to the next (a publisher can
    /// derive broker-side deduplication ids from it).
    pub seq: u64,
    /// The envelope.
    pub message: OutboxMessage,
    /// The lease; settle with its token.
    pub lease: Lease,
    /// Attempts including this one.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
}

/// What happened to one claimed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// The broker acknowledged it.
    Published,
    /// It failed and should be tried again at `at` (if attempts remain; otherwise the
    /// store makes it dead).
    Retry {
        /// What went wrong.
        error: ErrorText,
        /// When to try again.
        at: DateTime<Utc>,
    },
    /// It failed for good.
    Dead {
        /// Why.
        error: ErrorText,
    },
}

/// The outcome of one claim, reported back to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// The message.
    pub id: MessageId,
    /// The token of the claim being settled.
    pub token: LeaseToken,
    /// What happened.
    pub disposition: Disposition,
}

impl Settlement {
    /// The delivery event this settlement applies to the message's state.
    pub fn event(self) -> DeliveryEvent {
        let token = self.token;
        match self.disposition {
            Disposition::Published => DeliveryEvent::Publish { token },
            Disposition::Retry { error, at } => DeliveryEvent::Fail {
                token,
                error,
                retry_at: Some(at),
            },
            Disposition::Dead { error } => DeliveryEvent::Fail {
                token,
                error,
                retry_at: None,
            },
        }
    }
}

/// What a [`MessageStore::settle`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettleReport {
    /// Settlements applied.
    pub settled: usize,
    /// Settlements refused because the lease had been lost (expired and reclaimed, or
    /// the message was already consumed); another claim owns the outcome now.
    pub lease_lost: Vec<MessageId>,
}

/// Which messages [`MessageStore::list`] returns: every condition that is set must hold.
///
/// Build one with [`ListFilter::all`] or [`ListFilter::status`] and narrow it with the
/// `with_*` methods:
///
/// ```
/// # use outbox_ports::ListFilter;
/// # use outbox_domain::MessageStatus;
/// let dead_orders = ListFilter::status(MessageStatus::Dead, 100)
///     .with_service("orders")
///     .with_event_type("order.created");
/// assert_eq!(dead_orders.service.as_deref(), Some("orders"));
/// ```
///
/// Stores bind every value as a query parameter; none is ever spliced into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only messages in this status.
    pub status: Option<MessageStatus>,
    /// Only messages written after this [`StoredMessage::seq`] (for paging: pass the
    /// last `seq` of the previous page).
    pub after_seq: Option<u64>,
    /// Only messages of this service ([`OutboxMessage::service`], exact match).
    pub service: Option<String>,
    /// Only messages of this event type ([`OutboxMessage::event_type`], exact match).
    pub event_type: Option<String>,
    /// Only messages of this partition key ([`OutboxMessage::partition_key`], exact
    /// match; keys are scoped by service, so combine it with [`service`](Self::service)
    /// when several services share a table).
    pub partition_key: Option<String>,
    /// Only messages created at or after this time ([`OutboxMessage::created_at`],
    /// inclusive).
    pub created_from: Option<DateTime<Utc>>,
    /// Only messages created before this time ([`OutboxMessage::created_at`],
    /// exclusive).
    pub created_before: Option<DateTime<Utc>>,
    /// At most this many (zero returns nothing).
    pub limit: usize,
}

impl ListFilter {
    /// The first `limit` messages, in any status.
    pub fn all(limit: usize) -> Self {
        Self {
            status: None,
            after_seq: None,
            service: None,
            event_type: None,
            partition_key: None,
            created_from: None,
            created_before: None,
            limit,
        }
    }

    /// The first `limit` messages in `status`.
    pub fn status(status: MessageStatus, limit: usize) -> Self {
        Self::all(limit).with_status(status)
    }

    /// The same filter, only messages in `status`.
    pub fn with_status(mut self, status: MessageStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// The same filter, only messages written after `seq` (the next page).
    pub fn with_after_seq(mut self, seq: u64) -> Self {
        self.after_seq = Some(seq);
        self
    }

    /// The same filter, only messages of `service`.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// The same filter, only messages of `event_type`.
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// The same filter, only messages of partition key `key`.
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// The same filter, only messages created at or after `at`.
    pub fn with_created_from(mut self, at: DateTime<Utc>) -> Self {
        self.created_from = Some(at);
        self
    }

    /// The same filter, only messages created before `at`.
    pub fn with_created_before(mut self, at: DateTime<Utc>) -> Self {
        self.created_before = Some(at);
        self
    }

    /// The same filter with another limit.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Whether `m` in `status` at position `seq` passes every condition but the limit
    /// (for in-memory stores; SQL stores express the same conditions in their query).
    pub fn matches(&self, seq: u64, m: &OutboxMessage, status: MessageStatus) -> bool {
        self.status.is_none_or(|s| s == status)
            && self.after_seq.is_none_or(|after| seq > after)
            && self.service.as_deref().is_none_or(|s| s == m.service)
            && self.event_type.as_deref().is_none_or(|t| t == m.event_type)
            && self
                .partition_key
                .as_deref()
                .is_none_or(|k| k == m.partition_key)
            && self.created_from.is_none_or(|at| m.created_at >= at)
            && self.created_before.is_none_or(|at| m.created_at < at)
    }
}

/// Counts for monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Pending and never tried (the backlog).
    pub pending: u64,
    /// Pending after at least one failed attempt (the retry queue).
    pub retrying: u64,
    /// Claimed by a relay.
    pub in_flight: u64,
    /// Acknowledged by the broker.
    pub published: u64,
    /// Reported processed by a consumer.
    pub consumed: u64,
    /// Dead letters.
    pub dead: u64,
    /// Audit records (`DbOnly`), which are never published.
    pub recorded: u64,
    /// Creation time of the oldest unfinished message.
    pub oldest_unsent_at: Option<DateTime<Utc>>,
    /// Parked keys: distinct (service, partition key) whose first unfinished message
    /// is pending after at least one failed attempt, so the whole key waits for that
    /// head's retry (or for an operator to [`kill`](MessageStore::kill) it).
    pub parked_keys: u64,
}

impl OutboxStats {
    /// Builds stats (for adapters).
    #[allow(clippy::too_many_arguments)] // one argument per counter; a builder would hide none of them
    pub fn new(
        pending: u64,
        retrying: u64,
        in_flight: u64,
        published: u64,
        consumed: u64,
        dead: u64,
        oldest_unsent_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            pending,
            retrying,
            in_flight,
            published,
            consumed,
            dead,
            recorded: 0,
            oldest_unsent_at,
            parked_keys: 0,
        }
    }

    /// Sets the number of audit records.
    pub fn with_recorded(mut self, recorded: u64) -> Self {
        self.recorded = recorded;
        self
    }

    /// Sets the number of parked keys.
    pub fn with_parked_keys(mut self, parked_keys: u64) -> Self {
        self.parked_keys = parked_keys;
        self
    }

    /// Messages the relay still owes a delivery.
    pub fn unfinished(&self) -> u64 {
        self.pending + self.retrying + self.in_flight
    }
}

/// Durable storage of outbox messages and their delivery state.
///
/// Contract (checked by the conformance suite in `outbox-test-support`):
/// - **Claim** returns only claimable messages (pending, due, attempts left) that are the
///   first unfinished message of their (service, partition key), so at most one message
///   per key is in flight across all relays, and a failing head parks only its own key
///   (see [`outbox_domain::ordering`]). Each claim takes a fresh lease and counts an
///   attempt; concurrent claims never return the same message.
/// - **Settle** is a compare-and-set on the lease token: a stale token is reported in
///   [`SettleReport::lease_lost`] and changes nothing.
/// - **Enqueue** (and **record**, for audit records) is all or nothing and keeps the
///   given order. Every message is checked
///   with [`MessageLimits`](outbox_domain::MessageLimits) first; a bad one fails the call
///   with [`StoreError::InvalidMessage`] and nothing is written.
/// - Claim cost must not grow with the number of finished messages kept.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Appends messages as pending, in order, all or none. Returns their ids. A message
    /// whose id already exists fails the call with [`StoreError::DuplicateMessage`](crate::StoreError::DuplicateMessage).
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>>;

    /// Stores messages as audit records (`PersistenceStrategy::DbOnly`): checked and
    /// written like [`enqueue`](Self::enqueue), all or none, but with status
    /// [`Recorded`](outbox_domain::MessageStatus::Recorded), which no claim returns and
    /// retention never purges.
    async fn record(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>>;

    /// Claims up to `request.limit` messages under a fresh lease.
    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Vec<ClaimedMessage>>;

    /// Records the outcomes of claims, in one round trip. An id the store does not know
    /// fails the whole call with [`StoreError::NotFound`](crate::StoreError::NotFound)
    /// and records nothing.
    async fn settle(
        &self,
        settlements: Vec<Settlement>,
        now: DateTime<Utc>,
    ) -> StoreResult<SettleReport>;

    /// Returns up to `limit` messages whose lease expired before `now` to the pool
    /// (or makes them dead on their last attempt). Returns how many it released.
    async fn release_expired(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<u64>;

    /// Marks messages consumed (for producers that track consumption). Returns how many
    /// changed; unknown or already consumed ids are skipped.
    async fn mark_consumed(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64>;

    /// Sends dead messages back to the relay with fresh attempts. Returns how many were
    /// dead and are now pending; ids in other states are skipped.
    async fn replay_dead(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64>;

    /// Makes a pending message dead, for example to unpark its key.
    async fn kill(&self, id: MessageId, reason: ErrorText, now: DateTime<Utc>) -> StoreResult<()>;

    /// One message with its state.
    async fn get(&self, id: MessageId) -> StoreResult<Option<StoredMessage>>;

    /// Messages in write order, filtered.
    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<StoredMessage>>;

    /// Counts for monitoring, over the whole store.
    async fn stats(&self) -> StoreResult<OutboxStats>;

    /// The same counts per service (a table may hold several services), keyed by
    /// service name. A service appears once it has any message; the counts of all
    /// services add up to [`stats`](Self::stats).
    async fn stats_by_service(&self) -> StoreResult<BTreeMap<String, OutboxStats>>;

    /// Deletes the dead messages among `ids` (an operator's purge of dead letters).
    /// Messages in any other status and unknown ids are left alone. Returns how many
    /// it deleted.
    async fn delete_dead(&self, ids: &[MessageId]) -> StoreResult<u64>;

    /// The retention job: deletes up to `limit` published or consumed messages that were
    /// published before `published_before`, the earliest published first (ties in write
    /// order). Dead letters and unfinished messages are never deleted. Returns how many
    /// it deleted; call it again while it returns `limit`. A call with nothing to delete
    /// should cost little however many finished messages are kept, since relays make it
    /// periodically.
    async fn purge_finished(
        &self,
        published_before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64>;
}
