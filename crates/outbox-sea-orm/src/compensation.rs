//! [`SeaOrmCompensationStore`]: durable compensation items for failed batch operations.

use crate::dialect::{Dialect, Sql, begin_write, get, req};
use crate::error::{db_error, decode_error};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::{CompensationItem, CompensationStatus, ErrorText, NewCompensationItem};
use outbox_migrations::schema::COMPENSATION_TABLE;
use outbox_ports::{CompensationFilter, CompensationStore, StoreError, StoreResult};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, QueryResult, Value};
use std::time::Duration;
use uuid::Uuid;

const COLUMNS: &str = "seq, id, batch_id, operation_type, item_index, payload, failure_reason, \
     status, retry_count, max_retries, next_retry_at, resolved_by, resolution_note, \
     resolved_at, created_at, updated_at, version";

/// Rows per statement when recording or reserving many items.
const CHUNK: usize = 500;

/// Compensation items on a sea-orm connection. Updates are a compare-and-set on the
/// item's version; reservations skip rows another worker is reserving.
#[derive(Debug, Clone)]
pub struct SeaOrmCompensationStore {
    db: DatabaseConnection,
    dialect: Dialect,
}

impl SeaOrmCompensationStore {
    /// A compensation store on `db`.
    pub fn new(db: DatabaseConnection) -> Self {
        let dialect = Dialect::of(db.get_database_backend());
        Self { db, dialect }
    }

    async fn begin(&self) -> StoreResult<DatabaseTransaction> {
        begin_write(&self.db, self.dialect).await
    }

    fn item(&self, r: &QueryResult) -> StoreResult<CompensationItem> {
        let d = self.dialect;
        let text = |col: &str| req(get::<String>(r, col), col);
        let int = |col: &str| -> StoreResult<u32> {
            u32::try_from(req(get::<i32>(r, col), col)?).map_err(|e| decode_error(col, e))
        };
        let status = text("status")?;
        let status = CompensationStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == status)
            .ok_or_else(|| decode_error("status", format!("unknown status `{status}`")))?;
        let new = NewCompensationItem {
            batch_id: text("batch_id")?,
            operation_type: text("operation_type")?,
            item_index: int("item_index")?,
            payload: req(d.get_json(r, "payload"), "payload")?,
            failure_reason: ErrorText::with_max_len(text("failure_reason")?, usize::MAX),
        };
        let id = req(d.get_uuid(r, "id"), "id")?;
        let created_at = req(d.get_time(r, "created_at"), "created_at")?;
        let mut item = CompensationItem::new(id, new, int("max_retries")?, created_at);
        item.status = status;
        item.retry_count = int("retry_count")?;
        item.next_retry_at = req(d.get_time(r, "next_retry_at"), "next_retry_at")?;
        item.resolved_by = get(r, "resolved_by")?;
        item.resolution_note = get(r, "resolution_note")?;
        item.resolved_at = d.get_time(r, "resolved_at")?;
        item.updated_at = req(d.get_time(r, "updated_at"), "updated_at")?;
        let version = req(get::<i64>(r, "version"), "version")?;
        item.version = u64::try_from(version).map_err(|e| decode_error("version", e))?;
        Ok(item)
    }
}

fn int(n: u32) -> Value {
    Value::Int(Some(i32::try_from(n).unwrap_or(i32::MAX)))
}

fn big(n: u64) -> Value {
    Value::BigInt(Some(i64::try_from(n).unwrap_or(i64::MAX)))
}

