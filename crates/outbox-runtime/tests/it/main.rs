//! Runtime behaviour against the in-memory adapters and fault-injecting doubles.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod compensation;
mod consumer;
mod mocks;
mod relay;
mod subscriber;

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

/// Runs `test` on a current-thread runtime with a metrics recorder local to this thread
/// (so parallel tests do not see each other's metrics), handing it the recorder's
/// snapshotter; returns the snapshotter for the final checks.
fn with_debug_recorder<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(metrics_util::debugging::Snapshotter) -> F,
) -> metrics_util::debugging::Snapshotter {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(snapshotter.clone())));
    snapshotter
}
