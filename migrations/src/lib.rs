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

use sea_orm_migration::MigrationTrait;
pub use sea_orm_migration::MigratorTrait;

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
        ]
    }

    /// Our own bookkeeping table, so that an application that runs its own sea-orm
    /// migrations (in `seaql_migrations`) in the same database never sees ours.
    fn migration_table_name() -> sea_orm_migration::sea_orm::DynIden {
        use sea_orm_migration::sea_query::{Alias, IntoIden};
        Alias::new(MIGRATION_TABLE).into_iden()
    }
}
