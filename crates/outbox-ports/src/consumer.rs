//! The consumer side: a broker subscription ([`MessageSource`]), the user's
//! [`MessageHandler`], the [`TransactionalInbox`] that makes its effect happen once, and
//! the [`DeadLetterSink`] where messages that keep failing are parked.
//!
//! `outbox-runtime`'s `ConsumerRunner` drives these ports; the Kafka and Pulsar adapters
//! implement [`MessageSource`], the sea-orm adapter [`TransactionalInbox`] and a
//! dead-letter table, the Kafka adapter a dead-letter topic.

use crate::StoreResult;
use crate::header;
use crate::inbox::InboxOutcome;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::MessageId;
use std::collections::BTreeMap;
use std::str::FromStr;

/// One message as a consumer group receives it from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncomingMessage {
    /// The topic it was read from.
    pub topic: String,
    /// The partition of `topic` (Kafka), or the adapter's ordering lane. Deliveries with
    /// the same topic and partition are handled one at a time, in offset order.
    pub partition: i32,
    /// The position in the partition; acknowledgements of one partition come in
    /// increasing offset order.
    pub offset: i64,
    /// The broker message key (the outbox partition key).
    pub key: Option<String>,
    /// Headers (Kafka) or properties (Pulsar); see [`header`](crate::header).
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub payload: Vec<u8>,
}

impl IncomingMessage {
    /// A delivery without key or headers; add them with [`with_key`](Self::with_key) and
    /// [`with_header`](Self::with_header).
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            headers: BTreeMap::new(),
            payload,
        }
    }

    /// Sets the broker key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The outbox message id from the [`header::MESSAGE_ID`] header, or `None` when the
    /// header is missing or not a UUID (the message did not come from an outbox).
    pub fn message_id(&self) -> Option<MessageId> {
        MessageId::from_str(self.headers.get(header::MESSAGE_ID)?).ok()
    }

    /// The event type from the [`header::EVENT_TYPE`] header.
    pub fn event_type(&self) -> Option<&str> {
        self.headers.get(header::EVENT_TYPE).map(String::as_str)
    }
}

/// A broker operation on the consumer side failed (receive, acknowledge, close, park).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed: {message}")]
#[non_exhaustive]
pub struct ConsumeError {
    /// What was attempted (`"receive"`, `"ack"`, …).
    pub operation: &'static str,
    /// The broker's description.
    pub message: String,
}

impl ConsumeError {
    /// A failed `operation`.
    pub fn new(operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            operation,
            message: message.into(),
        }
    }
}

/// A consumer group's subscription to the broker.
///
/// Contract: [`recv`](Self::recv) yields each partition's messages in order;
/// [`ack`](Self::ack) marks a delivery processed so that, after a restart or rebalance,
/// delivery resumes after the last acknowledged offset of each partition (anything not
/// acknowledged is delivered again).
#[async_trait]
pub trait MessageSource: Send + Sync {
    /// Waits for the next delivery. Errors are transient (the runner backs off and
    /// calls again).
    async fn recv(&self) -> Result<IncomingMessage, ConsumeError>;

    /// Marks `delivery` processed (for Kafka: stores offset + 1 of its partition for
    /// the next commit). Fails when the partition was revoked meanwhile; the new owner
    /// then sees the message again and the inbox absorbs it.
    async fn ack(&self, delivery: &IncomingMessage) -> Result<(), ConsumeError>;

    /// Commits the acknowledged positions and leaves the group (graceful shutdown).
    async fn close(&self) -> Result<(), ConsumeError>;
}

/// Why a handler did not process a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct HandlerError {
    /// Whether trying again may succeed (a deadlock, a downstream timeout). A
    /// non-retryable error parks the message at once.
    pub retryable: bool,
    /// What went wrong; stored with a parked message.
    pub message: String,
}

