//! The lease index of the default outbox table with the predicate that keeps it out of
//! the claim's in-flight probe ([`crate::schema::LEASE_PREDICATE`]).

use sea_orm_migration::prelude::*;

/// Recreates `outbox_messages_lease` on PostgreSQL and SQLite with
/// [`LEASE_PREDICATE`](crate::schema::LEASE_PREDICATE) if it has the predicate of
/// before; MySQL's `(status, lease_expires_at)` is unchanged.
pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000005_outbox_lease_predicate"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::schema::upgrade_lease_index(manager.get_connection(), crate::schema::OUTBOX_TABLE)
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::MySql {
            crate::schema::recreate_lease_index(
                manager.get_connection(),
                crate::schema::OUTBOX_TABLE,
                "status = 'in_flight'",
            )
            .await?;
        }
        Ok(())
    }
}
