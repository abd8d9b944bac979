use crate::ClaimedMessage;
use async_trait::async_trait;
use outbox_domain::OutboxMessage;
use std::time::Duration;

/// Whether a publish failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// Timeouts, broker unavailable, leader changes: retry with backoff.
    Transient,
    /// Message too large, unknown topic, not authorised: retrying cannot help; the
    /// message becomes a dead letter.
    Permanent,
}

/// Why one message was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} publish failure: {message}")]
#[non_exhaustive]
pub struct PublishError {
    /// Retry or give up.
    pub kind: PublishErrorKind,
    /// The broker asked to wait at least this long (throttling).
    pub retry_after: Option<Duration>,
    /// The broker's description.
    pub message: String,
}

impl PublishError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: PublishErrorKind::Transient,
            retry_after: None,
            message: message.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: PublishErrorKind::Permanent,
            retry_after: None,
            message: message.into(),
        }
    }

    /// Asks the relay to wait at least `after` before the next attempt.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Whether retrying may help.
    pub fn is_transient(&self) -> bool {
        self.kind == PublishErrorKind::Transient
    }
}

/// The outcome of publishing one message.
pub type PublishOutcome = Result<(), PublishError>;

/// Delivers messages to a broker.
///
/// Contract (checked by the publisher conformance suite in `outbox-test-support`):
/// - [`publish`](Publisher::publish) returns exactly one outcome per message, in input
///   order; a failure is reported per message, never for "the batch".
/// - `Ok(())` means the broker durably acknowledged the message.
/// - The partition key becomes the broker's message key and the message id, event type,
///   service, content type and schema version travel as headers/properties.
/// - Within one batch no two messages share an ordering key (the relay's claim
///   guarantees it), so a publisher may send a batch's messages concurrently.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes a batch, returning one outcome per message in the same order.
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome>;

    /// Publishes messages a relay claimed; what the relay calls. The claim adds each
    /// message's [`seq`](ClaimedMessage::seq), from which a publisher may derive
    /// broker-side deduplication ids (the Pulsar adapter does). By default it
    /// forwards the envelopes to [`publish`](Publisher::publish).
    async fn publish_claimed(&self, batch: &[ClaimedMessage]) -> Vec<PublishOutcome> {
        let messages: Vec<OutboxMessage> = batch.iter().map(|c| c.message.clone()).collect();
        self.publish(&messages).await
    }

    /// Waits until everything sent has been acknowledged, up to `timeout`
    /// (called on graceful shutdown).
    async fn flush(&self, timeout: Duration) -> Result<(), PublishError>;
}

/// Names of the headers (Kafka) or properties (Pulsar) that carry the envelope.
pub mod header {
    /// The message id, the consumer's deduplication key.
    pub const MESSAGE_ID: &str = "outbox-message-id";
    /// The event type.
    pub const EVENT_TYPE: &str = "outbox-event-type";
    /// The owning service.
    pub const SERVICE: &str = "outbox-service";
    /// The payload's MIME type.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The payload schema version.
    pub const SCHEMA_VERSION: &str = "outbox-schema-version";
    /// When the business event happened (RFC 3339).
    pub const OCCURRED_AT: &str = "outbox-occurred-at";
    /// W3C trace parent.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// On a dead-letter topic: why the consumer group gave up on the message.
    pub const DEAD_LETTER_REASON: &str = "outbox-dead-letter-reason";
    /// On a dead-letter topic: the consumer group that gave up.
    pub const DEAD_LETTER_GROUP: &str = "outbox-dead-letter-group";
    /// On a dead-letter topic: how many times the handler ran.
    pub const DEAD_LETTER_ATTEMPTS: &str = "outbox-dead-letter-attempts";
    /// On a dead-letter topic: where the message was read, `topic/partition/offset`.
    pub const DEAD_LETTER_SOURCE: &str = "outbox-dead-letter-source";
    /// On a dead-letter topic: when it was parked (RFC 3339).
    pub const DEAD_LETTER_PARKED_AT: &str = "outbox-dead-letter-parked-at";
}

/// The headers a publisher sends with `message`: the envelope fields under the
/// [`header`] names, then the message's own headers (which cannot override them).
/// Every broker adapter uses this one mapping, so consumers see the same headers
/// whichever broker carried the message.
pub fn wire_headers(message: &OutboxMessage) -> Vec<(String, String)> {
    let mut out = vec![
        (header::MESSAGE_ID.to_owned(), message.id.to_string()),
        (header::EVENT_TYPE.to_owned(), message.event_type.clone()),
        (header::SERVICE.to_owned(), message.service.clone()),
        (
            header::CONTENT_TYPE.to_owned(),
            message.payload.content_type().to_owned(),
        ),
        (
            header::SCHEMA_VERSION.to_owned(),
            message.schema_version.to_string(),
        ),
        (
            header::OCCURRED_AT.to_owned(),
            message.occurred_at.to_rfc3339(),
        ),
    ];
    if let Some(ctx) = &message.trace_context {
        out.push((header::TRACEPARENT.to_owned(), ctx.traceparent.clone()));
        if let Some(state) = &ctx.tracestate {
            out.push((header::TRACESTATE.to_owned(), state.clone()));
        }
    }
    for (name, value) in &message.headers {
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), value.clone()));
        }
    }
    out
}
