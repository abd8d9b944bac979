//! [`SeaOrmInbox`]: the consumer side's record of processed message ids.

use crate::dialect::{Dialect, Sql, begin_write};
use crate::error::db_error;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::MessageId;
use outbox_migrations::schema::INBOX_TABLE;
use outbox_ports::{Inbox, InboxOutcome, StoreError, StoreResult, TransactionalInbox};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, Value};

/// Longest consumer group name the inbox table holds.
const MAX_GROUP_LEN: usize = 249;

/// The inbox on a sea-orm connection.
///
/// Use [`process_once`](Self::process_once) inside the transaction that applies the
/// message's business effect: the id and the effect commit together, so a redelivered
/// message is recognised and skipped, and a crash before commit leaves neither.
///
/// As a [`TransactionalInbox`] (for `outbox-runtime`'s consumer runner) it hands the
/// handler a [`DatabaseTransaction`]: read committed on PostgreSQL and MySQL, an
/// immediate (write-locking) transaction on SQLite.
#[derive(Debug, Clone)]
pub struct SeaOrmInbox {
    db: DatabaseConnection,
}

impl SeaOrmInbox {
    /// An inbox on `db` (for the non-transactional [`Inbox`] port).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Records `message_id` for `consumer_group` through `conn`, normally the caller's
    /// transaction, and says whether this is its first delivery. On
    /// [`InboxOutcome::First`], apply the business effect in the same transaction and
    /// commit; on [`InboxOutcome::Duplicate`], skip it.
    ///
    /// A duplicate is reported without a database error, so the transaction stays
    /// usable. If another transaction is recording the same id right now, this waits
    /// for it: it reports `Duplicate` if that one commits and `First` if it rolls back.
    pub async fn process_once<C: ConnectionTrait>(
        conn: &C,
        consumer_group: &str,
        message_id: MessageId,
        now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome> {
        if consumer_group.is_empty() || consumer_group.len() > MAX_GROUP_LEN {
            return Err(StoreError::InvalidInput(format!(
                "consumer group must be 1 to {MAX_GROUP_LEN} bytes, got {}",
                consumer_group.len()
            )));
        }
        let dialect = Dialect::of(conn.get_database_backend());
        // MySQL's `INSERT IGNORE` also downgrades other errors to warnings; the only
        // other failure an inbox row can have, an over-long group, is checked above.
        let verb = match dialect {
            Dialect::MySql => "INSERT IGNORE INTO",
            _ => "INSERT INTO",
        };
        let mut sql = Sql::new(
            dialect,
            format!("{verb} {INBOX_TABLE} (consumer_group, message_id, processed_at) VALUES "),
        );
        sql.bind_list([
            Value::String(Some(consumer_group.to_owned())),
            dialect.uuid(Some(message_id.as_uuid())),
            dialect.time(Some(now)),
        ]);
        if dialect != Dialect::MySql {
            sql.push(" ON CONFLICT DO NOTHING");
        }
        let result = conn.execute_raw(sql.build()).await.map_err(db_error)?;
        Ok(if result.rows_affected() == 1 {
            InboxOutcome::First
        } else {
            InboxOutcome::Duplicate
        })
    }
}

#[async_trait]
impl Inbox for SeaOrmInbox {
    async fn record(
        &self,
        consumer_group: &str,
        message_id: MessageId,
        now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome> {
        Self::process_once(&self.db, consumer_group, message_id, now).await
    }
}

#[async_trait]
impl TransactionalInbox for SeaOrmInbox {
    type Tx = DatabaseTransaction;

    async fn begin(&self) -> StoreResult<DatabaseTransaction> {
        begin_write(&self.db, Dialect::of(self.db.get_database_backend())).await
    }

    async fn record_in(
        &self,
        tx: &mut DatabaseTransaction,
        consumer_group: &str,
        message_id: MessageId,
        now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome> {
        Self::process_once(&*tx, consumer_group, message_id, now).await
    }

    async fn commit(&self, tx: DatabaseTransaction) -> StoreResult<()> {
        tx.commit().await.map_err(db_error)
    }

    async fn rollback(&self, tx: DatabaseTransaction) -> StoreResult<()> {
        tx.rollback().await.map_err(db_error)
    }
}
