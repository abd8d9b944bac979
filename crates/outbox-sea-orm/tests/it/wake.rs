//! The fast path on real PostgreSQL: a commit wakes the relay in the same process at
//! once, and a relay in another process (another pool) through a coalesced `NOTIFY`;
//! relays poll only hourly here, so a delivery within seconds shows the wake worked.

use crate::{Backend, fresh_db_url, order_message, store_at};
use outbox_domain::Identifier;
use outbox_runtime::{CancellationToken, Relay, RelayConfig, RelayHandle};
use outbox_sea_orm::{PgNotifier, PgWakeListener, SeaOrmStore, StoreConfig};
use outbox_test_support::InMemoryPublisher;
use sea_orm::TransactionTrait;
use std::sync::Arc;
use std::time::Duration;

/// A relay that polls only hourly once idle, and waits until it is.
async fn sleepy_relay(store: &SeaOrmStore, broker: &InMemoryPublisher) -> RelayHandle {
    let mut config = RelayConfig::default();
    config.poll_interval = Duration::from_secs(3600);
    config.min_poll_interval = Duration::from_secs(3600);
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(broker.clone()), config).unwrap();
    let handle = relay.spawn(CancellationToken::new());
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_in_this_process() {
    let url = fresh_db_url(Backend::Postgres, "wake_local").await;
    let broker = InMemoryPublisher::new();
    let relay_store = store_at(&url).await;
    let relay = sleepy_relay(&relay_store, &broker).await;
    let writer = store_at(&url).await.with_waker(Arc::new(relay.waker()));

    let txn = writer.connection().begin().await.unwrap();
    writer
        .enqueue_in(&txn, vec![order_message("k0", 0)])
        .await
        .unwrap();
    writer.commit(txn).await.unwrap();
    assert_eq!(
        broker.read_from(0, 10, Duration::from_secs(10)).await.len(),
        1,
        "delivered at once, not after the hour-long poll"
    );

    // The control: committed without `commit`, nothing wakes the (idle again) relay.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let txn = writer.connection().begin().await.unwrap();
    writer
        .enqueue_in(&txn, vec![order_message("k1", 1)])
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert!(
        broker
            .read_from(1, 10, Duration::from_millis(500))
            .await
            .is_empty(),
        "without a wake it waits for the poll"
    );
    assert!(relay.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_wakes_a_relay_in_another_process_and_is_coalesced() {
    let url = fresh_db_url(Backend::Postgres, "wake_remote").await;
    let table = Identifier::parse("table", "outbox_messages").unwrap();
    let broker = InMemoryPublisher::new();
    // "Another process": its own pool, woken only by LISTEN.
    let relay_store = store_at(&url).await;
    let relay = sleepy_relay(&relay_store, &broker).await;
    let _listener =
        PgWakeListener::spawn(relay_store.connection(), &table, Arc::new(relay.waker()))
            .await
            .unwrap();

    let writer_db = outbox_sea_orm::connect(&url).await.unwrap();
    let window = Duration::from_millis(100);
    let notifier = Arc::new(PgNotifier::spawn(writer_db.clone(), &table, window));
    let writer = SeaOrmStore::new(writer_db, StoreConfig::default())
        .unwrap()
        .with_waker(notifier.clone());

    let started = std::time::Instant::now();
    const COMMITS: usize = 200;
    for n in 0..COMMITS {
        let txn = writer.connection().begin().await.unwrap();
        writer
            .enqueue_in(&txn, vec![order_message(&format!("k{}", n % 5), n)])
            .await
            .unwrap();
        writer.commit(txn).await.unwrap();
    }
    let elapsed = started.elapsed();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broker.messages().len() < COMMITS && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        broker.messages().len(),
        COMMITS,
        "every message, without waiting for the poll"
    );
    let windows = elapsed.as_millis() / window.as_millis() + 2;
    assert!(
        notifier.sent() >= 1 && u128::from(notifier.sent()) <= windows,
        "{} NOTIFYs for {COMMITS} commits in {elapsed:?}: at most one per {window:?}",
        notifier.sent()
    );
    assert!(relay.shutdown().await);
}
