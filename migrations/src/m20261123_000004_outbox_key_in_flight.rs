//! The in-flight-by-key index of the default outbox table, which keeps the claim's
//! per-key in-flight probe a lookup whatever a key's backlog (see
//! [`crate::schema`]'s claim indexes).

use sea_orm_migration::prelude::*;

/// Adds `outbox_messages_key_in_flight` on PostgreSQL and SQLite (MySQL's
/// `_key_unfinished` already leads with the key and the status).
pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000004_outbox_key_in_flight"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        if let Some(statement) =
            crate::schema::key_in_flight_index(backend, crate::schema::OUTBOX_TABLE)
        {
            manager
                .get_connection()
                .execute_unprepared(&statement)
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DbBackend::MySql {
            manager
                .get_connection()
                .execute_unprepared(&format!(
                    "DROP INDEX IF EXISTS {}_key_in_flight",
                    crate::schema::OUTBOX_TABLE
                ))
                .await?;
        }
        Ok(())
    }
}
