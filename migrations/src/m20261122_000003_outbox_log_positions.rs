//! Log positions for gap-safe named cursors on the default outbox table (and, on
//! MySQL, the log sequencer's counter table). See [`crate::add_log_position`].

use sea_orm_migration::prelude::*;

/// Adds the log-position column and index to the default outbox table.
pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000003_outbox_log_positions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::add_log_position(manager.get_connection(), crate::schema::OUTBOX_TABLE).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let t = crate::schema::OUTBOX_TABLE;
        let statements = match manager.get_database_backend() {
            sea_orm::DbBackend::Postgres => vec![
                format!("DROP INDEX IF EXISTS {t}_log"),
                format!("ALTER TABLE {t} DROP COLUMN IF EXISTS log_xid"),
            ],
            sea_orm::DbBackend::MySql => vec![
                format!("ALTER TABLE {t} DROP KEY {t}_log, DROP COLUMN log_seq"),
                format!("DROP TABLE IF EXISTS {}", crate::schema::LOG_SEQUENCE_TABLE),
            ],
            _ => Vec::new(),
        };
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }
}
