//! Concurrency against real PostgreSQL and MariaDB: relays on several "hosts" (each
//! with its own connection pool) racing over one outbox, and writers whose
//! transactions commit out of order or roll back while the relays run.

use crate::{Backend, fresh_db_url};
use chrono::Utc;
use outbox_domain::{MessageId, OutboxMessage, Payload};
use outbox_ports::{MessageStore, Publisher};
use outbox_runtime::{Relay, RelayConfig, RelayHandle};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use outbox_test_support::InMemoryPublisher;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sea_orm::TransactionTrait;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A store with a connection pool of its own, as a relay on another host would have.
/// SQLite is embedded: one process, one pool (of one connection) shared by all.
async fn host(url: &str) -> SeaOrmStore {
    static SQLITE: tokio::sync::OnceCell<SeaOrmStore> = tokio::sync::OnceCell::const_new();
    let open = || async {
        let db = outbox_sea_orm::connect(url).await.unwrap();
        SeaOrmStore::new(db, StoreConfig::default()).unwrap()
    };
    if url.starts_with("sqlite:") {
        return SQLITE.get_or_init(open).await.clone();
    }
    open().await
}

fn start_relays(
    stores: &[SeaOrmStore],
    broker: &InMemoryPublisher,
    shutdown: &CancellationToken,
) -> Vec<RelayHandle> {
    stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let mut config = RelayConfig::default();
            config.relay_id = format!("host-{i}");
            config.poll_interval = Duration::from_millis(20);
            let store: Arc<dyn MessageStore> = Arc::new(store.clone());
            let publisher: Arc<dyn Publisher> = Arc::new(broker.clone());
            Relay::new(store, publisher, config)
                .unwrap()
                .spawn(shutdown.child_token())
        })
        .collect()
}

async fn wait_for_published(broker: &InMemoryPublisher, count: usize, limit: Duration) {
    let start = Instant::now();
    while broker.len() < count {
        assert!(
            start.elapsed() < limit,
            "only {} of {count} messages published after {limit:?}",
            broker.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per key, the published order must be the order given by `expected`.
fn assert_per_key_order(published: &[OutboxMessage], expected: &HashMap<String, Vec<MessageId>>) {
    let mut seen: HashMap<&str, Vec<MessageId>> = HashMap::new();
    for m in published {
        seen.entry(&m.partition_key).or_default().push(m.id);
    }
    for (key, ids) in expected {
        assert_eq!(
            seen.get(key.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default(),
            ids.as_slice(),
            "order of key {key}"
        );
    }
}

/// 4 relays on 4 pools race over 20 000 messages of 500 keys: every message is
/// published exactly once (no faults are injected, so no redelivery is allowed), and
/// each key's messages in write order.
async fn racing_relays_publish_each_message_once(backend: Backend) {
    const MESSAGES: usize = 20_000;
    const KEYS: usize = 500;
    let url = fresh_db_url(backend, "racing_relays").await;
    let writer = host(&url).await;
    let now = Utc::now();
    let mut expected: HashMap<String, Vec<MessageId>> = HashMap::new();
    let batch: Vec<OutboxMessage> = (0..MESSAGES)
        .map(|i| {
            let key = format!("key-{}", i % KEYS);
            let m = OutboxMessage::new(
                "orders",
                "order.changed",
                "orders.events",
                key.clone(),
                Payload::Json(serde_json::json!({ "n": i })),
                now,
            );
            expected.entry(key).or_default().push(m.id);
            m
        })
        .collect();
    for chunk in batch.chunks(2_000) {
        writer.enqueue(chunk.to_vec()).await.unwrap();
    }

    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(host(&url).await);
    }
    let broker = InMemoryPublisher::new();
    let shutdown = CancellationToken::new();
    let relays = start_relays(&stores, &broker, &shutdown);
    wait_for_published(&broker, MESSAGES, Duration::from_secs(240)).await;
    shutdown.cancel();
    let mut lease_lost = 0;
    for relay in relays {
        lease_lost += relay
            .counters()
            .lease_lost
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(relay.shutdown().await, "relay drained in time");
    }

    let published = broker.messages();
    assert_eq!(published.len(), MESSAGES, "no message published twice");
    let distinct: HashSet<MessageId> = published.iter().map(|m| m.id).collect();
    assert_eq!(distinct.len(), MESSAGES);
    assert_eq!(lease_lost, 0);
    assert_per_key_order(&published, &expected);
    let stats = writer.stats().await.unwrap();
    assert_eq!((stats.published, stats.unfinished()), (MESSAGES as u64, 0));
}

/// 16 writers hold their transactions open for random times, so transactions commit in
/// an order unrelated to their ids and sequence numbers, and roll back one in five,
/// while 2 relays run. Every committed message is delivered; no rolled-back one is.
async fn out_of_order_commits_lose_nothing(backend: Backend) {
    const WRITERS: u64 = 16;
    const TXNS_PER_WRITER: usize = 25;
    let url = fresh_db_url(backend, "out_of_order").await;
    let mut stores = Vec::new();
    for _ in 0..2 {
        stores.push(host(&url).await);
    }
    let broker = InMemoryPublisher::new();
    let shutdown = CancellationToken::new();
    let relays = start_relays(&stores, &broker, &shutdown);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = host(&url).await;
        writers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(w);
            let key = format!("writer-{w}");
            let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
            for n in 0..TXNS_PER_WRITER {
                let txn = store.connection().begin().await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
                let messages: Vec<_> = (0..rng.random_range(1..4))
                    .map(|i| {
                        OutboxMessage::new(
                            "orders",
                            "order.changed",
                            "orders.events",
                            key.clone(),
                            Payload::Json(serde_json::json!({ "writer": w, "txn": n, "i": i })),
                            Utc::now(),
                        )
                    })
                    .collect();
                let ids = store.enqueue_in(&txn, messages).await.unwrap();
                // The row exists but is invisible until commit; relays poll meanwhile.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
                if rng.random_bool(0.2) {
                    txn.rollback().await.unwrap();
                    rolled_back.extend(ids);
                } else {
                    txn.commit().await.unwrap();
                    committed.extend(ids);
                }
            }
            (key, committed, rolled_back)
        }));
    }
    let mut expected = HashMap::new();
    let mut rolled_back = HashSet::new();
    let mut total = 0;
    for writer in writers {
        let (key, committed, lost) = writer.await.unwrap();
        total += committed.len();
        rolled_back.extend(lost);
        expected.insert(key, committed);
    }
    assert!(!rolled_back.is_empty() && total > 0);

    wait_for_published(&broker, total, Duration::from_secs(120)).await;
    // Give a wrongly delivered rolled-back message the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    for relay in relays {
        relay.shutdown().await;
    }
    let published = broker.messages();
    assert_eq!(published.len(), total, "every committed message, once");
    assert!(published.iter().all(|m| !rolled_back.contains(&m.id)));
    assert_per_key_order(&published, &expected);
}

