//! End to end through real components: 2,000 messages over 20 keys enqueued in
//! PostgreSQL → two relays → the Pulsar-protocol broker. The official client reads the
//! topic back (every message, with its key and properties, each key in order), and
//! the consumer runner on a Key_Shared subscription writes the inbox and effects in
//! PostgreSQL: every message once, in per-key order, nothing left pending.

use crate::{broker, read_topic, unique_topic};
use chrono::Utc;
use outbox_domain::{BackoffPolicy, OutboxMessage, Payload};
use outbox_ports::{MessageStore, header};
use outbox_pulsar::{PulsarPublisher, PulsarSource, Subscription};
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerRunner, Relay, RelayConfig};
use outbox_sea_orm::{SeaOrmDeadLetters, SeaOrmInbox, SeaOrmStore, StoreConfig};
use outbox_test_support::{SqlEffects, fresh_postgres, scalar};
use sea_orm::TransactionTrait;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const KEYS: usize = 20;
const PER_KEY: usize = 100;
const TOTAL: i64 = (KEYS * PER_KEY) as i64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_messages_from_postgres_through_pulsar_into_the_inbox() {
    let db = fresh_postgres("pulsar_e2e").await;
    let store = SeaOrmStore::new(db.clone(), StoreConfig::default()).unwrap();
    store.create_tables().await.unwrap();
    SqlEffects::create_table(&db).await.unwrap();
    let topic = unique_topic("e2e");

    // Producer side: each transaction writes one message per key.
    let mut ids = HashMap::new();
    for n in 0..PER_KEY {
        let txn = db.begin().await.unwrap();
        let batch: Vec<_> = (0..KEYS)
            .map(|k| {
                OutboxMessage::new(
                    "orders",
                    "order.changed",
                    &topic,
                    format!("order-{k}"),
                    Payload::Json(serde_json::json!({ "n": n })),
                    Utc::now(),
                )
                .with_header("tenant", format!("t{}", k % 3))
            })
            .collect();
        for m in &batch {
            ids.insert(m.id.to_string(), m.clone());
        }
        store.enqueue_in(&txn, batch).await.unwrap();
        txn.commit().await.unwrap();
    }

    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for i in 0..2 {
        let mut config = RelayConfig::default();
        config.relay_id = format!("e2e-relay-{i}");
        config.batch_size = 100;
        config.poll_interval = Duration::from_millis(20);
        config.backoff =
            BackoffPolicy::new(Duration::from_millis(100), 2.0, Duration::from_secs(2), 20)
                .unwrap();
        let relay = Relay::new(
            Arc::new(store.clone()),
            Arc::new(PulsarPublisher::new(broker()).unwrap()),
            config,
        )
        .unwrap();
        relays.push(relay.spawn(shutdown.clone()));
    }

    let effects = Arc::new(SqlEffects::default());
    let mut consumer = ConsumerConfig::new("e2e-group");
    consumer.lanes = 6;
    let source = PulsarSource::subscribe(broker(), &topic, "e2e-group", Subscription::KeyShared)
        .await
        .unwrap();
    let runner = ConsumerRunner::new(
        Arc::new(source),
        Arc::new(SeaOrmInbox::new(db.clone())),
        effects.clone(),
        Arc::new(SeaOrmDeadLetters::new(db.clone())),
        consumer,
    )
    .unwrap();
    let counters = runner.counters();
    let consumer_stop = CancellationToken::new();
    let consumer_task = tokio::spawn(runner.run(consumer_stop.clone()));

    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(180), async {
        while scalar(&db, "SELECT COUNT(*) FROM consumer_effects").await < TOTAL {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not all consumed: {counters:?}"));
    let elapsed = started.elapsed();
    consumer_stop.cancel();
    consumer_task.await.unwrap().unwrap();
    for relay in relays {
        assert!(relay.shutdown().await);
    }

    // What the broker holds, read by the official client: every message once (no
    // publish failed, so none was sent twice), with its key and properties, each key
    // in order.
    let read = read_topic(&topic, KEYS * PER_KEY, Duration::from_secs(60)).await;
    assert_eq!(read.len(), KEYS * PER_KEY);
    let mut last_n: HashMap<String, i64> = HashMap::new();
    for m in &read {
        let sent = ids
            .remove(&m.headers[header::MESSAGE_ID])
            .unwrap_or_else(|| panic!("stored twice, or never enqueued: {:?}", m.headers));
        assert_eq!(m.key.as_deref(), Some(sent.partition_key.as_str()));
        assert_eq!(m.headers["tenant"], sent.headers["tenant"]);
        assert_eq!(m.headers[header::EVENT_TYPE], "order.changed");
        assert_eq!(m.headers[header::SERVICE], "orders");
        assert_eq!(m.headers[header::CONTENT_TYPE], "application/json");
        let n = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["n"]
            .as_i64()
            .unwrap();
        let previous = last_n.insert(sent.partition_key.clone(), n);
        assert!(
            previous.is_none_or(|p| p < n),
            "key {}: {n} after {previous:?}",
            sent.partition_key
        );
    }
    assert!(ids.is_empty(), "{} messages never arrived", ids.len());

    assert_eq!(effects.order_violations(), 0, "per-key order");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(DISTINCT message_id) FROM consumer_effects"
        )
        .await,
        TOTAL
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM outbox_inbox").await,
        TOTAL,
        "one inbox record per message"
    );
    assert!(
        SeaOrmDeadLetters::new(db.clone())
            .list("e2e-group", 0, 1)
            .await
            .unwrap()
            .is_empty()
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.retrying, stats.in_flight, stats.dead),
        (0, 0, 0, 0),
        "nothing left pending: {stats:?}"
    );
    assert_eq!(stats.published, TOTAL as u64);
    println!("end to end: {TOTAL} messages in {elapsed:?}; consumer {counters:?}");
    assert_eq!(counters.processed.load(Ordering::Relaxed), TOTAL as u64);
}
