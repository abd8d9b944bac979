//! Runtime behaviour against the in-memory adapters and fault-injecting doubles.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod compensation;
mod consumer;
mod mocks;
mod relay;

use chrono::{DateTime, Utc};
use outbox_domain::{MessageId, OutboxMessage, Payload};
use std::collections::HashMap;

/// A message of `key` whose payload records its sequence number `n` within the key.
fn msg(key: &str, n: usize, now: DateTime<Utc>) -> OutboxMessage {
    OutboxMessage::new(
        "orders",
        "order.changed",
        "orders.events",
        key,
        Payload::Json(serde_json::json!({ "n": n })),
        now,
    )
}

/// Per key, the message ids in the order the broker received them.
fn order_by_key(messages: &[OutboxMessage]) -> HashMap<String, Vec<MessageId>> {
    let mut out: HashMap<String, Vec<MessageId>> = HashMap::new();
    for m in messages {
        out.entry(m.partition_key.clone()).or_default().push(m.id);
    }
    out
}
