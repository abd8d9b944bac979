//! The per-key index of the default outbox table on MySQL/MariaDB with `status` first
//! ([`crate::schema::KEY_UNFINISHED_MYSQL`]), so that a claim can read the pending rows
//! of the keys that are not blocked without the blocked keys' rows.

use sea_orm_migration::prelude::*;

/// Rebuilds `outbox_messages_key_unfinished` on MySQL/MariaDB as `(status, service,
/// partition_key, seq)` if it leads with `service`; a no-op on PostgreSQL and SQLite,
/// whose partial index holds only unfinished rows already.
pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000006_outbox_key_unfinished_status_first"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::schema::upgrade_key_unfinished_index(
            manager.get_connection(),
            crate::schema::OUTBOX_TABLE,
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DbBackend::MySql {
            crate::schema::recreate_key_unfinished_index(
                manager.get_connection(),
                crate::schema::OUTBOX_TABLE,
                "service, partition_key, status, seq",
            )
            .await?;
        }
        Ok(())
    }
}
