//! Schema migrations for outbox-rs.
//!
//! This crate sits beside the storage adapters, not inside them: it owns the
//! DDL that creates and evolves the outbox tables, written once with
//! `sea-orm-migration` so that the same migrations run on PostgreSQL,
//! MySQL/MariaDB and SQLite. It knows nothing of the domain, the ports or the
//! runtime. The schema itself arrives with the storage adapter (issue 3); until
//! then [`Migrator`] holds no migrations.
//!
//! `cargo xtask migrate` is the entry point that will apply these migrations.

use sea_orm_migration::{MigrationTrait, MigratorTrait};

/// Applies the outbox-rs schema migrations, oldest first.
///
/// Pass it to the `sea-orm-migration` API, e.g. `Migrator::up(&db, None)`.
/// It is empty until the storage adapter defines the schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![]
    }
}
