//! The message envelope shared by producers, relays, brokers and consumers.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The identity of one outbox message: a UUID v7, so ids sort roughly by creation
/// time. The same id is the deduplication key end to end: broker headers carry it and
/// the consumer's inbox records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A fresh UUID v7 for the given creation time. The timestamp is a parameter so the
    /// domain never reads the clock itself; the random bits come from the `uuid` crate.
    pub fn new_v7(created_at: DateTime<Utc>) -> Self {
        let secs = u64::try_from(created_at.timestamp()).unwrap_or(0);
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, secs, created_at.timestamp_subsec_nanos());
        Self(Uuid::new_v7(ts))
    }

    /// Wraps an existing UUID (for example one read back from storage or a header).
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The body of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// A JSON document; its content type is `application/json`.
    Json(serde_json::Value),
    /// Opaque bytes with an explicit content type (protobuf, avro, …).
    Bytes {
        /// MIME type of `data`, for example `application/x-protobuf`.
        content_type: String,
        /// The encoded body.
        data: Vec<u8>,
    },
}

impl Payload {
    /// The MIME type that travels with the message.
    pub fn content_type(&self) -> &str {
        match self {
            Payload::Json(_) => "application/json",
            Payload::Bytes { content_type, .. } => content_type,
        }
    }

    /// The body as bytes, as a broker would carry it.
    pub fn to_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            // Serialising a `serde_json::Value` cannot fail.
            Payload::Json(v) => Cow::Owned(serde_json::to_vec(v).unwrap_or_default()),
            Payload::Bytes { data, .. } => Cow::Borrowed(data),
        }
    }

    /// Rebuilds a payload from broker bytes and content type: JSON content that parses
    /// becomes [`Payload::Json`], anything else stays bytes.
    pub fn from_bytes(content_type: &str, data: Vec<u8>) -> Self {
        if content_type == "application/json"
            && let Ok(v) = serde_json::from_slice(&data)
        {
            return Payload::Json(v);
        }
        Payload::Bytes {
            content_type: content_type.to_owned(),
            data,
        }
    }
}

/// W3C trace context captured when the message was written, so the consumer's span
/// can continue the producer's trace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TraceContext {
    /// The `traceparent` header value.
    pub traceparent: String,
    /// The optional `tracestate` header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// One message as written to the outbox and delivered to a broker.
///
/// Build one with [`OutboxMessage::new`] (or through
/// [`RouteRegistry::message`](crate::RouteRegistry::message), which fills in service and
/// topic from the event type) and refine it with the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutboxMessage {
    /// Unique id, also the deduplication key.
    pub id: MessageId,
    /// The service that owns the message (routing and ordering scope).
    pub service: String,
    /// The event type, for example `order.created`.
    pub event_type: String,
    /// Destination topic.
    pub topic: String,
    /// Partition key; messages with the same (service, key) are delivered in order.
    pub partition_key: String,
    /// The body.
    pub payload: Payload,
    /// Free-form headers, delivered as broker headers or properties.
    pub headers: BTreeMap<String, String>,
    /// When the outbox row was created (microsecond precision, like every store).
    pub created_at: DateTime<Utc>,
    /// When the business event happened (defaults to `created_at`).
    pub occurred_at: DateTime<Utc>,
    /// Version of the payload schema, for consumers that evolve.
    pub schema_version: u32,
    /// Trace context of the producing span, if any.
    pub trace_context: Option<TraceContext>,
}

impl OutboxMessage {
    /// A message with a fresh UUID v7 id, schema version 1, no headers and no trace
    /// context, created and occurred at `now`.
    pub fn new(
        service: impl Into<String>,
        event_type: impl Into<String>,
        topic: impl Into<String>,
        partition_key: impl Into<String>,
        payload: Payload,
        now: DateTime<Utc>,
    ) -> Self {
        // Every SQL backend keeps microseconds; so does the envelope, so that a message
        // read back from any store equals the one written.
        let now = now.trunc_subsecs(6);
        Self {
            id: MessageId::new_v7(now),
            service: service.into(),
            event_type: event_type.into(),
            topic: topic.into(),
            partition_key: partition_key.into(),
            payload,
            headers: BTreeMap::new(),
            created_at: now,
            occurred_at: now,
            schema_version: 1,
            trace_context: None,
        }
    }

    /// Replaces the generated id (for example to make a retried API call idempotent).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = id;
        self
    }

    /// Adds one header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets when the business event happened.
    pub fn with_occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.occurred_at = at.trunc_subsecs(6);
        self
    }

    /// Sets the payload schema version.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Attaches the producing span's trace context.
    pub fn with_trace_context(mut self, ctx: TraceContext) -> Self {
        self.trace_context = Some(ctx);
        self
    }

    /// The ordering scope of this message.
    pub fn ordering_key(&self) -> crate::OrderingKey {
        crate::OrderingKey::new(&self.service, &self.partition_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_are_v7_and_sort_by_time() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let a = MessageId::new_v7(t0);
        let b = MessageId::new_v7(t0 + chrono::Duration::milliseconds(5));
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
    }

    #[test]
    fn payload_round_trips_through_bytes() {
        let json = Payload::Json(serde_json::json!({"order": 1}));
        assert_eq!(
            Payload::from_bytes(json.content_type(), json.to_bytes().into_owned()),
            json
        );
        let raw = Payload::Bytes {
            content_type: "application/x-protobuf".into(),
            data: vec![1, 2],
        };
        assert_eq!(
            Payload::from_bytes(raw.content_type(), raw.to_bytes().into_owned()),
            raw
        );
    }
}
