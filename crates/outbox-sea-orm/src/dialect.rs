//! What differs between PostgreSQL, MySQL/MariaDB and SQLite: placeholders, row locks,
//! and how ids, times and JSON are stored (see `outbox_migrations::schema`).

use crate::error::{db_error, decode_error};
use chrono::{DateTime, NaiveDateTime, Utc};
use outbox_ports::StoreResult;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    IsolationLevel, QueryResult, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait, Value,
};
use uuid::Uuid;

/// The SQL dialect of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

/// SQLite stores times as fixed-width UTC text, so that text order is time order.
const SQLITE_TIME: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

impl Dialect {
    pub(crate) fn of(backend: DbBackend) -> Self {
        match backend {
            DbBackend::Postgres => Dialect::Postgres,
            DbBackend::MySql => Dialect::MySql,
            _ => Dialect::Sqlite,
        }
    }

    pub(crate) fn backend(self) -> DbBackend {
        match self {
            Dialect::Postgres => DbBackend::Postgres,
            Dialect::MySql => DbBackend::MySql,
            Dialect::Sqlite => DbBackend::Sqlite,
        }
    }

    /// The row-lock clause of a claim: skip rows another relay is claiming. SQLite has
    /// no row locks; its claim runs in an immediate (write-locked) transaction instead.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// After a table in `FROM`: the index a claim's query must read it by. SQLite
    /// (` INDEXED BY …`): with no statistics its planner prefers `_status` for `status =
    /// 'pending'`, reading every pending row and sorting them, and it uses the partial
    /// `_key_unfinished` only for a query that repeats its predicate. MySQL/MariaDB
    /// (` FORCE INDEX (…)`): its estimates for index ranges of keys are statistics.
    /// Nothing on PostgreSQL, whose claim pins its plan by settings (`CLAIM_PLAN`).
    pub(crate) fn index_hint(self, index: &str) -> String {
        match self {
            Dialect::Sqlite => format!(" INDEXED BY {index}"),
            Dialect::MySql => format!(" FORCE INDEX ({index})"),
            Dialect::Postgres => String::new(),
        }
    }

    /// The row-lock clause of a read-modify-write.
    pub(crate) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE",
        }
    }

    pub(crate) fn uuid(self, id: Option<Uuid>) -> Value {
        match self {
            Dialect::Postgres => Value::Uuid(id),
            Dialect::MySql => Value::Bytes(id.map(|u| u.as_bytes().to_vec())),
            Dialect::Sqlite => Value::String(id.map(|u| u.hyphenated().to_string())),
        }
    }

    pub(crate) fn time(self, at: Option<DateTime<Utc>>) -> Value {
        match self {
            Dialect::Postgres => Value::ChronoDateTimeUtc(at),
            Dialect::MySql => Value::ChronoDateTime(at.map(|t| t.naive_utc())),
            Dialect::Sqlite => Value::String(at.map(|t| t.format(SQLITE_TIME).to_string())),
        }
    }

    pub(crate) fn json(self, value: Option<&serde_json::Value>) -> Value {
        match self {
            Dialect::Postgres => Value::Json(value.map(|v| Box::new(v.clone()))),
            _ => Value::String(value.map(serde_json::Value::to_string)),
        }
    }

    pub(crate) fn get_uuid(self, row: &QueryResult, col: &str) -> StoreResult<Option<Uuid>> {
        match self {
            Dialect::Postgres => get(row, col),
            Dialect::MySql => get::<Vec<u8>>(row, col)?
                .map(|b| Uuid::from_slice(&b).map_err(|e| decode_error(col, e)))
                .transpose(),
            Dialect::Sqlite => get::<String>(row, col)?
                .map(|s| Uuid::parse_str(&s).map_err(|e| decode_error(col, e)))
                .transpose(),
        }
    }

    pub(crate) fn get_time(
        self,
        row: &QueryResult,
        col: &str,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        match self {
            Dialect::Postgres => get(row, col),
            Dialect::MySql => Ok(get::<NaiveDateTime>(row, col)?.map(|t| t.and_utc())),
            Dialect::Sqlite => get::<String>(row, col)?
                .map(|s| {
                    DateTime::parse_from_rfc3339(&s)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|e| decode_error(col, e))
                })
                .transpose(),
        }
    }

    pub(crate) fn get_json(
        self,
        row: &QueryResult,
        col: &str,
    ) -> StoreResult<Option<serde_json::Value>> {
        let text = match self {
            Dialect::Postgres => return get(row, col),
            // MySQL's JSON type arrives as JSON; MariaDB's JSON is LONGTEXT.
            Dialect::MySql => match row.try_get::<Option<serde_json::Value>>("", col) {
                Ok(v) => return Ok(v),
                Err(_) => match get::<String>(row, col) {
                    Ok(s) => s,
                    Err(_) => {
                        get::<Vec<u8>>(row, col)?.map(|b| String::from_utf8_lossy(&b).into_owned())
                    }
                },
            },
            Dialect::Sqlite => get::<String>(row, col)?,
        };
        text.map(|s| serde_json::from_str(&s).map_err(|e| decode_error(col, e)))
            .transpose()
    }
}

