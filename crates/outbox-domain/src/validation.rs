//! What makes an [`OutboxMessage`] acceptable to an outbox.
//!
//! Every store checks a message with [`MessageLimits::check`] before it writes
//! anything, so a bad message is rejected with a typed [`InvalidMessage`] and the
//! caller's transaction is left as it was. The rules are the ones every backend and
//! broker can honour: names that fit the database's indexes and the brokers' naming
//! rules, header names that are HTTP tokens, and a bounded payload.

use crate::{Identifier, OutboxMessage, TopicName};

/// Longest partition key, in bytes. Keys are indexed; 255 bytes fits every backend's
/// index key limit (MySQL's 3072 bytes at 4 bytes per character).
pub const MAX_KEY_LEN: usize = 255;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 255;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 255;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 8 * 1024;
/// Header names with this prefix are reserved for the envelope.
pub const RESERVED_HEADER_PREFIX: &str = "outbox-";
/// Default for [`MessageLimits::max_payload_bytes`]: 1 MiB, Kafka's default
/// `message.max.bytes`.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Why a message was refused. A caller bug: fix the message, retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// The service is not a valid [`Identifier`].
    #[error(
        "invalid service `{0}`: use 1 to 63 characters from a-z, 0-9 and _, not starting with a digit"
    )]
    Service(String),
    /// The event type is empty, too long or contains control characters.
    #[error(
        "invalid event type `{0}`: use 1 to {MAX_EVENT_TYPE_LEN} bytes without control characters"
    )]
    EventType(String),
    /// The topic is empty or not a valid [`TopicName`].
    #[error(
        "invalid topic `{0}`: use 1 to 249 characters from A-Z, a-z, 0-9, '.', '_', '-', '/' and ':'"
    )]
    Topic(String),
    /// The partition key is too long or contains control characters.
    #[error("invalid partition key: use at most {MAX_KEY_LEN} bytes without control characters")]
    PartitionKey,
    /// A header name is not an HTTP token, too long, or reserved.
    #[error(
        "invalid header name `{0}`: use 1 to {MAX_HEADER_NAME_LEN} token characters (A-Z, a-z, 0-9, !#$%&'*+-.^_`|~), not starting with `{RESERVED_HEADER_PREFIX}`"
    )]
    HeaderName(String),
    /// A header value is too long or contains control characters.
    #[error(
        "invalid value of header `{0}`: use at most {MAX_HEADER_VALUE_LEN} bytes without control characters"
    )]
    HeaderValue(String),
    /// The payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The trace context is not a plausible W3C `traceparent`/`tracestate`.
    #[error("invalid trace context: traceparent must be 1 to 512 visible ASCII characters")]
    TraceContext,
}

/// The configurable part of message validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageLimits {
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

impl MessageLimits {
    /// Limits with a payload cap of `max_payload_bytes`.
    pub fn with_max_payload_bytes(max_payload_bytes: usize) -> Self {
        Self { max_payload_bytes }
    }

    /// Checks every rule; the first one broken is the error.
    pub fn check(&self, message: &OutboxMessage) -> Result<(), InvalidMessage> {
        if Identifier::parse("service", &message.service).is_err() {
            return Err(InvalidMessage::Service(message.service.clone()));
        }
        if message.event_type.is_empty()
            || message.event_type.len() > MAX_EVENT_TYPE_LEN
            || has_control(&message.event_type)
        {
            return Err(InvalidMessage::EventType(message.event_type.clone()));
        }
        if TopicName::parse("topic", &message.topic).is_err() {
            return Err(InvalidMessage::Topic(message.topic.clone()));
        }
        if message.partition_key.len() > MAX_KEY_LEN || has_control(&message.partition_key) {
            return Err(InvalidMessage::PartitionKey);
        }
        for (name, value) in &message.headers {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty()
                || name.len() > MAX_HEADER_NAME_LEN
                || !name.bytes().all(token)
                || name
                    .to_ascii_lowercase()
                    .starts_with(RESERVED_HEADER_PREFIX)
            {
                return Err(InvalidMessage::HeaderName(name.clone()));
            }
            if value.len() > MAX_HEADER_VALUE_LEN || has_control(value) {
                return Err(InvalidMessage::HeaderValue(name.clone()));
            }
        }
        if let Some(ctx) = &message.trace_context {
            let visible = |s: &str| {
                !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| b.is_ascii_graphic())
            };
            if !visible(&ctx.traceparent)
                || ctx
                    .tracestate
                    .as_deref()
                    .is_some_and(|s| s.len() > 512 || has_control(s))
            {
                return Err(InvalidMessage::TraceContext);
            }
        }
        let size = message.payload.to_bytes().len();
        if size > self.max_payload_bytes {
            return Err(InvalidMessage::PayloadTooLarge {
                size,
                limit: self.max_payload_bytes,
            });
        }
        Ok(())
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Payload, TraceContext};
    use chrono::Utc;

    fn valid() -> OutboxMessage {
        OutboxMessage::new(
            "orders",
            "order.created",
            "orders.events",
            "order-1",
            Payload::Json(serde_json::json!({"n": 1})),
            Utc::now(),
        )
        .with_header("x-tenant", "acme")
    }

    #[test]
    fn a_well_formed_message_passes() {
        assert_eq!(MessageLimits::default().check(&valid()), Ok(()));
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let limits = MessageLimits::with_max_payload_bytes(16);
        let mut m = valid();
        m.service = "Orders".into();
        assert!(matches!(limits.check(&m), Err(InvalidMessage::Service(_))));
        let mut m = valid();
        m.event_type = String::new();
        assert!(matches!(
            limits.check(&m),
            Err(InvalidMessage::EventType(_))
        ));
        let mut m = valid();
        m.topic = String::new();
        assert!(matches!(limits.check(&m), Err(InvalidMessage::Topic(_))));
        let mut m = valid();
        m.partition_key = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(limits.check(&m), Err(InvalidMessage::PartitionKey));
        let m = valid().with_header("bad name", "v");
        assert!(matches!(
            limits.check(&m),
            Err(InvalidMessage::HeaderName(_))
        ));
        let m = valid().with_header("Outbox-Message-Id", "forged");
        assert!(matches!(
            limits.check(&m),
            Err(InvalidMessage::HeaderName(_))
        ));
        let m = valid().with_header("x-ok", "line\nbreak");
        assert!(matches!(
            limits.check(&m),
            Err(InvalidMessage::HeaderValue(_))
        ));
        let m = valid().with_trace_context(TraceContext {
            traceparent: String::new(),
            tracestate: None,
        });
        assert_eq!(limits.check(&m), Err(InvalidMessage::TraceContext));
        let mut m = valid();
        m.payload = Payload::Bytes {
            content_type: "application/octet-stream".into(),
            data: vec![0; 17],
        };
        assert_eq!(
            limits.check(&m),
            Err(InvalidMessage::PayloadTooLarge {
                size: 17,
                limit: 16
            })
        );
    }
}
