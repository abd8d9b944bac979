//! [`SqlEffects`]: a consumer handler that writes its effect through the inbox's
//! database transaction and checks per-key order in SQL (feature `sea-orm`).

use async_trait::async_trait;
use outbox_ports::{HandlerError, IncomingMessage, MessageHandler, header};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement};
use std::sync::atomic::{AtomicU64, Ordering};

/// The table [`SqlEffects`] writes: `(message_id, k, n)`.
pub const EFFECTS_TABLE: &str = "consumer_effects";

/// Decides from a message's key and `n` whether the handler fails this time.
type FailWhen = Box<dyn Fn(&str, i64) -> Option<HandlerError> + Send + Sync>;

/// A [`MessageHandler`] for messages whose JSON payload numbers them per key
/// (`{"n": …}`). In the inbox transaction it reads the key's last committed `n`, counts
/// an order violation if the new `n` is not above it, and inserts `(message_id, key,
/// n)` into [`EFFECTS_TABLE`] (whose primary key refuses a second effect of one
/// message).
pub struct SqlEffects {
    order_violations: AtomicU64,
    fail: FailWhen,
}

impl Default for SqlEffects {
    fn default() -> Self {
        Self::failing(|_, _| None)
    }
}

impl SqlEffects {
    /// A handler that fails when `fail(key, n)` says so, before writing anything.
    pub fn failing(
        fail: impl Fn(&str, i64) -> Option<HandlerError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            order_violations: AtomicU64::new(0),
            fail: Box::new(fail),
        }
    }

    /// Creates [`EFFECTS_TABLE`].
    pub async fn create_table(db: &impl ConnectionTrait) -> Result<(), DbErr> {
        db.execute_unprepared(&format!(
            "CREATE TABLE {EFFECTS_TABLE} (message_id VARCHAR(64) PRIMARY KEY, k VARCHAR(64) \
             NOT NULL, n BIGINT NOT NULL)"
        ))
        .await
        .map(|_| ())
    }

    /// How many messages were handled after a later message of their key.
    pub fn order_violations(&self) -> u64 {
        self.order_violations.load(Ordering::SeqCst)
    }
}

/// `$n` placeholders become `?` on MySQL and SQLite.
fn statement(backend: DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    let sql = match backend {
        DbBackend::Postgres => sql.to_owned(),
        _ => (1..=values.len()).fold(sql.to_owned(), |s, i| s.replace(&format!("${i}"), "?")),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

#[async_trait]
impl MessageHandler<DatabaseTransaction> for SqlEffects {
    async fn handle(
        &self,
        tx: &mut DatabaseTransaction,
        m: &IncomingMessage,
    ) -> Result<(), HandlerError> {
        let key = m.key.clone().unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_slice(&m.payload).map_err(|e| HandlerError::reject(e.to_string()))?;
        let n = body["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::reject("payload has no number n"))?;
        if let Some(e) = (self.fail)(&key, n) {
            return Err(e);
        }
        let id = m
            .headers
            .get(header::MESSAGE_ID)
            .cloned()
            .ok_or_else(|| HandlerError::reject("no message id"))?;
        let backend = tx.get_database_backend();
        let last = tx
            .query_one_raw(statement(
                backend,
                &format!("SELECT MAX(n) AS last FROM {EFFECTS_TABLE} WHERE k = $1"),
                vec![key.clone().into()],
            ))
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))?
            .and_then(|row| row.try_get::<Option<i64>>("", "last").ok().flatten());
        if last.is_some_and(|last| last >= n) {
            self.order_violations.fetch_add(1, Ordering::SeqCst);
        }
        tx.execute_raw(statement(
            backend,
            &format!("INSERT INTO {EFFECTS_TABLE} (message_id, k, n) VALUES ($1, $2, $3)"),
            vec![id.into(), key.into(), n.into()],
        ))
        .await
        .map_err(|e| HandlerError::retry(e.to_string()))?;
        Ok(())
    }
}
