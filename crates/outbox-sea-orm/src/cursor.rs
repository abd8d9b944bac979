//! [`SeaOrmCursorStore`]: named checkpoints over the outbox log.

use crate::dialect::{Dialect, Sql, get, req};
use crate::error::db_error;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_migrations::schema::CURSOR_TABLE;
use outbox_ports::{Cursor, CursorPosition, CursorStore, StoreError, StoreResult};
use sea_orm::{ConnectionTrait, DatabaseConnection, Value};

/// Longest cursor name and position the cursor table holds.
const MAX_LEN: usize = 255;

/// Named cursors on a sea-orm connection, moved with a compare-and-set on their version.
#[derive(Debug, Clone)]
pub struct SeaOrmCursorStore {
    db: DatabaseConnection,
    dialect: Dialect,
}

impl SeaOrmCursorStore {
    /// A cursor store on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        let dialect = Dialect::of(db.get_database_backend());
        Self { db, dialect }
    }

    fn conflict(name: &str, expected: Option<u64>) -> StoreError {
        StoreError::Conflict {
            what: "cursor",
            id: name.to_owned(),
            expected: expected.unwrap_or(0),
        }
    }
}

fn version_value(v: u64) -> Value {
    Value::BigInt(Some(i64::try_from(v).unwrap_or(i64::MAX)))
}

#[async_trait]
impl CursorStore for SeaOrmCursorStore {
    async fn load(&self, name: &str) -> StoreResult<Option<Cursor>> {
        let mut sql = Sql::new(
            self.dialect,
            format!("SELECT name, position, version, updated_at FROM {CURSOR_TABLE} WHERE name = "),
        );
        sql.bind(Value::String(Some(name.to_owned())));
        let Some(r) = self.db.query_one_raw(sql.build()).await.map_err(db_error)? else {
            return Ok(None);
        };
        let version = req(get::<i64>(&r, "version"), "version")?;
        Ok(Some(Cursor::new(
            req(get(&r, "name"), "name")?,
            CursorPosition(req(get(&r, "position"), "position")?),
            u64::try_from(version).unwrap_or(0),
            req(self.dialect.get_time(&r, "updated_at"), "updated_at")?,
        )))
    }

    async fn save(
        &self,
        name: &str,
        position: CursorPosition,
        expected_version: Option<u64>,
        now: DateTime<Utc>,
    ) -> StoreResult<Cursor> {
        if name.is_empty() || name.len() > MAX_LEN || position.0.len() > MAX_LEN {
            return Err(StoreError::InvalidInput(format!(
                "cursor name must be 1 to {MAX_LEN} bytes and its position at most {MAX_LEN} bytes"
            )));
        }
        let d = self.dialect;
        let version = expected_version.map_or(1, |v| v + 1);
        let sql = match expected_version {
            None => {
                let mut sql = Sql::new(
                    d,
                    format!(
                        "INSERT INTO {CURSOR_TABLE} (name, position, version, updated_at) VALUES "
                    ),
                );
                sql.bind_list([
                    Value::String(Some(name.to_owned())),
                    Value::String(Some(position.0.clone())),
                    version_value(version),
                    d.time(Some(now)),
                ]);
                sql
            }
            Some(expected) => {
                let mut sql = Sql::new(d, format!("UPDATE {CURSOR_TABLE} SET position = "));
                sql.bind(Value::String(Some(position.0.clone())))
                    .push(", version = ")
                    .bind(version_value(version))
                    .push(", updated_at = ")
                    .bind(d.time(Some(now)))
                    .push(" WHERE name = ")
                    .bind(Value::String(Some(name.to_owned())))
                    .push(" AND version = ")
                    .bind(version_value(expected));
                sql
            }
        };
        match self.db.execute_raw(sql.build()).await {
            Ok(r) if r.rows_affected() == 1 => {
                Ok(Cursor::new(name.to_owned(), position, version, now))
            }
            Ok(_) => Err(Self::conflict(name, expected_version)),
            Err(e) => match db_error(e) {
                StoreError::Conflict { .. } => Err(Self::conflict(name, expected_version)),
                other => Err(other),
            },
        }
    }
}
