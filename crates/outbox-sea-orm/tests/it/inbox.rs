//! The consumer's inbox inside the business transaction: exactly-once effects.

use crate::enqueue::on_every_backend;
use crate::{Backend, fresh_db};
use chrono::Utc;
use outbox_domain::MessageId;
use outbox_ports::InboxOutcome;
use outbox_sea_orm::SeaOrmInbox;
use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement, TransactionTrait};

async fn apply_effect(txn: &DatabaseTransaction) {
    txn.execute_unprepared("UPDATE counter SET n = n + 1")
        .await
        .unwrap();
}

async fn counter(db: &sea_orm::DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT n FROM counter",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

/// Redelivered messages are absorbed; an effect rolled back un-records its id, so the
/// redelivery after it runs the effect once.
async fn process_once_absorbs_redeliveries(backend: Backend) {
    let db = fresh_db(backend, "inbox_effect").await;
    db.execute_unprepared("CREATE TABLE counter (n BIGINT NOT NULL)")
        .await
        .unwrap();
    db.execute_unprepared("INSERT INTO counter (n) VALUES (0)")
        .await
        .unwrap();
    let id = MessageId::new_v7(Utc::now());

    // First delivery, but the consumer crashes before commit.
    let txn = db.begin().await.unwrap();
    let outcome = SeaOrmInbox::process_once(&txn, "billing", id, Utc::now())
        .await
        .unwrap();
    assert_eq!(outcome, InboxOutcome::First);
    apply_effect(&txn).await;
    txn.rollback().await.unwrap();

    // Three redeliveries: one effect.
    for expected in [
        InboxOutcome::First,
        InboxOutcome::Duplicate,
        InboxOutcome::Duplicate,
    ] {
        let txn = db.begin().await.unwrap();
        let outcome = SeaOrmInbox::process_once(&txn, "billing", id, Utc::now())
            .await
            .unwrap();
        assert_eq!(outcome, expected);
        if outcome == InboxOutcome::First {
            apply_effect(&txn).await;
        }
        // The duplicate did not break the transaction.
        txn.execute_unprepared("SELECT 1").await.unwrap();
        txn.commit().await.unwrap();
    }
    assert_eq!(counter(&db).await, 1);

    let err = SeaOrmInbox::process_once(&db, "", id, Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, outbox_ports::StoreError::InvalidInput(_)),
        "{err}"
    );
}

on_every_backend!(process_once_absorbs_redeliveries);
