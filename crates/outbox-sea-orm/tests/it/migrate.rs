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

on_every_backend!(up_status_down_fresh);
