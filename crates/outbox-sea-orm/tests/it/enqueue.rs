//! Enqueue inside the caller's transaction: the messages commit or roll back with the
//! business rows, and a rejected enqueue leaves the transaction usable.

use crate::{Backend, fresh_store};
use chrono::Utc;
use outbox_domain::{MessageLimits, OutboxMessage, Payload};
use outbox_ports::{ListFilter, MessageStore, StoreError};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement, TransactionTrait};

fn message(key: &str) -> OutboxMessage {
    OutboxMessage::new(
        "orders",
        "order.created",
        "orders.events",
        key,
        Payload::Json(serde_json::json!({ "key": key })),
        Utc::now(),
    )
}

async fn business_table(store: &SeaOrmStore) {
    store
        .connection()
        .execute_unprepared("CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY)")
        .await
        .unwrap();
}

async fn insert_order(txn: &DatabaseTransaction, id: &str) {
    let backend = txn.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => "INSERT INTO orders (id) VALUES ($1)",
        _ => "INSERT INTO orders (id) VALUES (?)",
    };
    txn.execute_raw(Statement::from_sql_and_values(backend, sql, [id.into()]))
        .await
        .unwrap();
}

async fn orders(store: &SeaOrmStore) -> i64 {
    let backend = store.connection().get_database_backend();
    let row = store
        .connection()
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n FROM orders",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn outbox_len(store: &SeaOrmStore) -> usize {
    store.list(&ListFilter::all(10_000)).await.unwrap().len()
}

async fn commits_and_rolls_back_with_the_business_rows(backend: Backend) {
    let store = fresh_store(backend, "enqueue_txn", StoreConfig::default()).await;
    business_table(&store).await;

    let txn = store.connection().begin().await.unwrap();
    insert_order(&txn, "o-1").await;
    let ids = store.enqueue_in(&txn, vec![message("o-1")]).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!((orders(&store).await, outbox_len(&store).await), (0, 0));
    assert!(store.get(ids[0]).await.unwrap().is_none());

    let txn = store.connection().begin().await.unwrap();
    insert_order(&txn, "o-2").await;
    let ids = store.enqueue_in(&txn, vec![message("o-2")]).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!((orders(&store).await, outbox_len(&store).await), (1, 1));
    assert!(store.get(ids[0]).await.unwrap().is_some());
}

/// Bad input and duplicate ids fail the enqueue, write no message, and leave the
/// caller's transaction able to commit its business rows.
async fn rejected_enqueue_leaves_the_transaction_usable(backend: Backend) {
    let config = StoreConfig::default().with_limits(MessageLimits::with_max_payload_bytes(64));
    let store = fresh_store(backend, "enqueue_reject", config).await;
    business_table(&store).await;
    let existing = message("o-0");
    store.enqueue(vec![existing.clone()]).await.unwrap();

    let txn = store.connection().begin().await.unwrap();
    insert_order(&txn, "o-1").await;
    let mut too_big = message("o-1");
    too_big.payload = Payload::Json(serde_json::json!({ "blob": "x".repeat(100) }));
    let err = store
        .enqueue_in(&txn, vec![message("o-1"), too_big])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidMessage { .. }), "{err}");
    let mut no_topic = message("o-1");
    no_topic.topic = String::new();
    let err = store.enqueue_in(&txn, vec![no_topic]).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidMessage { .. }), "{err}");
    // A duplicate reaches the database, which writes nothing and keeps the
    // transaction alive.
    let fresh = message("o-1");
    let err = store
        .enqueue_in(&txn, vec![fresh.clone(), existing.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateMessage(id) if id == existing.id),
        "{err}"
    );
    insert_order(&txn, "o-2").await;
    txn.commit().await.unwrap();

    assert_eq!(orders(&store).await, 2);
    assert_eq!(
        outbox_len(&store).await,
        1,
        "only the first, separately enqueued message"
    );
    assert!(store.get(fresh.id).await.unwrap().is_none());
}

/// A bulk enqueue larger than one `INSERT` statement is still all or nothing and in
/// order.
async fn bulk_enqueue_is_atomic_and_ordered(backend: Backend) {
    let store = fresh_store(backend, "enqueue_bulk", StoreConfig::default()).await;
    let batch: Vec<_> = (0..1_200).map(|i| message(&format!("k{i}"))).collect();
    let ids = store.enqueue(batch.clone()).await.unwrap();
    assert_eq!(ids, batch.iter().map(|m| m.id).collect::<Vec<_>>());
    let listed = store.list(&ListFilter::all(5_000)).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.message.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        listed[7].message, batch[7],
        "the envelope round-trips exactly"
    );

    // A duplicate in the last chunk undoes the first chunk too.
    let mut second: Vec<_> = (0..1_100).map(|i| message(&format!("n{i}"))).collect();
    second.push(batch[3].clone());
    let err = store.enqueue(second).await.unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateMessage(id) if id == batch[3].id),
        "{err}"
    );
    assert_eq!(outbox_len(&store).await, 1_200);
}

/// PostgreSQL: an id that another transaction is writing at the same moment waits for
/// it, and once that commits is a duplicate like any stored id: nothing written, the
/// caller's transaction still usable.
#[tokio::test]
async fn a_racing_writer_of_the_same_id_leaves_the_transaction_usable() {
    let store = fresh_store(Backend::Postgres, "enqueue_race", StoreConfig::default()).await;
    business_table(&store).await;
    let shared = message("o-1");
    let first = store.connection().begin().await.unwrap();
    store
        .enqueue_in(&first, vec![shared.clone()])
        .await
        .unwrap();

    let second = store.connection().begin().await.unwrap();
    insert_order(&second, "o-2").await;
    let other = message("o-2");
    let racing = store.enqueue_in(&second, vec![other.clone(), shared.clone()]);
    let commit_first = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        first.commit().await.unwrap();
    };
    let (err, ()) = tokio::join!(racing, commit_first);
    let err = err.unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateMessage(id) if id == shared.id),
        "{err}"
    );
    insert_order(&second, "o-3").await;
    second.commit().await.unwrap();

    assert_eq!(orders(&store).await, 2);
    assert_eq!(
        outbox_len(&store).await,
        1,
        "only the first writer's message"
    );
    assert!(store.get(other.id).await.unwrap().is_none());
}

macro_rules! on_every_backend {
    ($($test:ident),*) => {
        mod postgres { $( #[tokio::test] async fn $test() { super::$test(crate::Backend::Postgres).await } )* }
        mod mysql { $( #[tokio::test] async fn $test() { super::$test(crate::Backend::MySql).await } )* }
        mod sqlite { $( #[tokio::test] async fn $test() { super::$test(crate::Backend::SqliteFile).await } )* }
    };
}
pub(crate) use on_every_backend;

on_every_backend!(
    commits_and_rolls_back_with_the_business_rows,
    rejected_enqueue_leaves_the_transaction_usable,
    bulk_enqueue_is_atomic_and_ordered
);
