//! The publisher conformance suite against the test broker, read back with the
//! official client.

use crate::{PythonReader, broker, unique_topic};
use outbox_pulsar::PulsarPublisher;

outbox_test_support::publisher_conformance_tests!(|case: &'static str| async move {
    (
        PulsarPublisher::new(broker()).unwrap(),
        PythonReader,
        unique_topic(case),
    )
});

/// With the defaults, a publish call ends (with an outcome per message) before the
/// relay's own publish timeout would fail the batch as a whole.
#[test]
fn default_publish_time_fits_the_relays_publish_timeout() {
    let config = outbox_pulsar::PulsarConfig::new("pulsar://127.0.0.1:1").unwrap();
    let publisher = PulsarPublisher::new(config).unwrap();
    let relay = outbox_runtime::RelayConfig::default();
    assert!(
        publisher.max_publish_time() < relay.publish_timeout,
        "{:?} >= {:?}",
        publisher.max_publish_time(),
        relay.publish_timeout
    );
}

/// `Deduplication::PerKey` against the real broker: a producer per key, created and
/// closed per message, with the outbox position as sequence id. (pulsar-lite does not
/// deduplicate, so what that buys is tested on the scripted broker in the unit tests;
/// here: every message arrives once, each key in order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_sequence_ids_through_the_relay() {
    use outbox_domain::{OutboxMessage, Payload};
    use outbox_ports::{MessageStore, header};
    use outbox_pulsar::Deduplication;
    use outbox_runtime::{Relay, RelayConfig};
    use std::sync::Arc;

    const KEYS: usize = 10;
    const PER_KEY: usize = 10;
    let topic = unique_topic("per-key");
    let store = outbox_test_support::InMemoryStore::new();
    for n in 0..PER_KEY {
        let batch: Vec<_> = (0..KEYS)
            .map(|k| {
                OutboxMessage::new(
                    "orders",
                    "order.changed",
                    &topic,
                    format!("k{k}"),
                    Payload::Json(serde_json::json!({ "n": n })),
                    chrono::Utc::now(),
                )
            })
            .collect();
        store.enqueue(batch).await.unwrap();
    }
    let mut config = broker();
    config.deduplication = Deduplication::PerKey {
        prefix: "test".into(),
    };
    let relay = Relay::new(
        Arc::new(store.clone()),
        Arc::new(PulsarPublisher::new(config).unwrap()),
        RelayConfig::default(),
    )
    .unwrap();
    let mut published = 0;
    while published < KEYS * PER_KEY {
        let report = relay.run_once().await.unwrap();
        assert_eq!(report.retried + report.dead, 0, "{report:?}");
        published += report.published;
    }
    let read = crate::read_topic(&topic, KEYS * PER_KEY, std::time::Duration::from_secs(30)).await;
    assert_eq!(read.len(), KEYS * PER_KEY);
    let mut last = std::collections::HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for m in &read {
        assert!(
            ids.insert(m.headers[header::MESSAGE_ID].clone()),
            "stored once"
        );
        let n = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["n"]
            .as_i64()
            .unwrap();
        let previous = last.insert(m.key.clone().unwrap(), n);
        assert!(
            previous.is_none_or(|p| p < n),
            "{:?}: {n} after {previous:?}",
            m.key
        );
    }
}
