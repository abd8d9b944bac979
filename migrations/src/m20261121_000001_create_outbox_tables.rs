//! The first schema: the outbox, inbox, cursor and compensation tables.

use crate::schema;
use sea_orm_migration::prelude::*;

/// Creates the four outbox-rs tables with their indexes.
pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261121_000001_create_outbox_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let mut statements = schema::outbox_table(backend, schema::OUTBOX_TABLE);
        statements.extend(schema::inbox_table(backend));
        statements.extend(schema::cursor_table(backend));
        statements.extend(schema::compensation_table(backend));
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in [
            schema::COMPENSATION_TABLE,
            schema::CURSOR_TABLE,
            schema::INBOX_TABLE,
            schema::OUTBOX_TABLE,
        ] {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                .await?;
        }
        Ok(())
    }
}
