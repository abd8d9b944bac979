//! Schema migrations for outbox-rs.
//!
//! This crate sits beside the storage adapters, not inside them: it owns the DDL that
//! creates and evolves the outbox tables ([`schema`]), and a `sea-orm-migration`
//! [`Migrator`] that applies it on PostgreSQL, MySQL/MariaDB and SQLite. It knows
//! nothing of the domain, the ports or the runtime.
//!
//! Apply it with `cargo xtask migrate up --database-url …`, with `outbox migrate`, or
//! from code: `Migrator::up(&db, None)`. The migrations touch only the outbox-rs tables
//! (and their own bookkeeping table, [`MIGRATION_TABLE`]), never the application's own.

pub mod schema;

mod m20261121_000001_create_outbox_tables;
mod m20261121_000002_create_consumer_dead_letters;
mod m20261122_000003_outbox_log_positions;
mod m20261123_000004_outbox_key_in_flight;
mod m20261124_000005_outbox_lease_predicate;
mod m20261125_000006_outbox_key_unfinished_status_first;
mod m20261126_000007_outbox_finished_index;

use sea_orm_migration::MigrationTrait;
pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The table in which [`Migrator`] records applied migrations.
pub const MIGRATION_TABLE: &str = "outbox_seaql_migrations";

/// Applies the outbox-rs schema migrations, oldest first.
///
/// Pass it to the `sea-orm-migration` API, e.g. `Migrator::up(&db, None)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_create_outbox_tables::Migration),
            Box::new(m20261121_000002_create_consumer_dead_letters::Migration),
            Box::new(m20261122_000003_outbox_log_positions::Migration),
            Box::new(m20261123_000004_outbox_key_in_flight::Migration),
            Box::new(m20261124_000005_outbox_lease_predicate::Migration),
            Box::new(m20261125_000006_outbox_key_unfinished_status_first::Migration),
            Box::new(m20261126_000007_outbox_finished_index::Migration),
        ]
    }

    /// Our own bookkeeping table, so that an application that runs its own sea-orm
    /// migrations (in `seaql_migrations`) in the same database never sees ours.
    fn migration_table_name() -> sea_orm_migration::sea_orm::DynIden {
        use sea_orm_migration::sea_query::{Alias, IntoIden};
        Alias::new(MIGRATION_TABLE).into_iden()
    }
}

/// Creates the outbox table `table` if it is missing and brings it up to date (the log
/// position, [`add_log_position`]; the indexes, [`schema::upgrade_indexes`]):
/// what `outbox migrate up --routes` and `SeaOrmStore::create_tables` run for each
/// per-service table. Idempotent. `table` must be a validated identifier; it is spliced
/// into SQL as is.
pub async fn prepare_outbox_table<C: ConnectionTrait>(db: &C, table: &str) -> Result<(), DbErr> {
    for statement in schema::outbox_table(db.get_database_backend(), table) {
        db.execute_unprepared(&statement).await?;
    }
    schema::upgrade_indexes(db, table).await?;
    add_log_position(db, table).await
}

/// Adds what named cursors read the outbox table `table` by, if it is missing
/// (idempotent):
///
/// - PostgreSQL: `log_xid xid8 DEFAULT pg_current_xact_id()`, the writing
///   transaction's id, and the index `(log_xid, seq)`. Rows that existed before share
///   the id of the transaction that adds the column.
/// - MySQL / MariaDB: `log_seq BIGINT NULL`, stamped after commit by the log sequencer,
///   the index `(log_seq, seq)`, and the sequencer's counter table
///   ([`schema::LOG_SEQUENCE_TABLE`]).
/// - SQLite: nothing; one writer commits at a time, so `seq` is already in commit order.
pub async fn add_log_position<C: ConnectionTrait>(db: &C, table: &str) -> Result<(), DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS log_xid xid8 NOT NULL \
                 DEFAULT pg_current_xact_id()"
            ))
            .await?;
            db.execute_unprepared(&format!(
                "CREATE INDEX IF NOT EXISTS {table}_log ON {table} (log_xid, seq)"
            ))
            .await?;
        }
        DbBackend::MySql => {
            let exists = db
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::MySql,
                    "SELECT COUNT(*) AS n FROM information_schema.columns \
                     WHERE table_schema = DATABASE() AND table_name = ? AND column_name = 'log_seq'",
                    [table.into()],
                ))
                .await?
                .map(|r| r.try_get::<i64>("", "n"))
                .transpose()?
                .unwrap_or(0)
                > 0;
            if !exists {
                db.execute_unprepared(&format!(
                    "ALTER TABLE {table} ADD COLUMN log_seq BIGINT NULL, \
                     ADD KEY {table}_log (log_seq, seq)"
                ))
                .await?;
            }
            for statement in schema::log_sequence_table(DbBackend::MySql) {
                db.execute_unprepared(&statement).await?;
            }
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::MySql,
                format!(
                    "INSERT IGNORE INTO {} (table_name, last_log_seq) VALUES (?, 0)",
                    schema::LOG_SEQUENCE_TABLE
                ),
                [table.into()],
            ))
            .await?;
        }
        _ => {}
    }
    Ok(())
}