/// Keys written by streams of small transactions (5 messages of one key each) while
/// relays claim, with a
/// large parked key making each claim scan long: rows that commit *during* a claim's scan
/// must not be handed out ahead of earlier rows of their key. (On MySQL/MariaDB a
/// locking read sees rows committed after the statement's snapshot, which its `NOT
/// EXISTS` probe does not; the claim re-checks its candidates to close that gap.)
async fn rows_committed_during_a_claim_keep_their_key_order(backend: Backend) {
    const WRITERS: u64 = 8;
    const PER_WRITER: usize = 200;
    let url = fresh_db_url(backend, "commit_during_claim").await;
    let setup = host(&url).await;
    // A parked key: its head failed and waits an hour; its 3 000 followers are pending
    // but blocked, so every claim wades through them.
    let now = Utc::now();
    let parked: Vec<_> = (0..3_000)
        .map(|i| {
            OutboxMessage::new(
                "orders",
                "order.changed",
                "orders.events",
                "parked",
                Payload::Json(serde_json::json!({ "n": i })),
                now,
            )
        })
        .collect();
    for chunk in parked.chunks(2_000) {
        setup.enqueue(chunk.to_vec()).await.unwrap();
    }
    let request = outbox_ports::ClaimRequest {
        owner: "parker".into(),
        limit: 1,
        lease_for: Duration::from_secs(30),
        now: Utc::now(),
    };
    let head = setup.claim(&request).await.unwrap().remove(0);
    setup
        .settle(
            vec![outbox_ports::Settlement {
                id: head.message.id,
                token: head.lease.token,
                disposition: outbox_ports::Disposition::Retry {
                    error: outbox_domain::ErrorText::new("parked on purpose"),
                    at: Utc::now() + chrono::Duration::hours(1),
                },
            }],
            Utc::now(),
        )
        .await
        .unwrap();

    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(host(&url).await);
    }
    let broker = InMemoryPublisher::new();
    let shutdown = CancellationToken::new();
    let relays = start_relays(&stores, &broker, &shutdown);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = host(&url).await;
        writers.push(tokio::spawn(async move {
            let key = format!("stream-{w}");
            let mut ids = Vec::new();
            for n in 0..PER_WRITER / 5 {
                let batch: Vec<_> = (0..5)
                    .map(|i| {
                        OutboxMessage::new(
                            "orders",
                            "order.changed",
                            "orders.events",
                            key.clone(),
                            Payload::Json(serde_json::json!({ "n": n, "i": i })),
                            Utc::now(),
                        )
                    })
                    .collect();
                ids.extend(store.enqueue(batch).await.unwrap());
            }
            (key, ids)
        }));
    }
    let mut expected = HashMap::new();
    for writer in writers {
        let (key, ids) = writer.await.unwrap();
        expected.insert(key, ids);
    }
    let total = (WRITERS as usize) * PER_WRITER;
    wait_for_published(&broker, total, Duration::from_secs(120)).await;
    shutdown.cancel();
    for relay in relays {
        relay.shutdown().await;
    }
    let published = broker.messages();
    assert_eq!(published.len(), total, "the parked key published nothing");
    assert_per_key_order(&published, &expected);
}

mod postgres {
    use crate::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rows_committed_during_a_claim_keep_their_key_order() {
        super::rows_committed_during_a_claim_keep_their_key_order(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_relays_publish_each_message_once() {
        super::racing_relays_publish_each_message_once(Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn out_of_order_commits_lose_nothing() {
        super::out_of_order_commits_lose_nothing(Backend::Postgres).await;
    }
}

mod mysql {
    use crate::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rows_committed_during_a_claim_keep_their_key_order() {
        super::rows_committed_during_a_claim_keep_their_key_order(Backend::MySql).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_relays_publish_each_message_once() {
        super::racing_relays_publish_each_message_once(Backend::MySql).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn out_of_order_commits_lose_nothing() {
        super::out_of_order_commits_lose_nothing(Backend::MySql).await;
    }
}

mod sqlite {
    use crate::Backend;

    /// SQLite has one writer at a time; the same races must still be safe.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn out_of_order_commits_lose_nothing() {
        super::out_of_order_commits_lose_nothing(Backend::SqliteFile).await;
    }
}
