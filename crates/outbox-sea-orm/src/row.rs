//! Reading outbox rows back into domain values, and the column lists that go with it.

use crate::dialect::{Dialect, get, req};
use crate::error::decode_error;
use outbox_domain::{
    Delivery, ErrorText, Lease, LeaseToken, MessageId, MessageStatus, OutboxMessage, Payload,
    TraceContext,
};
use outbox_ports::{StoreResult, StoredMessage};
use sea_orm::{QueryResult, Value};
use std::collections::BTreeMap;

/// The delivery-state columns, as read by read-modify-write operations.
pub(crate) const DELIVERY_COLUMNS: &str = "seq, id, status, attempts, max_attempts, \
     next_attempt_at, lease_owner, lease_token, lease_expires_at, last_error, published_at, \
     consumed_at";

/// Every column, as read by claims, `get` and `list`.
pub(crate) const ALL_COLUMNS: &str = "seq, id, status, attempts, max_attempts, \
     next_attempt_at, lease_owner, lease_token, lease_expires_at, last_error, published_at, \
     consumed_at, service, event_type, topic, partition_key, content_type, payload_json, \
     payload_bytes, headers, trace_context, schema_version, occurred_at, created_at";

/// The columns an enqueue writes, in the order [`insert_values`] binds them.
pub(crate) const INSERT_COLUMNS: &str = "id, service, event_type, topic, partition_key, \
     content_type, payload_json, payload_bytes, headers, trace_context, schema_version, \
     occurred_at, created_at, status, attempts, max_attempts, next_attempt_at";

/// The values of one enqueued message, in [`INSERT_COLUMNS`] order.
/// The values of [`INSERT_COLUMNS`](crate::store) for a new row of `m` in
/// `status` (pending, or recorded for an audit record).
pub(crate) fn insert_values(
    d: Dialect,
    m: &OutboxMessage,
    status: MessageStatus,
    max_attempts: u32,
) -> Vec<Value> {
    let (json, bytes) = match &m.payload {
        Payload::Json(v) => (Some(v), None),
        Payload::Bytes { data, .. } => (None, Some(data.clone())),
    };
    let headers = serde_json::to_value(&m.headers).unwrap_or_default();
    let trace = m
        .trace_context
        .as_ref()
        .map(|t| serde_json::to_value(t).unwrap_or_default());
    vec![
        d.uuid(Some(m.id.as_uuid())),
        Value::String(Some(m.service.clone())),
        Value::String(Some(m.event_type.clone())),
        Value::String(Some(m.topic.clone())),
        Value::String(Some(m.partition_key.clone())),
        Value::String(Some(m.payload.content_type().to_owned())),
        d.json(json),
        Value::Bytes(bytes),
        d.json(Some(&headers)),
        d.json(trace.as_ref()),
        Value::BigInt(Some(i64::from(m.schema_version))),
        d.time(Some(m.occurred_at)),
        d.time(Some(m.created_at)),
        Value::String(Some(status.as_str().to_owned())),
        Value::Int(Some(0)),
        Value::Int(Some(i32::try_from(max_attempts).unwrap_or(i32::MAX))),
        d.time(Some(m.created_at)),
    ]
}

/// A row's sequence number and message id.
pub(crate) fn seq_and_id(d: Dialect, row: &QueryResult) -> StoreResult<(i64, MessageId)> {
    let seq = req(get::<i64>(row, "seq"), "seq")?;
    let id = req(d.get_uuid(row, "id"), "id")?;
    Ok((seq, MessageId::from_uuid(id)))
}

/// The delivery state of a row read with [`DELIVERY_COLUMNS`].
pub(crate) fn delivery(d: Dialect, row: &QueryResult) -> StoreResult<Delivery> {
    let status: String = req(get(row, "status"), "status")?;
    let status: MessageStatus = status.parse().map_err(|e| decode_error("status", e))?;
    let count = |col: &str| -> StoreResult<u32> {
        let n = req(get::<i32>(row, col), col)?;
        u32::try_from(n).map_err(|e| decode_error(col, e))
    };
    let mut delivery = Delivery::new(
        count("max_attempts")?,
        req(d.get_time(row, "next_attempt_at"), "next_attempt_at")?,
    );
    delivery.status = status;
    delivery.attempts = count("attempts")?;
    let owner: Option<String> = get(row, "lease_owner")?;
    let token = d.get_uuid(row, "lease_token")?;
    let expires_at = d.get_time(row, "lease_expires_at")?;
    delivery.lease = match (owner, token, expires_at) {
        (Some(owner), Some(token), Some(expires_at)) => Some(Lease {
            owner,
            token: LeaseToken::from_uuid(token),
            expires_at,
        }),
        _ => None,
    };
    delivery.last_error =
        get::<String>(row, "last_error")?.map(|e| ErrorText::with_max_len(e, usize::MAX));
    delivery.published_at = d.get_time(row, "published_at")?;
    delivery.consumed_at = d.get_time(row, "consumed_at")?;
    Ok(delivery)
}

/// A whole row read with [`ALL_COLUMNS`].
pub(crate) fn stored(d: Dialect, row: &QueryResult) -> StoreResult<StoredMessage> {
    let (seq, id) = seq_and_id(d, row)?;
    let text = |col: &str| req(get::<String>(row, col), col);
    let content_type = text("content_type")?;
    let payload = match d.get_json(row, "payload_json")? {
        Some(v) => Payload::Json(v),
        None => Payload::Bytes {
            content_type,
            data: get::<Vec<u8>>(row, "payload_bytes")?.unwrap_or_default(),
        },
    };
    let created_at = req(d.get_time(row, "created_at"), "created_at")?;
    let mut message = OutboxMessage::new(
        text("service")?,
        text("event_type")?,
        text("topic")?,
        text("partition_key")?,
        payload,
        created_at,
    )
    .with_id(id)
    .with_occurred_at(req(d.get_time(row, "occurred_at"), "occurred_at")?);
    let schema_version = req(get::<i64>(row, "schema_version"), "schema_version")?;
    message.schema_version =
        u32::try_from(schema_version).map_err(|e| decode_error("schema_version", e))?;
    if let Some(headers) = d.get_json(row, "headers")? {
        message.headers = serde_json::from_value::<BTreeMap<String, String>>(headers)
            .map_err(|e| decode_error("headers", e))?;
    }
    message.trace_context = d
        .get_json(row, "trace_context")?
        .map(serde_json::from_value::<TraceContext>)
        .transpose()
        .map_err(|e| decode_error("trace_context", e))?;
    let seq = u64::try_from(seq).map_err(|e| decode_error("seq", e))?;
    Ok(StoredMessage::new(seq, message, delivery(d, row)?))
}
