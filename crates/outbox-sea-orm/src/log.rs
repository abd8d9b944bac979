//! [`OutboxLog`] for [`SeaOrmStore`]: the outbox table read as a gap-safe ordered log,
//! for named cursors.
//!
//! "Gap-safe" means a reader never skips a row whose transaction commits after rows it
//! has already read. Each backend needs its own technique:
//!
//! - **PostgreSQL** stamps each row with its transaction's id (`log_xid xid8 DEFAULT
//!   pg_current_xact_id()`) and orders the log by `(log_xid, seq)`. A read returns only
//!   rows whose transaction id is below the current snapshot's `xmin`, the oldest
//!   transaction still running: every transaction below it has ended, so no row can
//!   appear there later. Cost: one long-running transaction (any that holds a
//!   transaction id) holds every reader back until it ends; the read reports that as
//!   [`LogBatch::held_back`]. Transaction ids are per cluster, so a dump restored into
//!   another cluster can start below the stored ids; a cursor position ahead of the
//!   cluster's counter is refused with [`StoreError::InvalidPosition`].
//! - **MySQL / MariaDB** have no snapshot function. A post-commit *sequencer* stamps
//!   committed rows with `log_seq`: under the row lock of the table's counter in
//!   `outbox_log_sequence`, it reads the committed rows still without a stamp and numbers
//!   them above every earlier stamp. Stampings are serialised by that lock and commit
//!   in order, so the stamped rows always form a prefix of the log; a row that commits
//!   late is stamped later, with a higher number. There is no separate process: every
//!   read stamps first. Cost: one short extra write transaction per read, and a long
//!   transaction holds nobody back.
//! - **SQLite** commits one writer at a time, and a row gets its `seq` under the write
//!   lock, so `seq` order is commit order already.
//!
//! Positions are `xid:seq` on PostgreSQL and a number (`log_seq` / `seq`) elsewhere.

use crate::dialect::{Dialect, Sql, get, req};
use crate::error::db_error;
use crate::row::{self, ALL_COLUMNS};
use crate::store::{SeaOrmStore, limit_value};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_migrations::schema::LOG_SEQUENCE_TABLE;
use outbox_ports::{
    CursorPosition, LogBatch, LogEntry, LogLag, OutboxLog, StoreError, StoreResult,
};
use sea_orm::{ConnectionTrait, QueryResult, TransactionTrait, Value};

/// Rows the MySQL sequencer stamps at most per read.
const STAMP_BATCH: usize = 1000;

/// The unfinished statuses (the relay's work).
const UNFINISHED: &str = "status IN ('pending', 'in_flight')";

/// A parsed log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// PostgreSQL: (transaction id, seq).
    Xid(u64, i64),
    /// MySQL `log_seq`, SQLite `seq`.
    Seq(i64),
}

impl Pos {
    fn text(self) -> CursorPosition {
        CursorPosition(match self {
            Pos::Xid(xid, seq) => format!("{xid}:{seq}"),
            Pos::Seq(seq) => seq.to_string(),
        })
    }
}

impl SeaOrmStore {
    fn parse(&self, text: &str) -> StoreResult<Pos> {
        let number = |part: &str| part.parse::<u64>().ok();
        let pos = match self.dialect {
            Dialect::Postgres => text
                .split_once(':')
                .and_then(|(x, s)| Some(Pos::Xid(number(x)?, i64::try_from(number(s)?).ok()?))),
            _ => number(text)
                .and_then(|s| i64::try_from(s).ok())
                .map(Pos::Seq),
        };
        pos.ok_or_else(|| {
            let form = match self.dialect {
                Dialect::Postgres => "TRANSACTION_ID:SEQ, two whole numbers",
                _ => "a whole number",
            };
            StoreError::InvalidPosition(format!(
                "`{text}` is not a position of the outbox log {} (expected {form})",
                self.table()
            ))
        })
    }

    /// The start of the log.
    fn origin(&self) -> Pos {
        match self.dialect {
            Dialect::Postgres => Pos::Xid(0, 0),
            _ => Pos::Seq(0),
        }
    }