#[async_trait]
impl CompensationStore for SeaOrmCompensationStore {
    async fn record(
        &self,
        items: Vec<NewCompensationItem>,
        max_retries: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>> {
        outbox_ports::check_max_retries(max_retries)?;
        let d = self.dialect;
        let items: Vec<CompensationItem> = items
            .into_iter()
            .map(|i| CompensationItem::new(Uuid::now_v7(), i, max_retries, now))
            .collect();
        let txn = self.begin().await?;
        for chunk in items.chunks(CHUNK) {
            let mut sql = Sql::new(
                d,
                format!(
                    "INSERT INTO {COMPENSATION_TABLE} (id, batch_id, operation_type, item_index, \
                     payload, failure_reason, status, retry_count, max_retries, next_retry_at, \
                     created_at, updated_at, version) VALUES "
                ),
            );
            for (n, i) in chunk.iter().enumerate() {
                if n > 0 {
                    sql.push(", ");
                }
                sql.bind_list([
                    d.uuid(Some(i.id)),
                    Value::String(Some(i.batch_id.clone())),
                    Value::String(Some(i.operation_type.clone())),
                    int(i.item_index),
                    d.json(Some(&i.payload)),
                    Value::String(Some(i.failure_reason.as_str().to_owned())),
                    Value::String(Some(i.status.as_str().to_owned())),
                    int(i.retry_count),
                    int(i.max_retries),
                    d.time(Some(i.next_retry_at)),
                    d.time(Some(i.created_at)),
                    d.time(Some(i.updated_at)),
                    big(i.version),
                ]);
            }
            txn.execute_raw(sql.build()).await.map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(items.into_iter().map(|i| i.id).collect())
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        reserve_for: Duration,
    ) -> StoreResult<Vec<CompensationItem>> {
        let reserve = outbox_ports::reservation(reserve_for)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let d = self.dialect;
        let txn = self.begin().await?;
        let mut pick = Sql::new(
            d,
            format!(
                "SELECT {COLUMNS} FROM {COMPENSATION_TABLE} \
                 WHERE status IN ('pending', 'retrying') AND next_retry_at <= "
            ),
        );
        pick.bind(d.time(Some(now)))
            .push(" ORDER BY next_retry_at, seq LIMIT ")
            .bind(big(limit as u64))
            .push(d.skip_locked());
        let rows = txn.query_all_raw(pick.build()).await.map_err(db_error)?;
        let mut items = rows
            .iter()
            .map(|r| self.item(r))
            .collect::<StoreResult<Vec<_>>>()?;
        let until = now + reserve;
        for chunk in items.chunks(CHUNK) {
            let mut sql = Sql::new(
                d,
                format!("UPDATE {COMPENSATION_TABLE} SET version = version + 1, next_retry_at = "),
            );
            sql.bind(d.time(Some(until)))
                .push(", updated_at = ")
                .bind(d.time(Some(now)))
                .push(" WHERE id IN ")
                .bind_list(chunk.iter().map(|i| d.uuid(Some(i.id))));
            txn.execute_raw(sql.build()).await.map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        for item in &mut items {
            item.next_retry_at = until;
            item.updated_at = now;
            item.version += 1;
        }
        Ok(items)
    }

    async fn update(&self, item: &CompensationItem, expected_version: u64) -> StoreResult<()> {
        let d = self.dialect;
        let mut sql = Sql::new(d, format!("UPDATE {COMPENSATION_TABLE} SET status = "));
        sql.bind(Value::String(Some(item.status.as_str().to_owned())))
            .push(", failure_reason = ")
            .bind(Value::String(Some(item.failure_reason.as_str().to_owned())))
            .push(", retry_count = ")
            .bind(int(item.retry_count))
            .push(", max_retries = ")
            .bind(int(item.max_retries))
            .push(", next_retry_at = ")
            .bind(d.time(Some(item.next_retry_at)))
            .push(", resolved_by = ")
            .bind(Value::String(item.resolved_by.clone()))
            .push(", resolution_note = ")
            .bind(Value::String(item.resolution_note.clone()))
            .push(", resolved_at = ")
            .bind(d.time(item.resolved_at))
            .push(", updated_at = ")
            .bind(d.time(Some(item.updated_at)))
            .push(", version = ")
            .bind(big(item.version))
            .push(" WHERE id = ")
            .bind(d.uuid(Some(item.id)))
            .push(" AND version = ")
            .bind(big(expected_version));
        let result = self.db.execute_raw(sql.build()).await.map_err(db_error)?;
        if result.rows_affected() == 1 {
            return Ok(());
        }
        if self.get(item.id).await?.is_none() {
            return Err(StoreError::NotFound {
                what: "compensation item",
                id: item.id.to_string(),
            });
        }
        Err(StoreError::Conflict {
            what: "compensation item",
            id: item.id.to_string(),
            expected: expected_version,
        })
    }

    async fn get(&self, id: Uuid) -> StoreResult<Option<CompensationItem>> {
        let mut sql = Sql::new(
            self.dialect,
            format!("SELECT {COLUMNS} FROM {COMPENSATION_TABLE} WHERE id = "),
        );
        sql.bind(self.dialect.uuid(Some(id)));
        self.db
            .query_one_raw(sql.build())
            .await
            .map_err(db_error)?
            .map(|r| self.item(&r))
            .transpose()
    }

    async fn list(&self, filter: &CompensationFilter) -> StoreResult<Vec<CompensationItem>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(
            self.dialect,
            format!("SELECT {COLUMNS} FROM {COMPENSATION_TABLE} WHERE 1 = 1"),
        );
        if let Some(status) = filter.status {
            sql.push(" AND status = ")
                .bind(Value::String(Some(status.as_str().to_owned())));
        }
        if let Some(batch) = &filter.batch_id {
            sql.push(" AND batch_id = ")
                .bind(Value::String(Some(batch.clone())));
        }
        sql.push(" ORDER BY seq LIMIT ")
            .bind(big(filter.limit as u64));
        self.db
            .query_all_raw(sql.build())
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| self.item(r))
            .collect()
    }
}
