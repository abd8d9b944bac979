//! The migrations apply, report their status, roll back and re-apply on every backend,
//! and touch only the outbox tables.

use crate::enqueue::on_every_backend;
use crate::{Backend, fresh_db};
use outbox_migrations::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;
use sea_orm_migration::MigrationStatus;

async fn up_status_down_fresh(backend: Backend) {
    // `fresh_db` has applied the migrations already.
    let db = fresh_db(backend, "migrate").await;
    db.execute_unprepared("CREATE TABLE app_rows (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let status = Migrator::get_migration_with_status(&db).await.unwrap();
    assert!(!status.is_empty());
    assert!(
        status
            .iter()
            .all(|m| m.status() == MigrationStatus::Applied)
    );

    Migrator::up(&db, None).await.unwrap(); // idempotent
    Migrator::down(&db, None).await.unwrap();
    let status = Migrator::get_migration_with_status(&db).await.unwrap();
    assert!(
        status
            .iter()
            .all(|m| m.status() == MigrationStatus::Pending)
    );
    assert!(
        db.execute_unprepared("SELECT 1 FROM outbox_messages")
            .await
            .is_err(),
        "down drops the outbox table"
    );
    Migrator::up(&db, None).await.unwrap();
    db.execute_unprepared("SELECT 1 FROM outbox_messages")
        .await
        .unwrap();
    db.execute_unprepared("SELECT 1 FROM app_rows")
        .await
        .expect("the application's own table survives");
}

/// The definition of `outbox_messages_lease` (`None` on MySQL, whose indexes are part
/// of the table's definition).
async fn lease_index(db: &sea_orm::DatabaseConnection, backend: Backend) -> Option<String> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT indexdef AS def FROM pg_indexes WHERE indexname = 'outbox_messages_lease'"
        }
        Backend::MySql => return None,
        _ => "SELECT sql AS def FROM sqlite_master WHERE name = 'outbox_messages_lease'",
    };
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .unwrap()
        .expect("the lease index exists");
    Some(row.try_get("", "def").unwrap())
}

/// Migration 5 gives the lease index a predicate the claim's in-flight probe does not
/// imply; rolled back, it is the index of before, and `prepare_outbox_table` (what
/// per-service tables get) upgrades that too.
async fn the_lease_index_is_upgraded_to_its_own_predicate(backend: Backend) {
    let db = fresh_db(backend, "migrate_lease").await;
    let upgraded = |def: Option<String>| {
        def.is_none_or(|d| d.contains("lease_expires_at IS NOT NULL") && !d.contains("status"))
    };
    assert!(upgraded(lease_index(&db, backend).await), "a fresh schema");

    // Migrations 7, 6 and 5.
    Migrator::down(&db, Some(3)).await.unwrap();
    let before = lease_index(&db, backend).await;
    assert!(
        before.is_none() || !upgraded(before.clone()),
        "rolled back: {before:?}"
    );
    Migrator::up(&db, None).await.unwrap();
    assert!(upgraded(lease_index(&db, backend).await), "migration 5");

    Migrator::down(&db, Some(3)).await.unwrap();
    outbox_migrations::prepare_outbox_table(&db, "outbox_messages")
        .await
        .unwrap();
    assert!(
        upgraded(lease_index(&db, backend).await),
        "prepare_outbox_table"
    );
    outbox_migrations::prepare_outbox_table(&db, "outbox_messages")
        .await
        .expect("idempotent");
}

/// Whether the outbox table has `outbox_messages_finished`.
async fn has_finished_index(db: &sea_orm::DatabaseConnection, backend: Backend) -> bool {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT indexname FROM pg_indexes WHERE indexname = 'outbox_messages_finished'"
        }
        Backend::MySql => {
            "SELECT index_name FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND table_name = 'outbox_messages' \
             AND index_name = 'outbox_messages_finished'"
        }
        _ => "SELECT name FROM sqlite_master WHERE name = 'outbox_messages_finished'",
    };
    db.query_one_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        sql,
    ))
    .await
    .unwrap()
    .is_some()
}

/// Migration 7 adds the index retention reads by; rolled back, it is gone, and
/// `prepare_outbox_table` (what per-service tables get) adds it too.
async fn the_finished_index_is_added_to_existing_tables(backend: Backend) {
    let db = fresh_db(backend, "migrate_finished").await;
    assert!(has_finished_index(&db, backend).await, "a fresh schema");
    Migrator::down(&db, Some(1)).await.unwrap();
    assert!(!has_finished_index(&db, backend).await, "rolled back");
    Migrator::up(&db, None).await.unwrap();
    assert!(has_finished_index(&db, backend).await, "migration 7");

    Migrator::down(&db, Some(1)).await.unwrap();
    outbox_migrations::prepare_outbox_table(&db, "outbox_messages")
        .await
        .unwrap();
    assert!(
        has_finished_index(&db, backend).await,
        "prepare_outbox_table"
    );
    outbox_migrations::prepare_outbox_table(&db, "outbox_messages")
        .await
        .expect("idempotent");
}

on_every_backend!(
    up_status_down_fresh,
    the_lease_index_is_upgraded_to_its_own_predicate,
    the_finished_index_is_added_to_existing_tables
);

/// The columns of `outbox_messages_key_unfinished` on MySQL/MariaDB, in index order.
async fn key_unfinished_columns(db: &sea_orm::DatabaseConnection) -> String {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT GROUP_CONCAT(column_name ORDER BY seq_in_index) AS cols \
             FROM information_schema.statistics WHERE table_schema = DATABASE() \
             AND table_name = 'outbox_messages' \
             AND index_name = 'outbox_messages_key_unfinished'",
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "cols").unwrap()
}

/// Migration 6 puts the status first in MySQL's per-key index; rolled back, it is the
/// index of before, and `prepare_outbox_table` upgrades that too.
#[tokio::test]
async fn on_mysql_the_key_unfinished_index_is_upgraded_to_lead_with_the_status() {
    const UPGRADED: &str = "status,service,partition_key,seq";
    let db = fresh_db(Backend::MySql, "migrate_key_unfinished").await;
    assert_eq!(
        key_unfinished_columns(&db).await,
        UPGRADED,
        "a fresh schema"
    );
    Migrator::down(&db, Some(2)).await.unwrap();
    assert_eq!(
        key_unfinished_columns(&db).await,
        "service,partition_key,status,seq",
        "rolled back"
    );
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(
        key_unfinished_columns(&db).await,
        UPGRADED,
        "migrations 6 and 7"
    );

    Migrator::down(&db, Some(2)).await.unwrap();
    outbox_migrations::prepare_outbox_table(&db, "outbox_messages")
        .await
        .unwrap();
    assert_eq!(
        key_unfinished_columns(&db).await,
        UPGRADED,
        "prepare_outbox_table"
    );
    outbox_migrations::prepare_outbox_table(&db, "outbox_messages")
        .await
        .expect("idempotent");
}
