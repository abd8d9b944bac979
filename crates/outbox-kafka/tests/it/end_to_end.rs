//! End to end through real components: 10,000 messages over 50 keys enqueued in
//! PostgreSQL → two relays → the Kafka-protocol broker → the consumer runner → inbox and
//! effects in PostgreSQL. Every message is consumed once, in per-key order, and nothing
//! is left pending.

use crate::{broker, unique_topic};
use chrono::Utc;
use outbox_domain::{BackoffPolicy, OutboxMessage, Payload};
use outbox_kafka::{KafkaPublisher, KafkaSource, Provisioning, TopicSpec, ensure_topics};
use outbox_ports::MessageStore;
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerRunner, Relay, RelayConfig};
use outbox_sea_orm::{SeaOrmDeadLetters, SeaOrmInbox, SeaOrmStore, StoreConfig};
use outbox_test_support::{SqlEffects, fresh_postgres, scalar};
use sea_orm::TransactionTrait;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const KEYS: usize = 50;
const PER_KEY: usize = 200;
const TOTAL: i64 = (KEYS * PER_KEY) as i64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_postgres_through_kafka_into_the_inbox() {
    let db = fresh_postgres("kafka_e2e").await;
    let store = SeaOrmStore::new(db.clone(), StoreConfig::default()).unwrap();
    store.create_tables().await.unwrap();
    SqlEffects::create_table(&db).await.unwrap();
    let kafka = broker();
    let topic = unique_topic("e2e");
    let group = unique_topic("e2e-group");
    ensure_topics(
        &kafka,
        &[TopicSpec::new(&topic).with_partitions(6)],
        Provisioning::CreateMissing,
    )
    .await
    .unwrap();

    // Producer side: each transaction writes a slice of the messages.
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
            })
            .collect();
        store.enqueue_in(&txn, batch).await.unwrap();
        txn.commit().await.unwrap();
    }

    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for i in 0..2 {
        let mut config = RelayConfig::default();
        config.relay_id = format!("e2e-relay-{i}");
        config.batch_size = 250;
        config.poll_interval = Duration::from_millis(20);
        config.backoff =
            BackoffPolicy::new(Duration::from_millis(100), 2.0, Duration::from_secs(2), 20)
                .unwrap();
        let relay = Relay::new(
            Arc::new(store.clone()),
            Arc::new(KafkaPublisher::new(kafka.clone()).unwrap()),
            config,
        )
        .unwrap();
        relays.push(relay.spawn(shutdown.clone()));
    }

    let effects = Arc::new(SqlEffects::default());
    let mut consumer = ConsumerConfig::new(&group);
    consumer.lanes = 6;
    let runner = ConsumerRunner::new(
        Arc::new(KafkaSource::new(&kafka, &group, &[&topic]).unwrap()),
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
    tokio::time::timeout(Duration::from_secs(240), async {
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
            .list(&group, 0, 1)
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
    println!(
        "end to end: {TOTAL} messages in {elapsed:?}; consumer {:?}",
        counters
    );
    assert_eq!(counters.processed.load(Ordering::Relaxed), TOTAL as u64);
}
