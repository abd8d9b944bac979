//! The [`Publisher`] contract. Run it with
//! [`publisher_conformance_tests!`](crate::publisher_conformance_tests).

use super::{PublishedReader, ReceivedMessage};
use chrono::Utc;
use outbox_domain::{OutboxMessage, Payload, TraceContext};
use outbox_ports::{Publisher, header};
use std::collections::HashMap;
use std::time::Duration;

const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn message(topic: &str, key: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new(
        "conformance",
        "conformance.happened",
        topic,
        key,
        Payload::Json(serde_json::json!({ "n": n })),
        Utc::now(),
    )
}

async fn publish_all<P: Publisher + ?Sized>(publisher: &P, batch: &[OutboxMessage]) {
    let outcomes = publisher.publish(batch).await;
    assert_eq!(outcomes.len(), batch.len(), "one outcome per message");
    for (m, o) in batch.iter().zip(outcomes) {
        assert!(o.is_ok(), "message {} failed: {:?}", m.id, o);
    }
}

/// Key, envelope headers, user headers, trace context and payload arrive unchanged.
pub async fn round_trip_keeps_key_headers_and_payload<P, R>(publisher: &P, reader: &R, topic: &str)
where
    P: Publisher + ?Sized,
    R: PublishedReader + ?Sized,
{
    let json = message(topic, "order-1", 1)
        .with_header("x-tenant", "acme")
        .with_schema_version(3)
        .with_trace_context(TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: Some("vendor=1".into()),
        });
    let bytes = OutboxMessage::new(
        "conformance",
        "conformance.binary",
        topic,
        "order-2",
        Payload::Bytes {
            content_type: "application/x-protobuf".into(),
            data: vec![0, 159, 146, 150, 255],
        },
        Utc::now(),
    );
    publish_all(publisher, &[json.clone(), bytes.clone()]).await;

    let got = reader.read(topic, 2, READ_TIMEOUT).await;
    assert_eq!(got.len(), 2, "both messages arrive: {got:?}");
    for expected in [&json, &bytes] {
        let want = ReceivedMessage::from_message(expected);
        let id = expected.id.to_string();
        let received = got
            .iter()
            .find(|r| r.headers.get(header::MESSAGE_ID) == Some(&id))
            .unwrap_or_else(|| panic!("message {id} not received with its id header"));
        assert_eq!(
            received.key, want.key,
            "partition key becomes the broker key"
        );
        assert_eq!(received.payload, want.payload);
        for (name, value) in &want.headers {
            assert_eq!(received.headers.get(name), Some(value), "header {name}");
        }
    }
}

/// A batch gets exactly one outcome per message, all successes on a healthy broker.
pub async fn one_outcome_per_message_in_order<P, R>(publisher: &P, reader: &R, topic: &str)
where
    P: Publisher + ?Sized,
    R: PublishedReader + ?Sized,
{
    let batch: Vec<_> = (0..50)
        .map(|n| message(topic, &format!("k{n}"), n))
        .collect();
    publish_all(publisher, &batch).await;
    assert_eq!(reader.read(topic, 50, READ_TIMEOUT).await.len(), 50);
}

/// Messages of one key published in successive batches arrive in that order.
pub async fn per_key_order_across_batches<P, R>(publisher: &P, reader: &R, topic: &str)
where
    P: Publisher + ?Sized,
    R: PublishedReader + ?Sized,
{
    const KEYS: usize = 8;
    const ROUNDS: usize = 6;
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..ROUNDS {
        let batch: Vec<_> = (0..KEYS)
            .map(|k| message(topic, &format!("key-{k}"), round))
            .collect();
        for m in &batch {
            expected
                .entry(m.partition_key.clone())
                .or_default()
                .push(m.id.to_string());
        }
        publish_all(publisher, &batch).await;
    }
    let got = reader.read(topic, KEYS * ROUNDS, READ_TIMEOUT).await;
    assert_eq!(got.len(), KEYS * ROUNDS);
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for r in got {
        let key = r.key.clone().unwrap_or_default();
        seen.entry(key).or_default().push(
            r.headers
                .get(header::MESSAGE_ID)
                .cloned()
                .unwrap_or_default(),
        );
    }
    assert_eq!(seen, expected, "per-key order");
}

/// An empty batch is a no-op with no outcomes.
pub async fn empty_batch<P, R>(publisher: &P, _reader: &R, _topic: &str)
where
    P: Publisher + ?Sized,
    R: PublishedReader + ?Sized,
{
    assert!(publisher.publish(&[]).await.is_empty());
    publisher
        .flush(Duration::from_secs(5))
        .await
        .expect("flush");
}