    /// `AND <the row is after pos>`.
    fn push_after(&self, sql: &mut Sql, pos: Pos) {
        match pos {
            Pos::Xid(xid, seq) => {
                sql.push(" AND (log_xid, seq) > (CAST(")
                    .bind(Value::String(Some(xid.to_string())))
                    .push(" AS xid8), ")
                    .bind(Value::BigInt(Some(seq)))
                    .push(")");
            }
            Pos::Seq(seq) => {
                let column = if self.dialect == Dialect::MySql {
                    "log_seq"
                } else {
                    "seq"
                };
                sql.push(&format!(" AND {column} > "))
                    .bind(Value::BigInt(Some(seq)));
            }
        }
    }

    /// The columns a position is read from besides `seq` (with a leading comma), and
    /// the columns of the log order.
    fn position_columns(&self) -> (&'static str, &'static [&'static str]) {
        match self.dialect {
            Dialect::Postgres => (", log_xid::text AS log_xid", &["log_xid", "seq"]),
            Dialect::MySql => (", log_seq", &["log_seq"]),
            Dialect::Sqlite => ("", &["seq"]),
        }
    }

    /// `ORDER BY` text of the log order, ascending or descending.
    fn log_order(&self, descending: bool) -> String {
        let direction = if descending { " DESC" } else { "" };
        self.position_columns()
            .1
            .iter()
            .map(|c| format!("{c}{direction}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `AND <the row may be read now>`: stamped (MySQL), or below the snapshot's xmin
    /// (PostgreSQL).
    fn readable(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => " AND log_xid < pg_snapshot_xmin(pg_current_snapshot())",
            Dialect::MySql => " AND log_seq IS NOT NULL",
            Dialect::Sqlite => "",
        }
    }

    fn row_position(&self, r: &QueryResult) -> StoreResult<Pos> {
        Ok(match self.dialect {
            Dialect::Postgres => {
                let xid: String = req(get(r, "log_xid"), "log_xid")?;
                let xid = xid
                    .parse()
                    .map_err(|_| StoreError::Backend(format!("unreadable log_xid `{xid}`")))?;
                Pos::Xid(xid, req(get(r, "seq"), "seq")?)
            }
            Dialect::MySql => Pos::Seq(req(get(r, "log_seq"), "log_seq")?),
            Dialect::Sqlite => Pos::Seq(req(get(r, "seq"), "seq")?),
        })
    }

    /// The first or last readable position satisfying `filter`.
    async fn edge(&self, filter: &str, last: bool) -> StoreResult<Option<Pos>> {
        let sql = Sql::new(
            self.dialect,
            format!(
                "SELECT seq{} FROM {} WHERE 1 = 1{}{filter} ORDER BY {} LIMIT 1",
                self.position_columns().0,
                self.table(),
                self.readable(),
                self.log_order(last)
            ),
        );
        self.db
            .query_one_raw(sql.build())
            .await
            .map_err(db_error)?
            .map(|r| self.row_position(&r))
            .transpose()
    }

    /// MySQL's sequencer: stamps up to `max` committed, unstamped rows with `log_seq`,
    /// in `seq` order, above every earlier stamp. Serialised by the row lock on the
    /// table's counter, so stampings commit in the order of their numbers.
    ///
    /// Correct under REPEATABLE READ as well as READ COMMITTED: the plain read of
    /// unstamped rows comes after the counter's lock is held, so its snapshot includes
    /// every earlier stamping.
    async fn stamp(&self, max: usize) -> StoreResult<()> {
        if self.dialect != Dialect::MySql {
            return Ok(());
        }
        let t = self.table();
        let lock = || {
            let mut sql = Sql::new(
                self.dialect,
                format!("SELECT last_log_seq FROM {LOG_SEQUENCE_TABLE} WHERE table_name = "),
            );
            sql.bind(Value::String(Some(t.to_owned())))
                .push(" FOR UPDATE");
            sql.build()
        };
        let mut txn = self.db.begin().await.map_err(db_error)?;
        let mut counter = txn.query_one_raw(lock()).await.map_err(db_error)?;
        if counter.is_none() {
            // A table prepared before its counter row existed. Create the row in a
            // transaction of its own (inserting under the failed lock's gap lock could
            // deadlock with another reader doing the same), then lock it.
            txn.rollback().await.map_err(db_error)?;
            let mut sql = Sql::new(
                self.dialect,
                format!(
                    "INSERT IGNORE INTO {LOG_SEQUENCE_TABLE} (table_name, last_log_seq) VALUES "
                ),
            );
            sql.bind_list([Value::String(Some(t.to_owned())), Value::BigInt(Some(0))]);
            self.db.execute_raw(sql.build()).await.map_err(db_error)?;
            txn = self.db.begin().await.map_err(db_error)?;
            counter = txn.query_one_raw(lock()).await.map_err(db_error)?;
        }
        let last = req(
            counter
                .map(|r| get::<i64>(&r, "last_log_seq"))
                .transpose()
                .map(Option::flatten),
            "last_log_seq",
        )?;
        let mut sql = Sql::new(
            self.dialect,
            format!("SELECT seq FROM {t} WHERE log_seq IS NULL ORDER BY seq LIMIT "),
        );
        sql.bind(limit_value(max));
        let seqs = txn
            .query_all_raw(sql.build())
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| req(get::<i64>(r, "seq"), "seq"))
            .collect::<StoreResult<Vec<_>>>()?;
        let (Some(&first), Some(&newest)) = (seqs.first(), seqs.last()) else {
            return txn.commit().await.map_err(db_error);
        };
        // Numbers follow `seq` within the stamping, above `last`; gaps are harmless.
        let base = last + 1 - first;
        let mut sql = Sql::new(self.dialect, format!("UPDATE {t} SET log_seq = seq + "));
        sql.bind(Value::BigInt(Some(base))).push(" WHERE seq IN ");
        sql.bind_list(seqs.iter().map(|s| Value::BigInt(Some(*s))));
        txn.execute_raw(sql.build()).await.map_err(db_error)?;
        let mut sql = Sql::new(
            self.dialect,
            format!("UPDATE {LOG_SEQUENCE_TABLE} SET last_log_seq = "),
        );
        sql.bind(Value::BigInt(Some(newest + base)))
            .push(" WHERE table_name = ")
            .bind(Value::String(Some(t.to_owned())));
        txn.execute_raw(sql.build()).await.map_err(db_error)?;
        txn.commit().await.map_err(db_error)
    }

    /// PostgreSQL, after a read that returned fewer entries than asked for and ended at
    /// `pos`: whether committed rows exist after `pos` (the read held them back, or
    /// they committed since: either way, read again soon), and the cluster's next
    /// transaction id. The probe has its own snapshot, so it does not repeat the read's
    /// `xmin` test: that could miss a row the read held back and that became readable
    /// in between.
    async fn held_back(&self, pos: Pos) -> StoreResult<(bool, u64)> {
        let mut sql = Sql::new(
            self.dialect,
            format!("SELECT EXISTS (SELECT 1 FROM {} WHERE 1 = 1", self.table()),
        );
        self.push_after(&mut sql, pos);
        sql.push(") AS held_back, pg_snapshot_xmax(pg_current_snapshot())::text AS xmax");
        let r = self
            .db
            .query_one_raw(sql.build())
            .await
            .map_err(db_error)?
            .ok_or_else(|| StoreError::Backend("no answer to the held-back probe".into()))?;
        let xmax: String = req(get(&r, "xmax"), "xmax")?;
        let xmax = xmax
            .parse()
            .map_err(|_| StoreError::Backend(format!("unreadable xmax `{xmax}`")))?;
        Ok((req(get(&r, "held_back"), "held_back")?, xmax))
    }

    async fn created_at(&self, filter: Sql) -> StoreResult<Option<DateTime<Utc>>> {
        match self
            .db
            .query_one_raw(filter.build())
            .await
            .map_err(db_error)?
        {
            Some(r) => self.dialect.get_time(&r, "created_at"),
            None => Ok(None),
        }
    }

    async fn count(&self, filter: Sql) -> StoreResult<u64> {
        let r = self
            .db
            .query_one_raw(filter.build())
            .await
            .map_err(db_error)?;
        Ok(r.map(|r| get::<i64>(&r, "n"))
            .transpose()?
            .flatten()
            .map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }
}

#[async_trait]
impl OutboxLog for SeaOrmStore {
    fn start(&self) -> CursorPosition {
        self.origin().text()
    }

    async fn read(&self, after: &CursorPosition, limit: usize) -> StoreResult<LogBatch> {
        let after = self.parse(&after.0)?;
        if limit == 0 {
            return Ok(LogBatch::default());
        }
        self.stamp(limit.max(STAMP_BATCH)).await?;
        let mut sql = Sql::new(
            self.dialect,
            format!(
                "SELECT {ALL_COLUMNS}{} FROM {} WHERE 1 = 1{}",
                self.position_columns().0,
                self.table(),
                self.readable()
            ),
        );
        self.push_after(&mut sql, after);
        sql.push(&format!(" ORDER BY {} LIMIT ", self.log_order(false)))
            .bind(limit_value(limit));
        let rows = self.db.query_all_raw(sql.build()).await.map_err(db_error)?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut last = after;
        for r in &rows {
            last = self.row_position(r)?;
            entries.push(LogEntry::new(last.text(), row::stored(self.dialect, r)?));
        }
        let mut held_back = false;
        if self.dialect == Dialect::Postgres && entries.len() < limit {
            let (held, next_xid) = self.held_back(last).await?;
            if let Pos::Xid(xid, _) = after
                && xid >= next_xid
            {
                return Err(StoreError::InvalidPosition(format!(
                    "position {} is ahead of this database's transaction ids (next {next_xid}): \
                         the database was restored from a dump or is another cluster; \
                         reset the cursor",
                    after.text().0
                )));
            }
            held_back = held;
        }
        Ok(LogBatch::new(entries, held_back))
    }

    async fn unfinished_start(&self) -> StoreResult<CursorPosition> {
        self.stamp(STAMP_BATCH).await?;
        let first = self.edge(&format!(" AND {UNFINISHED}"), false).await?;
        Ok(match first {
            Some(Pos::Xid(xid, seq)) => Pos::Xid(xid, seq - 1).text(),
            Some(Pos::Seq(seq)) => Pos::Seq(seq - 1).text(),
            None => self.end().await?,
        })
    }

    async fn end(&self) -> StoreResult<CursorPosition> {
        self.stamp(STAMP_BATCH).await?;
        Ok(self.edge("", true).await?.unwrap_or(self.origin()).text())
    }

    async fn lag(&self, after: &CursorPosition) -> StoreResult<LogLag> {
        let after = self.parse(&after.0)?;
        let t = self.table();
        let cap = Value::BigInt(Some(i64::try_from(LogLag::COUNT_CAP).unwrap_or(i64::MAX)));
        // Rows after the position (PostgreSQL: readable or not), then MySQL's
        // unstamped rows, which come after every stamped one.
        let mut count = Sql::new(
            self.dialect,
            format!("SELECT COUNT(*) AS n FROM (SELECT 1 FROM {t} WHERE 1 = 1"),
        );
        self.push_after(&mut count, after);
        count.push(" LIMIT ").bind(cap.clone()).push(") a");
        let mut oldest = Sql::new(
            self.dialect,
            format!("SELECT created_at FROM {t} WHERE 1 = 1"),
        );
        self.push_after(&mut oldest, after);
        oldest.push(&format!(" ORDER BY {} LIMIT 1", self.log_order(false)));
        let mut entries = self.count(count).await?;
        let mut oldest_at = self.created_at(oldest).await?;
        if self.dialect == Dialect::MySql {
            let mut count = Sql::new(
                self.dialect,
                format!(
                    "SELECT COUNT(*) AS n FROM (SELECT 1 FROM {t} WHERE log_seq IS NULL LIMIT "
                ),
            );
            count.bind(cap).push(") a");
            entries += self.count(count).await?;
            let unstamped = Sql::new(
                self.dialect,
                format!("SELECT created_at FROM {t} WHERE log_seq IS NULL ORDER BY seq LIMIT 1"),
            );
            if let Some(at) = self.created_at(unstamped).await? {
                oldest_at = Some(oldest_at.map_or(at, |o| o.min(at)));
            }
        }
        Ok(LogLag::new(entries.min(LogLag::COUNT_CAP), oldest_at))
    }

    fn parse_position(&self, text: &str) -> StoreResult<CursorPosition> {
        self.parse(text).map(Pos::text)
    }
}