/// A transaction for a read-modify-write: read committed on the server databases (no
/// gap locks on MySQL), and an immediate write transaction on SQLite, so that the write
/// lock is taken up front instead of failing to upgrade later.
pub(crate) async fn begin_write(
    db: &DatabaseConnection,
    dialect: Dialect,
) -> StoreResult<DatabaseTransaction> {
    begin_write_with(db, dialect, "").await
}

/// [`begin_write`], then on PostgreSQL `settings` (`SET LOCAL …` statements separated
/// by `;`), sent with the isolation level in one round trip: the transaction costs
/// `BEGIN` plus one statement however many settings it has.
pub(crate) async fn begin_write_with(
    db: &DatabaseConnection,
    dialect: Dialect,
    settings: &str,
) -> StoreResult<DatabaseTransaction> {
    match dialect {
        Dialect::Sqlite => db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
            .map_err(db_error),
        Dialect::MySql => db
            .begin_with_options(TransactionOptions {
                isolation_level: Some(IsolationLevel::ReadCommitted),
                access_mode: Some(AccessMode::ReadWrite),
                ..TransactionOptions::default()
            })
            .await
            .map_err(db_error),
        Dialect::Postgres => {
            let txn = db.begin().await.map_err(db_error)?;
            let mut sql =
                String::from("SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE");
            if !settings.is_empty() {
                sql.push_str("; ");
                sql.push_str(settings);
            }
            txn.execute_unprepared(&sql).await.map_err(db_error)?;
            Ok(txn)
        }
    }
}

/// A nullable column.
pub(crate) fn get<T: sea_orm::TryGetable>(row: &QueryResult, col: &str) -> StoreResult<Option<T>> {
    row.try_get::<Option<T>>("", col).map_err(db_error)
}

/// A non-null column.
pub(crate) fn req<T>(value: StoreResult<Option<T>>, col: &str) -> StoreResult<T> {
    value?.ok_or_else(|| decode_error(col, "unexpected NULL"))
}

/// Builds one statement with the dialect's placeholders (`$1` on PostgreSQL, `?`
/// elsewhere), so that values are always bound, never spliced.
#[derive(Debug)]
pub(crate) struct Sql {
    dialect: Dialect,
    text: String,
    values: Vec<Value>,
}

impl Sql {
    pub(crate) fn new(dialect: Dialect, text: impl Into<String>) -> Self {
        Self {
            dialect,
            text: text.into(),
            values: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub(crate) fn bind(&mut self, value: Value) -> &mut Self {
        self.values.push(value);
        match self.dialect {
            Dialect::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.values.len().to_string());
            }
            _ => self.text.push('?'),
        }
        self
    }

    /// `(v1, v2, …)`.
    pub(crate) fn bind_list(&mut self, values: impl IntoIterator<Item = Value>) -> &mut Self {
        self.text.push('(');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v);
        }
        self.text.push(')');
        self
    }

    pub(crate) fn build(self) -> Statement {
        Statement::from_sql_and_values(self.dialect.backend(), self.text, self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_dialect() {
        let mut pg = Sql::new(Dialect::Postgres, "SELECT 1 WHERE a = ");
        pg.bind(Value::Int(Some(1))).push(" AND b IN ");
        pg.bind_list([Value::Int(Some(2)), Value::Int(Some(3))]);
        assert_eq!(pg.build().sql, "SELECT 1 WHERE a = $1 AND b IN ($2, $3)");
        let mut my = Sql::new(Dialect::MySql, "SELECT 1 WHERE b IN ");
        my.bind_list([Value::Int(Some(2)), Value::Int(Some(3))]);
        assert_eq!(my.build().sql, "SELECT 1 WHERE b IN (?, ?)");
    }

    #[test]
    fn sqlite_times_sort_as_text() {
        let a = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let b = a + chrono::Duration::microseconds(500_000);
        let text = |t| match Dialect::Sqlite.time(Some(t)) {
            Value::String(Some(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(a), "2026-01-01T00:00:00.000000Z");
        assert!(text(a) < text(b));
    }
}
