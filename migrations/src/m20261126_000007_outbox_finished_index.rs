//! The finished-rows index of the default outbox table, through which retention reads
//! only the rows it deletes (see [`crate::schema::add_finished_index`]).

use sea_orm_migration::prelude::*;

/// Adds `outbox_messages_finished`: `(published_at, seq) WHERE status IN ('published',
/// 'consumed')` on PostgreSQL and SQLite, `(published_at, seq)` on MySQL/MariaDB.
pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261126_000007_outbox_finished_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::schema::add_finished_index(manager.get_connection(), crate::schema::OUTBOX_TABLE)
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::schema::drop_finished_index(manager.get_connection(), crate::schema::OUTBOX_TABLE)
            .await
    }
}
