//! The consumer runner on a real database: the handler's rows and the inbox record
//! commit together, redeliveries are skipped, and parked messages land in the
//! dead-letter table intact.

use crate::enqueue::on_every_backend;
use crate::{Backend, fresh_db};
use chrono::Utc;
use outbox_domain::{OutboxMessage, Payload};
use outbox_ports::{DeadLetter, DeadLetterSink, HandlerError, IncomingMessage, Publisher, header};
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerRunner};
use outbox_sea_orm::{SeaOrmDeadLetters, SeaOrmInbox};
use outbox_test_support::{InMemoryPublisher, InMemorySource, SqlEffects};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const PER_KEY: i64 = 20;

async fn count(db: &DatabaseConnection, query: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), query))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}

async fn run_until_acknowledged(
    db: &DatabaseConnection,
    source: &InMemorySource,
    handler: Arc<SqlEffects>,
    expected: usize,
) {
    let mut config = ConsumerConfig::new("billing");
    config.handler_backoff = outbox_domain::BackoffPolicy::new(
        Duration::from_millis(5),
        2.0,
        Duration::from_millis(20),
        5,
    )
    .unwrap();
    let runner = ConsumerRunner::new(
        Arc::new(source.clone()),
        Arc::new(SeaOrmInbox::new(db.clone())),
        handler,
        Arc::new(SeaOrmDeadLetters::new(db.clone())),
        config,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(60), async {
        while source.acknowledged() < expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {expected} acknowledged", source.acknowledged()));
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

async fn effects_commit_with_the_inbox_and_failures_are_parked(backend: Backend) {
    let db = fresh_db(backend, "consumer_runner").await;
    SqlEffects::create_table(&db).await.unwrap();
    let broker = InMemoryPublisher::new();
    for n in 0..PER_KEY {
        let batch: Vec<_> = KEYS
            .iter()
            .map(|k| {
                OutboxMessage::new(
                    "orders",
                    "order.changed",
                    "orders.events",
                    *k,
                    Payload::Json(serde_json::json!({ "n": n })),
                    Utc::now(),
                )
            })
            .collect();
        assert!(broker.publish(&batch).await.iter().all(Result::is_ok));
    }
    let total = KEYS.len() * PER_KEY as usize;
    let source = InMemorySource::new(broker, "orders.events", 3);
    let attempts_of_k1_5 = Arc::new(AtomicU64::new(0));
    let attempts = attempts_of_k1_5.clone();
    let handler = Arc::new(SqlEffects::failing(move |key, n| match (key, n) {
        // Recovers on the third attempt.
        ("k1", 5) if attempts.fetch_add(1, Ordering::SeqCst) < 2 => {
            Some(HandlerError::retry("transient downstream failure"))
        }
        ("k2", 7) => Some(HandlerError::reject("cannot apply n = 7")),
        _ => None,
    }));
    run_until_acknowledged(&db, &source, handler.clone(), total).await;

    assert_eq!(handler.order_violations(), 0);
    assert_eq!(attempts_of_k1_5.load(Ordering::SeqCst), 3);
    let committed = total as i64 - 1;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM consumer_effects").await,
        committed
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM outbox_inbox WHERE consumer_group = 'billing'"
        )
        .await,
        committed,
        "one inbox record per effect, none for the parked message"
    );

    // A new owner that lost every committed offset: all redelivered, none applied
    // twice.
    source.forget_acknowledgements();
    run_until_acknowledged(&db, &source, handler.clone(), total).await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM consumer_effects").await,
        committed
    );

    let sink = SeaOrmDeadLetters::new(db.clone());
    let parked = sink.list("billing", 0, 10).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    let letter = &parked[0].letter;
    assert_eq!(letter.message.key.as_deref(), Some("k2"));
    assert_eq!(letter.reason, "cannot apply n = 7");
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.message.topic, "orders.events");
    assert_eq!(
        letter.message_id.map(|id| id.to_string()).as_deref(),
        letter
            .message
            .headers
            .get(header::MESSAGE_ID)
            .map(String::as_str)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&letter.message.payload).unwrap(),
        serde_json::json!({ "n": 7 })
    );
    assert!(letter.message.headers.contains_key(header::EVENT_TYPE));
}

async fn parking_is_idempotent_and_keeps_foreign_messages(backend: Backend) {
    let db = fresh_db(backend, "dead_letters").await;
    let sink = SeaOrmDeadLetters::new(db.clone());
    let foreign = IncomingMessage::new("other.topic", 2, 41, vec![0, 255, 7]);
    let letter = DeadLetter::new("billing", foreign, "not an outbox message", 0, Utc::now());
    sink.park(&letter).await.unwrap();
    sink.park(&letter).await.unwrap();
    let other_group = DeadLetter::new("audit", letter.message.clone(), "x", 0, Utc::now());
    sink.park(&other_group).await.unwrap();

    let parked = sink.list("billing", 0, 10).await.unwrap();
    assert_eq!(parked.len(), 1, "parked once per group");
    assert_eq!(parked[0].letter.message, letter.message);
    assert_eq!(parked[0].letter.message_id, None);
    assert_eq!(
        parked[0].letter.parked_at.timestamp_micros(),
        letter.parked_at.timestamp_micros()
    );
    assert!(
        sink.list("billing", parked[0].seq, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(sink.remove(parked[0].seq).await.unwrap());
    assert!(!sink.remove(parked[0].seq).await.unwrap());
    assert_eq!(sink.list("audit", 0, 10).await.unwrap().len(), 1);
    assert!(
        sink.list("audit", 0, 0).await.is_err(),
        "a zero limit is refused"
    );
}

on_every_backend!(
    effects_commit_with_the_inbox_and_failures_are_parked,
    parking_is_idempotent_and_keeps_foreign_messages
);
