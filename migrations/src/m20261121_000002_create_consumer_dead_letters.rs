//! The consumer dead-letter table, where consumer runners park messages they gave up on.

use crate::schema;
use sea_orm_migration::prelude::*;

/// Creates `outbox_consumer_dead_letters`.
pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261121_000002_create_consumer_dead_letters"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for statement in schema::dead_letter_table(manager.get_database_backend()) {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = schema::DEAD_LETTER_TABLE;
        manager
            .get_connection()
            .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
            .await?;
        Ok(())
    }
}