impl HandlerError {
    /// A failure worth retrying with backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    /// A failure retrying cannot fix (a malformed payload): park the message now.
    pub fn reject(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// The user's business logic for one consumer group.
///
/// It receives the transaction that the inbox record is written in; everything it
/// writes through `tx` commits together with that record, or not at all. It must not
/// commit `tx` itself. It is called again (with a fresh transaction) after a retryable
/// failure, so effects outside `tx` must be idempotent.
#[async_trait]
pub trait MessageHandler<Tx: Send>: Send + Sync {
    /// Applies `delivery`'s effect inside `tx`.
    async fn handle(&self, tx: &mut Tx, delivery: &IncomingMessage) -> Result<(), HandlerError>;
}

/// An inbox that records message ids inside a transaction the handler writes its
/// effect in, so the effect and the record commit together: the exactly-once effect.
///
/// The sea-orm adapter implements it with `Tx = DatabaseTransaction`; the in-memory
/// inbox of `outbox-test-support` with a staging buffer.
#[async_trait]
pub trait TransactionalInbox: Send + Sync {
    /// The transaction type handed to the [`MessageHandler`].
    type Tx: Send;

    /// Starts a transaction.
    async fn begin(&self) -> StoreResult<Self::Tx>;

    /// Records `message_id` for `consumer_group` inside `tx`. On
    /// [`Duplicate`](InboxOutcome::Duplicate) the caller rolls back and skips the
    /// handler; `tx` stays usable either way.
    async fn record_in(
        &self,
        tx: &mut Self::Tx,
        consumer_group: &str,
        message_id: MessageId,
        now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome>;

    /// Commits `tx`. An error leaves it unknown whether the commit happened; the runner
    /// retries, and the inbox then answers `Duplicate` if it did.
    async fn commit(&self, tx: Self::Tx) -> StoreResult<()>;

    /// Rolls `tx` back.
    async fn rollback(&self, tx: Self::Tx) -> StoreResult<()>;
}

/// A message a consumer group gave up on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The consumer group that gave up.
    pub consumer_group: String,
    /// The outbox message id, if the delivery carried one.
    pub message_id: Option<MessageId>,
    /// The message as received.
    pub message: IncomingMessage,
    /// The last failure.
    pub reason: String,
    /// How many times the handler ran (0 when the message could not be handled at all).
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

impl DeadLetter {
    /// A dead letter for `message`.
    pub fn new(
        consumer_group: impl Into<String>,
        message: IncomingMessage,
        reason: impl Into<String>,
        attempts: u32,
        parked_at: DateTime<Utc>,
    ) -> Self {
        Self {
            consumer_group: consumer_group.into(),
            message_id: message.message_id(),
            message,
            reason: reason.into(),
            attempts,
            parked_at,
        }
    }
}

impl DeadLetter {
    /// The headers a dead-letter topic carries: the message's own headers, then the
    /// `header::DEAD_LETTER_*` fields (which replace any the message already had, so a
    /// message parked twice on its way through several groups says where it failed
    /// last). Every broker adapter uses this one mapping.
    pub fn wire_headers(&self) -> Vec<(String, String)> {
        let m = &self.message;
        let ours = [
            (header::DEAD_LETTER_REASON, self.reason.clone()),
            (header::DEAD_LETTER_GROUP, self.consumer_group.clone()),
            (header::DEAD_LETTER_ATTEMPTS, self.attempts.to_string()),
            (
                header::DEAD_LETTER_SOURCE,
                format!("{}/{}/{}", m.topic, m.partition, m.offset),
            ),
            (header::DEAD_LETTER_PARKED_AT, self.parked_at.to_rfc3339()),
        ];
        let mut out: Vec<(String, String)> = m
            .headers
            .iter()
            .filter(|(name, _)| !ours.iter().any(|(n, _)| n == name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        out.extend(ours.into_iter().map(|(n, v)| (n.to_owned(), v)));
        out
    }
}

/// Where a consumer group parks messages it gave up on (a dead-letter table or topic),
/// so its partition can move on.
///
/// Parking must be idempotent: the same message parked twice (after a crash between
/// parking and acknowledging) is stored once.
#[async_trait]
pub trait DeadLetterSink: Send + Sync {
    /// Stores `letter` durably.
    async fn park(&self, letter: &DeadLetter) -> Result<(), ConsumeError>;
}
