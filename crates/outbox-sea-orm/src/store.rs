//! [`SeaOrmStore`]: the [`MessageStore`] on PostgreSQL, MySQL/MariaDB and SQLite.

use crate::dialect::{Dialect, Sql, begin_write, begin_write_with, get, req};
use crate::error::{Attempt, attempt_error, db_error};
use crate::row::{self, ALL_COLUMNS, DELIVERY_COLUMNS, INSERT_COLUMNS};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::{
    BackoffPolicy, Delivery, DeliveryEvent, ErrorText, Identifier, Lease, LeaseToken, MessageId,
    MessageLimits, MessageStatus, OutboxMessage,
};
use outbox_migrations::schema::FINISHED_PREDICATE;
use outbox_ports::{
    ClaimRequest, ClaimedMessage, Disposition, ListFilter, MessageStore, OutboxStats, SettleReport,
    Settlement, StoreError, StoreResult, StoredMessage,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, QueryResult, TransactionSession,
    TransactionTrait, Value,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// The planner settings of a claim on PostgreSQL, for its transaction only: walk the
/// `_due` index in order and stop after the batch, never read and sort the backlog.
///
/// Left to its statistics, the planner picks that plan only when they are fresh. On a
/// table filled in bulk and not analysed yet it expects a handful of pending rows, so
/// it reads all of them, probes the key of each ([`head_of_key`]) and sorts: seconds per
/// claim at 200 000 pending, where the index walk takes milliseconds (docs/benchmarks.md,
/// scenario 5). The probes themselves are written so that statistics cannot spoil them
/// either. The settings make the other plans look too expensive rather than forbid
/// them, so a query they do not fit still runs.
///
/// A plan that must sort anyway (the heads key by key) then looks expensive enough for
/// JIT compilation, which costs more than the claim: `jit` is off too.
///
/// The claim commits without waiting for its WAL flush (`synchronous_commit = off`), as
/// the settlement does: a crash of PostgreSQL that loses it only hands its messages back
/// to the pool, to be published again (at least once; docs/guarantees.md, the duplicate
/// window). A wait for the disk in every claim is latency on every message.
const CLAIM_PLAN: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
    SET LOCAL enable_sort = off; SET LOCAL jit = off; SET LOCAL synchronous_commit = off";

/// How many times a claim the database rolled back to break a deadlock runs again
/// before its error goes to the caller (as `StoreError::Unavailable`).
const CLAIM_RERUNS: u32 = 3;

/// Due rows a claim walks in order, per message of its batch, before it looks for heads
/// key by key: on PostgreSQL when the walk is cut short (see
/// `SeaOrmStore::claim_postgres`), on MySQL/MariaDB and SQLite when it found nothing
/// (see `SeaOrmStore::claim_in_steps`).
const WALK_PER_MESSAGE: usize = 2;

/// Where a claim's walk stops on MySQL/MariaDB and SQLite: the `(next_attempt_at, seq)`
/// of a due row (see `SeaOrmStore::walk_bound`).
type WalkBound = (DateTime<Utc>, i64);

/// The line of [`SeaOrmStore::explain_claim`]'s text that separates the walk's plan from
/// the plan of the heads key by key.
pub const KEY_HEADS_PLAN: &str = "-- when the walk is cut short: heads key by key";

/// Rows per `INSERT` statement of a bulk enqueue. With 17 columns (18 binds per row on
/// PostgreSQL, whose duplicate probe binds the ids again) this stays well under every
/// backend's bind-parameter limit (SQLite's 32 766 is the lowest).
const INSERT_CHUNK: usize = 500;

/// How a [`SeaOrmStore`] writes messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The outbox table (default `outbox_messages`). Routing may give each service its
    /// own table; use one store per table.
    pub table: Identifier,
    /// Attempts each message gets before it is dead (recorded per message at enqueue).
    pub max_attempts: u32,
    /// Validation limits applied at enqueue.
    pub limits: MessageLimits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            table: default_table(),
            max_attempts: BackoffPolicy::default().max_attempts(),
            limits: MessageLimits::default(),
        }
    }
}

fn default_table() -> Identifier {
    match Identifier::parse("table", outbox_migrations::schema::OUTBOX_TABLE) {
        Ok(t) => t,
        Err(_) => unreachable!("the default table name is a valid identifier"),
    }
}

impl StoreConfig {
    /// The same configuration with another outbox table.
    pub fn with_table(mut self, table: Identifier) -> Self {
        self.table = table;
        self
    }

    /// The same configuration with another attempt limit.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The same configuration with other validation limits.
    pub fn with_limits(mut self, limits: MessageLimits) -> Self {
        self.limits = limits;
        self
    }

    fn validate(&self) -> StoreResult<()> {
        if self.max_attempts == 0 || i32::try_from(self.max_attempts).is_err() {
            return Err(StoreError::InvalidInput(format!(
                "max_attempts must be between 1 and {}, got {}",
                i32::MAX,
                self.max_attempts
            )));
        }
        if self.limits.max_payload_bytes == 0 {
            return Err(StoreError::InvalidInput(
                "max_payload_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The outbox on a sea-orm connection.
///
/// - [`enqueue_in`](Self::enqueue_in) writes messages inside the caller's transaction,
///   so they commit or roll back with the business rows.
/// - [`claim`](MessageStore::claim) takes a short transaction that picks due messages
///   which are the first unfinished message of their (service, key), skips rows other
///   relays are claiming (`FOR UPDATE SKIP LOCKED`; SQLite: an immediate transaction),
///   and stamps a lease. Settling is a compare-and-set on the lease token.
/// - Claims select by status, never by position, so a row whose transaction commits
///   late is still delivered.
///
/// Cloning is cheap (the connection is a pool handle).
#[derive(Debug, Clone)]
pub struct SeaOrmStore {
    pub(crate) db: DatabaseConnection,
    pub(crate) dialect: Dialect,
    config: StoreConfig,
    pub(crate) wakers: crate::wake::Wakers,
}

impl SeaOrmStore {
    /// A store on `db`. Fails with [`StoreError::InvalidInput`] on a bad configuration.
    /// The tables must exist: run the migrations, or call
    /// [`create_tables`](Self::create_tables).
    pub fn new(db: DatabaseConnection, config: StoreConfig) -> StoreResult<Self> {
        config.validate()?;
        let dialect = Dialect::of(db.get_database_backend());
        Ok(Self {
            db,
            dialect,
            config,
            wakers: crate::wake::Wakers::default(),
        })
    }

    /// The connection the store uses.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Applies the pending migrations, then creates this store's outbox table if it is
    /// not the default one. For small deployments that opt in to creating the schema at
    /// start-up; larger ones run `outbox migrate up` (or `cargo xtask migrate`) instead.
    pub async fn create_tables(&self) -> StoreResult<()> {
        use outbox_migrations::MigratorTrait;
        outbox_migrations::Migrator::up(&self.db, None)
            .await
            .map_err(db_error)?;
        if self.config.table.as_str() != outbox_migrations::schema::OUTBOX_TABLE {
            outbox_migrations::prepare_outbox_table(&self.db, self.table())
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    pub(crate) fn table(&self) -> &str {
        self.config.table.as_str()
    }

    /// The database's plan for the claim's candidate queries (`EXPLAIN`; on SQLite
    /// `EXPLAIN QUERY PLAN`), one line per plan row, for checking that claims use the
    /// claim indexes. With `analyze` on PostgreSQL the queries run (`EXPLAIN ANALYZE`,
    /// inside a transaction that is rolled back) and the plans show real timings.
    ///
    /// A claim may run two queries, and the text holds both plans: the walk of `_due`,
    /// then, after a line [`KEY_HEADS_PLAN`], the heads key by key that the claim looks
    /// for when the walk is cut short (on PostgreSQL) or found nothing (MySQL/MariaDB
    /// and SQLite; on MySQL/MariaDB for the keys the claim would find blocked now).
    pub async fn explain_claim(&self, limit: usize, analyze: bool) -> StoreResult<String> {
        let prefix = self.explain_prefix(analyze);
        let request = ClaimRequest {
            owner: "explain".into(),
            limit: limit.max(1),
            lease_for: std::time::Duration::from_secs(1),
            now: Utc::now(),
        };
        let txn = begin_write_with(&self.db, self.dialect, CLAIM_PLAN).await?;
        let mut queries = Vec::new();
        let mut sql = Sql::new(self.dialect, prefix);
        if self.dialect == Dialect::Postgres {
            self.push_walk_bound(&mut sql, &request);
            sql.push(" ");
            self.push_candidates(&mut sql, &request, None);
            queries.push(sql);
            let mut sql = Sql::new(
                self.dialect,
                format!("{prefix}{} ", key_heads(self.table())),
            );
            self.push_key_heads_candidates(&mut sql, &request, request.limit);
            queries.push(sql);
        } else {
            let bound = self.walk_bound(&txn, &request).await?;
            self.push_candidates(&mut sql, &request, bound);
            queries.push(sql);
            let blocked = match bound {
                Some(bound) if self.dialect == Dialect::MySql => {
                    self.blocked_keys(&txn, &request, bound).await?
                }
                _ => BTreeMap::new(),
            };
            let mut sql = Sql::new(self.dialect, prefix);
            self.push_key_heads_beyond_walk(&mut sql, &request, &blocked);
            queries.push(sql);
        }
        let mut out = String::new();
        for (i, sql) in queries.into_iter().enumerate() {
            if i > 0 {
                out.push_str(KEY_HEADS_PLAN);
                out.push('\n');
            }
            for r in &txn.query_all_raw(sql.build()).await.map_err(db_error)? {
                out.push_str(&plan_row(r));
                out.push('\n');
            }
        }
        txn.rollback().await.map_err(db_error)?;
        Ok(out)
    }

    /// The database's plan for retention's pick of the rows that
    /// [`purge_finished(published_before, limit)`](MessageStore::purge_finished) deletes
    /// (`EXPLAIN`; on SQLite `EXPLAIN QUERY PLAN`), one line per plan row, for checking
    /// that it reads them through the `_finished` index alone. With `analyze` on
    /// PostgreSQL the query runs (`EXPLAIN (ANALYZE, BUFFERS)`; it only reads) and the
    /// plan shows the rows it read.
    pub async fn explain_purge(
        &self,
        published_before: DateTime<Utc>,
        limit: usize,
        analyze: bool,
    ) -> StoreResult<String> {
        let sql = self.purge_pick(self.explain_prefix(analyze), published_before, limit.max(1));
        let rows = self.db.query_all_raw(sql.build()).await.map_err(db_error)?;
        Ok(rows.iter().map(|r| plan_row(r) + "\n").collect())
    }

    fn explain_prefix(&self, analyze: bool) -> &'static str {
        match (self.dialect, analyze) {
            (Dialect::Postgres, true) => "EXPLAIN (ANALYZE, BUFFERS) ",
            (Dialect::Sqlite, _) => "EXPLAIN QUERY PLAN ",
            _ => "EXPLAIN ",
        }
    }

    /// `prefix`, then retention's pick: the `seq` of at most `limit` finished rows
    /// published before `published_before`, oldest published first (ties in write
    /// order), read through `_finished`, which holds them in that order. A purge that has
    /// caught up therefore reads nothing, whatever the finished rows kept.
    fn purge_pick(&self, prefix: &str, published_before: DateTime<Utc>, limit: usize) -> Sql {
        let t = self.table();
        let dl = self.dialect;
        let hint = dl.index_hint(&format!("{t}_finished"));
        let mut sql = Sql::new(
            dl,
            format!(
                "{prefix}SELECT seq FROM {t}{hint} WHERE {FINISHED_PREDICATE} AND published_at < "
            ),
        );
        sql.bind(dl.time(Some(published_before)))
            .push(" ORDER BY published_at, seq LIMIT ")
            .bind(limit_value(limit));
        sql
    }

    /// Writes `messages` as pending, in order, through `conn`: pass your own
    /// transaction to commit them atomically with your business rows. Returns their ids.
    ///
    /// One round trip for up to 500 messages: they go in one statement (the bulk path;
    /// more go in statements of 500 inside a savepoint).
    ///
    /// All or nothing: every message is validated first (a bad one fails with
    /// [`StoreError::InvalidMessage`] before any SQL runs), and a duplicate id
    /// ([`StoreError::DuplicateMessage`]) writes none of them and leaves your
    /// transaction usable: you can still commit your business rows or roll back. On
    /// PostgreSQL an id that another transaction is writing at the same moment waits
    /// for that transaction, and is a duplicate if it commits.
    pub async fn enqueue_in<C>(
        &self,
        conn: &C,
        messages: Vec<OutboxMessage>,
    ) -> StoreResult<Vec<MessageId>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        self.write_in(conn, messages, MessageStatus::Pending).await
    }

    /// Writes `messages` as audit records (`PersistenceStrategy::DbOnly`, status
    /// `recorded`) through `conn`, with the same checks and all-or-nothing rule as
    /// [`enqueue_in`](Self::enqueue_in). No relay ever claims them.
    pub async fn record_in<C>(
        &self,
        conn: &C,
        messages: Vec<OutboxMessage>,
    ) -> StoreResult<Vec<MessageId>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        self.write_in(conn, messages, MessageStatus::Recorded).await
    }

    pub(crate) async fn write_in<C>(
        &self,
        conn: &C,
        messages: Vec<OutboxMessage>,
        status: MessageStatus,
    ) -> StoreResult<Vec<MessageId>>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        self.check(&messages)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // A multi-statement insert must be atomic: it needs a savepoint (or a transaction
        // of its own when `conn` is a plain connection). A single statement is atomic by
        // itself, and on PostgreSQL it reports a stored id without failing (see
        // `insert_or_nothing`), which would abort the caller's transaction.
        let result = if messages.len() > INSERT_CHUNK {
            let txn = conn.begin().await.map_err(db_error)?;
            match self.insert(&txn, &messages, status).await {
                Ok(()) => txn.commit().await.map_err(db_error),
                Err(e) => {
                    txn.rollback().await.map_err(db_error)?;
                    Err(e)
                }
            }
        } else {
            self.insert(conn, &messages, status).await
        };
        match result {
            Ok(()) => Ok(messages.iter().map(|m| m.id).collect()),
            Err(StoreError::Conflict { .. }) => Err(self.duplicate(conn, &messages).await),
            Err(e) => Err(e),
        }
    }

    /// Validation that needs no database: the message rules and duplicate ids within
    /// the batch.
    pub(crate) fn check(&self, messages: &[OutboxMessage]) -> StoreResult<()> {
        let mut seen = HashSet::with_capacity(messages.len());
        for m in messages {
            self.config
                .limits
                .check(m)
                .map_err(|source| StoreError::InvalidMessage { id: m.id, source })?;
            if !seen.insert(m.id) {
                return Err(StoreError::DuplicateMessage(m.id));
            }
        }
        Ok(())
    }

    async fn insert<C: ConnectionTrait>(
        &self,
        conn: &C,
        messages: &[OutboxMessage],
        status: MessageStatus,
    ) -> StoreResult<()> {
        let max_attempts = if status == MessageStatus::Recorded {
            0
        } else {
            self.config.max_attempts
        };
        let t = self.table();
        for chunk in messages.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(
                self.dialect,
                format!("INSERT INTO {t} ({INSERT_COLUMNS}) VALUES "),
            );
            for (i, m) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind_list(row::insert_values(self.dialect, m, status, max_attempts));
            }
            let written = if self.dialect == Dialect::Postgres {
                self.insert_or_nothing(conn, sql, chunk.len()).await?
            } else {
                conn.execute_raw(sql.build())
                    .await
                    .map_err(db_error)?
                    .rows_affected()
            };
            if written != chunk.len() as u64 {
                return Err(StoreError::Conflict {
                    what: "message",
                    id: String::new(),
                    expected: 0,
                });
            }
        }
        Ok(())
    }

    /// Runs the `INSERT … VALUES` of `sql` on PostgreSQL so that a stored id fails
    /// nothing: `ON CONFLICT (id) DO NOTHING`, and when that skipped a row, a `DELETE`
    /// of the rows it did write, so that the batch writes all or nothing. Returns how
    /// many rows the `INSERT` wrote (fewer than the batch: a duplicate).
    ///
    /// A failing statement would abort the caller's whole transaction, and a savepoint
    /// to contain it costs two round trips. The conflict check is the unique index's
    /// own, with no plan to choose: a `NOT EXISTS` probe, planned while the table was
    /// small, scanned the whole table for a batch of ten ids (a generic plan kept for
    /// the connection's life). An id that another transaction is writing at the same
    /// moment waits for it, then counts as stored if it commits.
    async fn insert_or_nothing<C: ConnectionTrait>(
        &self,
        conn: &C,
        mut sql: Sql,
        rows: usize,
    ) -> StoreResult<u64> {
        sql.push(" ON CONFLICT (id) DO NOTHING RETURNING seq");
        let seqs = query_seqs(conn, sql).await?;
        if seqs.len() < rows && !seqs.is_empty() {
            let mut undo = Sql::new(
                self.dialect,
                format!("DELETE FROM {} WHERE seq IN ", self.table()),
            );
            undo.bind_list(seqs.iter().cloned());
            conn.execute_raw(undo.build()).await.map_err(db_error)?;
        }
        Ok(seqs.len() as u64)
    }

    /// Names the id that collided with a stored message.
    async fn duplicate<C: ConnectionTrait>(
        &self,
        conn: &C,
        messages: &[OutboxMessage],
    ) -> StoreError {
        let mut existing = HashSet::new();
        for chunk in messages.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(
                self.dialect,
                format!("SELECT seq, id FROM {} WHERE id IN ", self.table()),
            );
            sql.bind_list(
                chunk
                    .iter()
                    .map(|m| self.dialect.uuid(Some(m.id.as_uuid()))),
            );
            // A lookup that fails (PostgreSQL refuses every statement of a transaction
            // that a unique violation aborted) names the first id below.
            if let Ok(rows) = conn.query_all_raw(sql.build()).await {
                for r in &rows {
                    if let Ok((_, id)) = row::seq_and_id(self.dialect, r) {
                        existing.insert(id);
                    }
                }
            }
        }
        // A concurrent transaction may hold the colliding id uncommitted; name the first.
        let id = messages
            .iter()
            .map(|m| m.id)
            .find(|id| existing.contains(id))
            .unwrap_or(messages[0].id);
        StoreError::DuplicateMessage(id)
    }

    async fn begin(&self) -> StoreResult<DatabaseTransaction> {
        begin_write(&self.db, self.dialect).await
    }

    /// Reads the delivery state of the rows with these ids, locked for update, keyed by
    /// id.
    async fn lock_by_ids(
        &self,
        txn: &DatabaseTransaction,
        ids: &[MessageId],
    ) -> StoreResult<HashMap<MessageId, (i64, Delivery)>> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(
                self.dialect,
                format!(
                    "SELECT {DELIVERY_COLUMNS} FROM {} WHERE id IN ",
                    self.table()
                ),
            );
            sql.bind_list(chunk.iter().map(|id| self.dialect.uuid(Some(id.as_uuid()))));
            sql.push(self.dialect.for_update());
            for r in txn.query_all_raw(sql.build()).await.map_err(db_error)? {
                let (seq, id) = row::seq_and_id(self.dialect, &r)?;
                out.insert(id, (seq, row::delivery(self.dialect, &r)?));
            }
        }
        Ok(out)
    }

    /// Writes a whole delivery state back to its row (which the caller has locked).
    async fn write(&self, txn: &DatabaseTransaction, seq: i64, d: &Delivery) -> StoreResult<()> {
        let dl = self.dialect;
        let mut sql = Sql::new(dl, format!("UPDATE {} SET status = ", self.table()));
        sql.bind(Value::String(Some(d.status.as_str().to_owned())))
            .push(", attempts = ")
            .bind(count(d.attempts))
            .push(", max_attempts = ")
            .bind(count(d.max_attempts))
            .push(", next_attempt_at = ")
            .bind(dl.time(Some(d.next_attempt_at)))
            .push(", lease_owner = ")
            .bind(Value::String(d.lease.as_ref().map(|l| l.owner.clone())))
            .push(", lease_token = ")
            .bind(dl.uuid(d.lease.as_ref().map(|l| l.token.as_uuid())))
            .push(", lease_expires_at = ")
            .bind(dl.time(d.lease.as_ref().map(|l| l.expires_at)))
            .push(", last_error = ")
            .bind(Value::String(
                d.last_error.as_ref().map(|e| e.as_str().to_owned()),
            ))
            .push(", published_at = ")
            .bind(dl.time(d.published_at))
            .push(", consumed_at = ")
            .bind(dl.time(d.consumed_at))
            .push(" WHERE seq = ")
            .bind(Value::BigInt(Some(seq)));
        txn.execute_raw(sql.build()).await.map_err(db_error)?;
        Ok(())
    }

    /// Applies `event` to each id's row (skipping ids `wanted` refuses), in one
    /// transaction. Returns how many rows changed; unknown ids are skipped.
    async fn apply_each(
        &self,
        ids: &[MessageId],
        now: DateTime<Utc>,
        wanted: impl Fn(&Delivery) -> bool,
        event: impl Fn() -> DeliveryEvent,
    ) -> StoreResult<u64> {
        let txn = self.begin().await?;
        let rows = self.lock_by_ids(&txn, ids).await?;
        let mut changed = 0;
        for id in ids {
            let Some((seq, delivery)) = rows.get(id) else {
                continue;
            };
            if !wanted(delivery) {
                continue;
            }
            let next = delivery
                .apply(event(), now)
                .map_err(|source| StoreError::Transition { id: *id, source })?;
            self.write(&txn, *seq, &next).await?;
            changed += 1;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(changed)
    }

    /// The claim on PostgreSQL, in one transaction that first pins its plan
    /// ([`CLAIM_PLAN`]) and runs up to two statements:
    /// 1. **The walk**: the first due rows in `_due` order, at most [`WALK_PER_MESSAGE`]
    ///    per message of the batch, of which it takes the heads of their key. With many
    ///    keys and few of them blocked this fills the batch after a few rows.
    /// 2. **Heads key by key**, only when the walk was cut short and the batch is not
    ///    full: a skip scan of `_key_unfinished`, one index descent per key with
    ///    unfinished messages, earliest due heads first. It finds what a long run of
    ///    blocked rows hides from the walk: the rows behind a parked head, or a backlog
    ///    whose every key is in flight already (more relays than keys). Unbounded, the
    ///    walk read the whole backlog before giving up, on every claim.
    async fn claim_postgres(
        &self,
        request: &ClaimRequest,
        lease: &Lease,
    ) -> Result<Vec<QueryResult>, Attempt> {
        let t = self.table();
        let dl = self.dialect;
        let mut sql = Sql::new(dl, "");
        self.push_walk_bound(&mut sql, request);
        sql.push(", picked AS (");
        self.push_candidates(&mut sql, request, None);
        sql.push("), claimed AS (");
        self.push_stamp(&mut sql, lease);
        // One row, all `NULL` but `walk_cut`, when nothing is claimed.
        sql.push(
            ") SELECT claimed.*, EXISTS (SELECT 1 FROM b) AS walk_cut \
             FROM (SELECT 1) one LEFT JOIN claimed ON true",
        );
        let txn = begin_write_with(&self.db, dl, CLAIM_PLAN).await?;
        let rows = txn
            .query_all_raw(sql.build())
            .await
            .map_err(attempt_error)?;
        let cut = match rows.first() {
            Some(r) => get::<bool>(r, "walk_cut")?.unwrap_or(false),
            None => false,
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            if get::<i64>(&r, "seq")?.is_some() {
                claimed.push(r);
            }
        }
        if cut && claimed.len() < request.limit {
            let mut sql = Sql::new(dl, format!("{}, picked AS (", key_heads(t)));
            self.push_key_heads_candidates(&mut sql, request, request.limit - claimed.len());
            sql.push(") ");
            self.push_stamp(&mut sql, lease);
            claimed.extend(
                txn.query_all_raw(sql.build())
                    .await
                    .map_err(attempt_error)?,
            );
        }
        txn.commit().await.map_err(attempt_error)?;
        Ok(claimed)
    }

    /// `UPDATE` of the rows in `picked` to in flight under `lease`, `RETURNING` them.
    fn push_stamp(&self, sql: &mut Sql, lease: &Lease) {
        let t = self.table();
        let dl = self.dialect;
        sql.push(&format!(
            "UPDATE {t} SET status = 'in_flight', attempts = {t}.attempts + 1, lease_owner = "
        ))
        .bind(Value::String(Some(lease.owner.clone())))
        .push(", lease_token = ")
        .bind(dl.uuid(Some(lease.token.as_uuid())))
        .push(", lease_expires_at = ")
        .bind(dl.time(Some(lease.expires_at)))
        .push(&format!(
            " FROM picked WHERE {t}.seq = picked.seq RETURNING {}",
            qualified(t, ALL_COLUMNS)
        ));
    }

    /// `WITH b AS (…)` on PostgreSQL: the due row the walk stops at, the last of the
    /// first [`WALK_PER_MESSAGE`] per message of the batch in `_due` order (an index
    /// walk of no more rows); no row when fewer are due, and the walk is not cut.
    fn push_walk_bound(&self, sql: &mut Sql, request: &ClaimRequest) {
        let cap = request.limit.saturating_mul(WALK_PER_MESSAGE);
        sql.push(&format!(
            "WITH b AS (SELECT w.next_attempt_at, w.seq FROM {} w \
             WHERE w.status = 'pending' AND w.next_attempt_at <= ",
            self.table()
        ))
        .bind(self.dialect.time(Some(request.now)))
        .push(" ORDER BY w.next_attempt_at, w.seq OFFSET ")
        .bind(limit_value(cap.saturating_sub(1)))
        .push(" LIMIT 1)");
    }

    /// The candidates among the heads of [`key_heads`] `k` (`SELECT m.seq … FOR UPDATE
    /// SKIP LOCKED`): pending, due, attempts left, still heads, earliest due first.
    ///
    /// `m` is the row version `k` read, found by its `ctid` (a TID scan), not by a key:
    /// statistics that call the partial indexes empty would otherwise turn the lookup
    /// into a scan of one (the trap of [`head_of_key`]). Locking it follows its updates
    /// and checks the conditions again on the newest version.
    fn push_key_heads_candidates(&self, sql: &mut Sql, request: &ClaimRequest, limit: usize) {
        let t = self.table();
        let now = self.dialect.time(Some(request.now));
        sql.push(&format!(
            "SELECT m.seq FROM k JOIN {t} m ON m.ctid = k.ctid \
             WHERE k.status = 'pending' AND k.next_attempt_at <= "
        ))
        .bind(now.clone())
        .push(" AND k.attempts < k.max_attempts AND m.status = 'pending' AND m.next_attempt_at <= ")
        .bind(now)
        .push(&format!(
            " AND m.attempts < m.max_attempts AND {} ORDER BY k.next_attempt_at, k.seq LIMIT ",
            head_of_key(t, Dialect::Postgres)
        ))
        .bind(limit_value(limit))
        .push(" FOR UPDATE OF m SKIP LOCKED");
    }

    /// The claim on MySQL/MariaDB (which cannot update a table it selects from in a
    /// subquery, and has no `UPDATE … RETURNING`) and SQLite: pick, stamp, read back, in
    /// one short transaction.
    ///
    /// The pick walks at most [`WALK_PER_MESSAGE`] due rows per message of the batch
    /// (up to [`walk_bound`](Self::walk_bound)). Only when that found nothing does it
    /// look beyond, key by key ([`pick_beyond_walk`](Self::pick_beyond_walk)): for what
    /// a long run of blocked rows hides (the messages queued behind a parked head), or to
    /// learn that every key is in flight. Walking on instead read the whole backlog, with
    /// its probes, on every such claim. A key behind a run that still yields heads waits
    /// until the rows before it are claimed, as due order says anyway.
    async fn claim_in_steps(
        &self,
        request: &ClaimRequest,
        lease: &Lease,
    ) -> Result<Vec<QueryResult>, Attempt> {
        let dl = self.dialect;
        let txn = self.begin().await?;
        let bound = self.walk_bound(&txn, request).await?;
        let mut seqs = self.pick(&txn, request, bound).await?;
        if let Some(bound) = bound
            && seqs.is_empty()
        {
            seqs = self.pick_beyond_walk(&txn, request, bound).await?;
        }
        if dl == Dialect::MySql && !seqs.is_empty() {
            seqs = self.still_heads(&txn, seqs).await?;
        }
        if seqs.is_empty() {
            txn.commit().await.map_err(attempt_error)?;
            return Ok(Vec::new());
        }
        let mut stamp = Sql::new(
            dl,
            format!(
                "UPDATE {} SET status = 'in_flight', attempts = attempts + 1, lease_owner = ",
                self.table()
            ),
        );
        stamp
            .bind(Value::String(Some(lease.owner.clone())))
            .push(", lease_token = ")
            .bind(dl.uuid(Some(lease.token.as_uuid())))
            .push(", lease_expires_at = ")
            .bind(dl.time(Some(lease.expires_at)))
            .push(" WHERE seq IN ")
            .bind_list(seqs.clone());
        txn.execute_raw(stamp.build())
            .await
            .map_err(attempt_error)?;
        let mut read = Sql::new(
            dl,
            format!("SELECT {ALL_COLUMNS} FROM {} WHERE seq IN ", self.table()),
        );
        read.bind_list(seqs);
        let rows = txn
            .query_all_raw(read.build())
            .await
            .map_err(attempt_error)?;
        txn.commit().await.map_err(attempt_error)?;
        Ok(rows)
    }

    /// The `(next_attempt_at, seq)` of the due row a claim on MySQL/MariaDB or SQLite
    /// walks to: the last of the first [`WALK_PER_MESSAGE`] per message of the batch in
    /// `_due` order (an index walk of no more rows). `None` when fewer are due: the walk
    /// takes them all anyway.
    async fn walk_bound(
        &self,
        txn: &DatabaseTransaction,
        request: &ClaimRequest,
    ) -> StoreResult<Option<WalkBound>> {
        let t = self.table();
        let dl = self.dialect;
        let cap = request.limit.saturating_mul(WALK_PER_MESSAGE);
        let mut sql = Sql::new(
            dl,
            format!(
                "SELECT next_attempt_at, seq FROM {t}{} WHERE status = 'pending' \
                 AND next_attempt_at <= ",
                dl.index_hint(&format!("{t}_due")),
            ),
        );
        sql.bind(dl.time(Some(request.now)))
            .push(" ORDER BY next_attempt_at, seq LIMIT 1 OFFSET ")
            .bind(limit_value(cap.saturating_sub(1)));
        let Some(row) = txn.query_one_raw(sql.build()).await.map_err(db_error)? else {
            return Ok(None);
        };
        Ok(Some((
            req(dl.get_time(&row, "next_attempt_at"), "next_attempt_at")?,
            req(get::<i64>(&row, "seq"), "seq")?,
        )))
    }

    /// The seqs of the candidates [`push_candidates`](Self::push_candidates) selects
    /// (MySQL/MariaDB and SQLite), walking no further than `bound`.
    async fn pick(
        &self,
        txn: &DatabaseTransaction,
        request: &ClaimRequest,
        bound: Option<WalkBound>,
    ) -> StoreResult<Vec<Value>> {
        let mut sql = Sql::new(self.dialect, "");
        self.push_candidates(&mut sql, request, bound);
        query_seqs(txn, sql).await
    }

    /// The seqs of the heads a claim on MySQL/MariaDB or SQLite takes when its bounded
    /// walk found nothing: the first unfinished message of each key, read key by
    /// key, that is pending, due, with attempts left and no message of its key in
    /// flight; earliest due first.
    ///
    /// - SQLite: a skip scan of `_key_unfinished`, one index descent per key with
    ///   unfinished messages ([`sqlite_key_heads`]), as on PostgreSQL.
    /// - MySQL/MariaDB: a correlated lookup is not an index range there, so a skip scan
    ///   would read every pending entry per key (and recursion stops at 1,000 steps by
    ///   default). Instead the claim first lists the keys known to be blocked
    ///   ([`blocked_keys`](Self::blocked_keys)), then reads the first pending message of
    ///   every other key from `_key_unfinished (status, service, partition_key, seq)`,
    ///   through index ranges that leave the blocked keys out: with every key in flight
    ///   it reads nothing.
    async fn pick_beyond_walk(
        &self,
        txn: &DatabaseTransaction,
        request: &ClaimRequest,
        bound: WalkBound,
    ) -> StoreResult<Vec<Value>> {
        let blocked = match self.dialect {
            Dialect::MySql => self.blocked_keys(txn, request, bound).await?,
            _ => BTreeMap::new(),
        };
        let mut sql = Sql::new(self.dialect, "");
        self.push_key_heads_beyond_walk(&mut sql, request, &blocked);
        query_seqs(txn, sql).await
    }

    /// The statement of [`pick_beyond_walk`](Self::pick_beyond_walk), given the keys it
    /// leaves out (on MySQL/MariaDB; `blocked` is empty on SQLite).
    fn push_key_heads_beyond_walk(
        &self,
        sql: &mut Sql,
        request: &ClaimRequest,
        blocked: &BTreeMap<String, Vec<String>>,
    ) {
        let t = self.table();
        let dl = self.dialect;
        if dl == Dialect::Sqlite {
            // `CROSS JOIN`: the heads drive the join (SQLite would rather walk `m`).
            sql.push(&format!(
                "{} SELECT m.seq FROM k CROSS JOIN {t} m WHERE m.seq = k.seq",
                sqlite_key_heads(t)
            ));
        } else {
            sql.push(&format!(
                "SELECT m.seq FROM (SELECT MIN(e.seq) AS seq FROM {t} e{} \
                 WHERE e.status = 'pending'",
                dl.index_hint(&format!("{t}_key_unfinished"))
            ));
            push_unblocked(sql, blocked);
            // `STRAIGHT_JOIN`: the heads drive the join, not a walk of every pending `m`
            // (which MariaDB chose when it expected many heads).
            sql.push(&format!(
                " GROUP BY e.service, e.partition_key) k STRAIGHT_JOIN {t} m WHERE m.seq = k.seq"
            ));
        }
        sql.push(" AND m.status = 'pending' AND m.next_attempt_at <= ")
            .bind(dl.time(Some(request.now)))
            .push(&format!(
                " AND m.attempts < m.max_attempts AND {} ORDER BY m.next_attempt_at, m.seq LIMIT ",
                head_of_key(t, dl)
            ))
            .bind(limit_value(request.limit))
            .push(dl.skip_locked());
    }

    /// The keys (by service) whose pending messages a claim on MySQL/MariaDB cannot take
    /// now, as far as it knows after its walk to `bound`:
    ///
    /// - every key with a message in flight (read from the in-flight entries of
    ///   `_key_unfinished`, a few per relay batch);
    /// - every key of the walk's rows (the first [`WALK_PER_MESSAGE`] due rows per
    ///   message of the batch, in `_due` order) whose first pending message is not a
    ///   claimable head beyond the walk: not due or out of attempts (a parked head, whose
    ///   followers fill the walk), or within the walk itself, where the claim found it
    ///   locked (another relay is claiming it; its followers fill this claim's walk).
    ///
    /// A key of the walk whose head is due but sorts after the bound (a retried head,
    /// due after the messages enqueued while it waited) is not blocked: its head is what
    /// the claim looks for.
    async fn blocked_keys(
        &self,
        txn: &DatabaseTransaction,
        request: &ClaimRequest,
        (at, seq): WalkBound,
    ) -> StoreResult<BTreeMap<String, Vec<String>>> {
        let t = self.table();
        let dl = self.dialect;
        let now = dl.time(Some(request.now));
        let mut sql = Sql::new(
            dl,
            format!(
                "SELECT DISTINCT f.service, f.partition_key FROM {t} f \
                 WHERE f.status = 'in_flight' UNION SELECT DISTINCT w.service, w.partition_key \
                 FROM (SELECT d.service, d.partition_key FROM {t} d{} \
                 WHERE d.status = 'pending' AND d.next_attempt_at <= ",
                dl.index_hint(&format!("{t}_due"))
            ),
        );
        sql.bind(now.clone())
            .push(" ORDER BY d.next_attempt_at, d.seq LIMIT ")
            .bind(limit_value(request.limit.saturating_mul(WALK_PER_MESSAGE)))
            .push(&format!(
                ") w WHERE NOT EXISTS (SELECT 1 FROM {t} h WHERE h.seq = (SELECT e.seq FROM {t} e \
                 WHERE e.service = w.service AND e.partition_key = w.partition_key \
                 AND e.status = 'pending' ORDER BY e.seq LIMIT 1) AND h.next_attempt_at <= "
            ))
            .bind(now)
            .push(" AND h.attempts < h.max_attempts AND (h.next_attempt_at > ")
            .bind(dl.time(Some(at)))
            .push(" OR h.next_attempt_at = ")
            .bind(dl.time(Some(at)))
            .push(" AND h.seq > ")
            .bind(Value::BigInt(Some(seq)))
            .push("))");
        let mut blocked: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in txn.query_all_raw(sql.build()).await.map_err(db_error)? {
            blocked
                .entry(req(get(&r, "service"), "service")?)
                .or_default()
                .push(req(get(&r, "partition_key"), "partition_key")?);
        }
        Ok(blocked)
    }

    /// `SELECT seq` of the messages a claim may take: pending, due, attempts left, and
    /// heads of their key (see [`head_of_key`]). Locked rows are skipped (another relay
    /// is claiming them). With `bound` (MySQL/MariaDB and SQLite; PostgreSQL bounds its
    /// walk in the statement, see [`push_walk_bound`](Self::push_walk_bound)), only rows
    /// up to it in `_due` order: its time is the upper end of the index range.
    fn push_candidates(&self, sql: &mut Sql, request: &ClaimRequest, bound: Option<WalkBound>) {
        let t = self.table();
        let dl = self.dialect;
        sql.push(&format!(
            "SELECT m.seq FROM {t} m{} WHERE m.status = 'pending' AND m.next_attempt_at <= ",
            dl.index_hint(&format!("{t}_due"))
        ))
        .bind(dl.time(Some(bound.map_or(request.now, |(at, _)| at))));
        if let Some((at, seq)) = bound {
            // Of the rows due at the bound's own instant, those up to it.
            sql.push(" AND (m.next_attempt_at < ")
                .bind(dl.time(Some(at)))
                .push(" OR m.seq <= ")
                .bind(Value::BigInt(Some(seq)))
                .push(")");
        }
        if self.dialect == Dialect::Postgres {
            // Up to the bound of `b` (`push_walk_bound`), an index condition on `_due`.
            sql.push(
                " AND (m.next_attempt_at, m.seq) <= (SELECT COALESCE(MAX(b.next_attempt_at), ",
            )
            .bind(self.dialect.time(Some(request.now)))
            .push(&format!("), COALESCE(MAX(b.seq), {}) FROM b)", i64::MAX));
        }
        sql.push(&format!(
            " AND m.attempts < m.max_attempts AND {} ORDER BY m.next_attempt_at, m.seq LIMIT ",
            head_of_key(t, self.dialect)
        ))
        .bind(limit_value(request.limit))
        .push(self.dialect.skip_locked());
    }

    /// Settles a batch in which every message was published (the common case) on
    /// PostgreSQL and SQLite without reading the rows first: one `UPDATE … RETURNING`
    /// per lease token (a batch has one) and [`INSERT_CHUNK`] ids, whose condition is
    /// the transition's own (in flight under that token). A message it leaves alone
    /// lost its lease, or is unknown, which fails the whole settlement as the general
    /// path does.
    async fn settle_published(
        &self,
        txn: &DatabaseTransaction,
        settlements: &[Settlement],
        now: DateTime<Utc>,
    ) -> StoreResult<SettleReport> {
        let dl = self.dialect;
        let mut by_token: BTreeMap<Uuid, Vec<MessageId>> = BTreeMap::new();
        for s in settlements {
            by_token.entry(s.token.as_uuid()).or_default().push(s.id);
        }
        let mut settled: HashSet<MessageId> = HashSet::with_capacity(settlements.len());
        for (token, ids) in &by_token {
            for chunk in ids.chunks(INSERT_CHUNK) {
                let mut sql = Sql::new(
                    dl,
                    format!(
                        "UPDATE {} SET status = 'published', lease_owner = NULL, \
                         lease_token = NULL, lease_expires_at = NULL, published_at = ",
                        self.table()
                    ),
                );
                sql.bind(dl.time(Some(now)))
                    .push(" WHERE status = 'in_flight' AND lease_token = ")
                    .bind(dl.uuid(Some(*token)))
                    .push(" AND id IN ")
                    .bind_list(chunk.iter().map(|id| dl.uuid(Some(id.as_uuid()))))
                    .push(" RETURNING seq, id");
                for r in txn.query_all_raw(sql.build()).await.map_err(db_error)? {
                    settled.insert(row::seq_and_id(dl, &r)?.1);
                }
            }
        }
        let unsettled: Vec<MessageId> = settlements
            .iter()
            .map(|s| s.id)
            .filter(|id| !settled.contains(id))
            .collect();
        if !unsettled.is_empty() {
            // The `UPDATE` waited for any lock on them, so they did not match: lost
            // leases, unless unknown.
            let known = self.lock_by_ids(txn, &unsettled).await?;
            if let Some(missing) = unsettled.iter().find(|id| !known.contains_key(id)) {
                return Err(StoreError::NotFound {
                    what: "message",
                    id: missing.to_string(),
                });
            }
        }
        let mut report = SettleReport::default();
        report.settled = settled.len();
        report.lease_lost = unsettled;
        Ok(report)
    }

    /// Of the locked candidates `seqs`, those that are still heads of their key when
    /// read with a fresh snapshot.
    ///
    /// MySQL/MariaDB need this: a locking read sees the latest committed rows, but the
    /// `NOT EXISTS` probe inside it reads the statement's snapshot, so two messages of a
    /// key committed while the claim was scanning both look like heads. A new statement
    /// under read committed sees them both and keeps only the first.
    async fn still_heads(
        &self,
        txn: &DatabaseTransaction,
        seqs: Vec<Value>,
    ) -> StoreResult<Vec<Value>> {
        let t = self.table();
        let mut sql = Sql::new(
            self.dialect,
            format!("SELECT m.seq FROM {t} m WHERE m.seq IN "),
        );
        sql.bind_list(seqs)
            .push(&format!(" AND {}", head_of_key(t, self.dialect)));
        query_seqs(txn, sql).await
    }
}

impl SeaOrmStore {
    /// The highest [`StoredMessage::seq`] in the table (`None` when it is empty): the
    /// position of the newest message, for example to measure how far a named cursor
    /// lags behind. One primary-key lookup.
    pub async fn latest_seq(&self) -> StoreResult<Option<u64>> {
        let sql = Sql::new(
            self.dialect,
            format!("SELECT MAX(seq) AS seq FROM {}", self.table()),
        );
        let Some(r) = self.db.query_one_raw(sql.build()).await.map_err(db_error)? else {
            return Ok(None);
        };
        Ok(get::<i64>(&r, "seq")?.map(|s| u64::try_from(s).unwrap_or(0)))
    }

    /// The heads of parked keys, in write order, at most `limit`: each message that
    /// is pending after a failed attempt and is the first unfinished message of its
    /// (service, key), so its whole key waits for its retry. These are the messages
    /// [`OutboxStats::parked_keys`] counts; an operator inspects them and may
    /// [`kill`](MessageStore::kill) one to let its key flow. Reads only unfinished rows.
    pub async fn parked_heads(&self, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.db
            .query_all_raw(self.parked_heads_query(limit).build())
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| row::stored(self.dialect, r))
            .collect()
    }

    /// The query of [`parked_heads`](Self::parked_heads).
    fn parked_heads_query(&self, limit: usize) -> Sql {
        let t = self.table();
        let mut sql = Sql::new(
            self.dialect,
            format!(
                "SELECT {} FROM {t} m WHERE m.status = 'pending' AND m.attempts > 0 AND {} \
                 ORDER BY m.seq LIMIT ",
                qualified("m", ALL_COLUMNS),
                earlier_unfinished_absent(t, self.dialect)
            ),
        );
        sql.bind(limit_value(limit));
        sql
    }

    /// The counters, per service (`by_service`) or for the whole table (under the key
    /// `""`; absent when the table is empty).
    ///
    /// - Status counts: one `GROUP BY` over the table (finished rows are counted too,
    ///   so this reads them; a covering index would not change that).
    /// - Oldest unsent: the first unfinished row by write order, read from the
    ///   `(status, seq)` index, or per service the `MIN(seq)` over unfinished rows only.
    /// - Parked keys: pending rows with a failed attempt that are the first unfinished
    ///   row of their key ([`earlier_unfinished_absent`], probes on the
    ///   `_key_unfinished` index like the claim's); only unfinished rows are read.
    async fn collect_stats(&self, by_service: bool) -> StoreResult<BTreeMap<String, OutboxStats>> {
        let t = self.table();
        let dl = self.dialect;
        let (svc, group) = if by_service {
            ("service, ", "service, ")
        } else {
            ("'' AS service, ", "")
        };
        let retried = "CASE WHEN attempts > 0 THEN 1 ELSE 0 END";
        let counts = Sql::new(
            dl,
            format!(
                "SELECT {svc}status, {retried} AS retried, COUNT(*) AS n FROM {t} \
                 GROUP BY {group}status, {retried}"
            ),
        );
        #[derive(Default)]
        struct Acc {
            by_status: HashMap<MessageStatus, u64>,
            retrying: u64,
            oldest: Option<DateTime<Utc>>,
            parked: u64,
        }
        let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
        for r in self
            .db
            .query_all_raw(counts.build())
            .await
            .map_err(db_error)?
        {
            let service: String = req(get(&r, "service"), "service")?;
            let status: String = req(get(&r, "status"), "status")?;
            let status: MessageStatus = status
                .parse()
                .map_err(|e| crate::error::decode_error("status", e))?;
            let retried = req(get::<i32>(&r, "retried"), "retried")? == 1;
            let n = u64::try_from(req(get::<i64>(&r, "n"), "n")?).unwrap_or(0);
            let a = acc.entry(service).or_default();
            *a.by_status.entry(status).or_default() += n;
            if status == MessageStatus::Pending && retried {
                a.retrying += n;
            }
        }
        if acc.is_empty() {
            return Ok(BTreeMap::new());
        }

        if by_service {
            let oldest = Sql::new(
                dl,
                format!(
                    "SELECT o.service, m.created_at FROM (SELECT service, MIN(seq) AS seq \
                     FROM {t} WHERE status IN ('pending', 'in_flight') GROUP BY service) o \
                     JOIN {t} m ON m.seq = o.seq"
                ),
            );
            for r in self
                .db
                .query_all_raw(oldest.build())
                .await
                .map_err(db_error)?
            {
                let service: String = req(get(&r, "service"), "service")?;
                let at = req(dl.get_time(&r, "created_at"), "created_at")?;
                acc.entry(service).or_default().oldest = Some(at);
            }
        } else {
            // The first of each unfinished status by write order, each an index lookup
            // on (status, seq).
            let mut oldest: Option<(i64, DateTime<Utc>)> = None;
            for status in [MessageStatus::Pending, MessageStatus::InFlight] {
                let mut sql = Sql::new(
                    dl,
                    format!("SELECT seq, created_at FROM {t} WHERE status = "),
                );
                sql.bind(Value::String(Some(status.as_str().to_owned())))
                    .push(" ORDER BY seq LIMIT 1");
                if let Some(r) = self.db.query_one_raw(sql.build()).await.map_err(db_error)? {
                    let seq = req(get::<i64>(&r, "seq"), "seq")?;
                    let at = req(dl.get_time(&r, "created_at"), "created_at")?;
                    if oldest.is_none_or(|(s, _)| seq < s) {
                        oldest = Some((seq, at));
                    }
                }
            }
            if let Some(a) = acc.values_mut().next() {
                a.oldest = oldest.map(|(_, at)| at);
            }
        }

        for r in self
            .db
            .query_all_raw(self.parked_count_query(by_service).build())
            .await
            .map_err(db_error)?
        {
            let service: String = req(get(&r, "service"), "service")?;
            let n = u64::try_from(req(get::<i64>(&r, "n"), "n")?).unwrap_or(0);
            if let Some(a) = acc.get_mut(&service) {
                a.parked = n;
            }
        }

        Ok(acc
            .into_iter()
            .map(|(service, a)| {
                let count = |s| a.by_status.get(&s).copied().unwrap_or(0);
                let stats = OutboxStats::new(
                    count(MessageStatus::Pending) - a.retrying,
                    a.retrying,
                    count(MessageStatus::InFlight),
                    count(MessageStatus::Published),
                    count(MessageStatus::Consumed),
                    count(MessageStatus::Dead),
                    a.oldest,
                )
                .with_recorded(count(MessageStatus::Recorded))
                .with_parked_keys(a.parked);
                (service, stats)
            })
            .collect())
    }

    /// The parked-keys count of [`collect_stats`](Self::collect_stats), per service or
    /// (under `''`) for the table.
    fn parked_count_query(&self, by_service: bool) -> Sql {
        let t = self.table();
        let (svc, group) = if by_service {
            ("m.service, ", " GROUP BY m.service")
        } else {
            ("'' AS service, ", "")
        };
        Sql::new(
            self.dialect,
            format!(
                "SELECT {svc}COUNT(*) AS n FROM {t} m WHERE m.status = 'pending' \
                 AND m.attempts > 0 AND {}{group}",
                earlier_unfinished_absent(t, self.dialect)
            ),
        )
    }
}

/// Runs a `SELECT seq …` and returns the sequence numbers as bindable values.
async fn query_seqs<C: ConnectionTrait>(conn: &C, sql: Sql) -> StoreResult<Vec<Value>> {
    conn.query_all_raw(sql.build())
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| req(get::<i64>(r, "seq"), "seq").map(|s| Value::BigInt(Some(s))))
        .collect()
}

/// The per-key rule as SQL over candidate `m`: no earlier pending message of its
/// (service, key), and no message of that key in flight (earlier or, after an operator's
/// replay or a late commit, later).
///
/// On MySQL and SQLite: two probes rather than one with an `OR`, each on
/// `_key_unfinished` (on MySQL its `status` column comes before `seq`):
/// - no earlier pending message: on SQLite no earlier unfinished one (the same, given the
///   second probe), a `NOT EXISTS` that reads one entry of `_key_unfinished` below
///   `m.seq`. It repeats the index's predicate and names the index: SQLite uses a
///   partial index only for a query with its predicate, and otherwise read every
///   earlier pending row through `_status`. On MySQL/MariaDB `m` is the first pending
///   row of its key, a scalar subquery that reads one index entry. MariaDB turned
///   `e.seq < m.seq` into a filter over every pending entry of the key, not a range: a
///   claim read a key's whole backlog for each of its heads (20 000 entries for ten
///   heads of 2 000 messages);
/// - no row of the key in flight: `NOT EXISTS` over the few rows in flight.
///
/// On PostgreSQL the plan must not depend on statistics, which are often missing (a
/// table filled in bulk) or stale (analysed while the relay kept up, so they say
/// nothing is pending). Left to them, the planner turned the probes into anti-joins that
/// read the whole key index once per candidate: 90 s for one claim at 200 000 pending
/// (docs/benchmarks.md, scenario 5). So each probe is a subplan run once per candidate:
/// - `m` is the first unfinished row of its key: a scalar subquery (never turned into a
///   join) over `_key_unfinished`, whose predicate it repeats, ordered by all three
///   index columns so that the primary key cannot serve the order instead (a walk from
///   the oldest row of the table);
/// - no row of the key is in flight: `NOT EXISTS … OFFSET 0` (the `OFFSET` keeps it
///   from becoming an anti-join), a lookup in `_key_in_flight`.
fn head_of_key(t: &str, dialect: Dialect) -> String {
    if dialect == Dialect::Postgres {
        return format!(
            "m.seq = (SELECT e.seq FROM {t} e WHERE e.service = m.service \
             AND e.partition_key = m.partition_key AND e.status IN ('pending', 'in_flight') \
             ORDER BY e.service, e.partition_key, e.seq LIMIT 1) \
             AND NOT EXISTS (SELECT 1 FROM {t} f WHERE f.service = m.service \
             AND f.partition_key = m.partition_key AND f.status = 'in_flight' OFFSET 0)"
        );
    }
    let first_pending = if dialect == Dialect::MySql {
        format!(
            "m.seq = (SELECT e.seq FROM {t} e WHERE e.service = m.service \
             AND e.partition_key = m.partition_key AND e.status = 'pending' \
             ORDER BY e.seq LIMIT 1)"
        )
    } else {
        earlier_unfinished_absent(t, dialect)
    };
    format!(
        "{first_pending} AND NOT EXISTS (SELECT 1 FROM {t} f WHERE f.service = m.service \
         AND f.partition_key = m.partition_key AND f.status = 'in_flight')"
    )
}

/// `WITH RECURSIVE k (service, partition_key, seq, status, …, ctid)`: the first unfinished
/// message of every key, in key order, by a skip scan of `_key_unfinished`
/// (PostgreSQL): each step descends the index once to the first row of the next key.
/// Costs one descent per key with unfinished messages, however many messages each holds.
fn key_heads(t: &str) -> String {
    const HEAD: &str = "e.service, e.partition_key, e.seq, e.status, e.next_attempt_at, \
        e.attempts, e.max_attempts, e.ctid";
    format!(
        "WITH RECURSIVE k AS ((SELECT {HEAD} FROM {t} e \
         WHERE e.status IN ('pending', 'in_flight') \
         ORDER BY e.service, e.partition_key, e.seq LIMIT 1) \
         UNION ALL SELECT h.* FROM k CROSS JOIN LATERAL (SELECT {HEAD} FROM {t} e \
         WHERE e.status IN ('pending', 'in_flight') \
         AND (e.service, e.partition_key) > (k.service, k.partition_key) \
         ORDER BY e.service, e.partition_key, e.seq LIMIT 1) h)"
    )
}

/// Keys per `NOT IN` list of [`push_unblocked`]: MySQL and MariaDB turn a `NOT IN` list
/// of fewer than 1,000 constants into index ranges, and ignore a longer one.
const NOT_IN_CHUNK: usize = 500;

/// ` AND (…)` over `e`: a key that is not in `blocked` (keys by service), as index
/// ranges on MySQL/MariaDB's `_key_unfinished (status, service, partition_key, seq)`:
/// per service with blocked keys, `e.service = ? AND e.partition_key NOT IN (…)`, and
/// every other service. Nothing when `blocked` is empty.
fn push_unblocked(sql: &mut Sql, blocked: &BTreeMap<String, Vec<String>>) {
    if blocked.is_empty() {
        return;
    }
    sql.push(" AND (");
    for (service, keys) in blocked {
        sql.push("(e.service = ")
            .bind(Value::String(Some(service.clone())));
        for chunk in keys.chunks(NOT_IN_CHUNK) {
            sql.push(" AND e.partition_key NOT IN ")
                .bind_list(chunk.iter().map(|k| Value::String(Some(k.clone()))));
        }
        sql.push(") OR ");
    }
    sql.push("e.service NOT IN ")
        .bind_list(blocked.keys().map(|s| Value::String(Some(s.clone()))))
        .push(")");
}

/// `WITH RECURSIVE k (seq, service, partition_key)`: the first unfinished message of
/// every key, in key order, by a skip scan of `_key_unfinished` (SQLite): each step
/// descends the index once, to the next key of the same service or else the first key of
/// the next service. (A row-value comparison would be an index range on `service`
/// only.) Costs one descent per key with unfinished messages.
fn sqlite_key_heads(t: &str) -> String {
    const UNFINISHED: &str = "e.status IN ('pending', 'in_flight')";
    const ORDER: &str = "ORDER BY e.service, e.partition_key, e.seq LIMIT 1";
    let e = format!(
        "{t} e{}",
        Dialect::Sqlite.index_hint(&format!("{t}_key_unfinished"))
    );
    format!(
        "WITH RECURSIVE k (seq, service, partition_key) AS (SELECT * FROM (SELECT e.seq, \
         e.service, e.partition_key FROM {e} WHERE {UNFINISHED} {ORDER}) \
         UNION ALL SELECT x.seq, x.service, x.partition_key FROM k CROSS JOIN {t} x \
         WHERE x.seq = COALESCE((SELECT e.seq FROM {e} WHERE {UNFINISHED} \
         AND e.service = k.service AND e.partition_key > k.partition_key {ORDER}), \
         (SELECT e.seq FROM {e} WHERE {UNFINISHED} AND e.service > k.service {ORDER})))"
    )
}

/// Over candidate `m`: no earlier unfinished message of its (service, key), so `m` is
/// the first unfinished message of its key.
///
/// On SQLite one probe in `_key_unfinished`'s own predicate, naming the index: SQLite
/// uses a partial index only for a query that repeats its predicate, and otherwise read
/// every earlier pending row of every key through `_status` (the parked-keys count took
/// 6.5 s over 100 000 retrying messages in the `sqlite3` shell, 0.14 s this way).
/// Elsewhere one probe per status, so that each is an index range bounded by `m.seq` on
/// `_key_unfinished` (on MySQL an equality on its `status` column).
fn earlier_unfinished_absent(t: &str, dialect: Dialect) -> String {
    if dialect == Dialect::Sqlite {
        return format!(
            "NOT EXISTS (SELECT 1 FROM {t} e{} \
             WHERE e.service = m.service AND e.partition_key = m.partition_key \
             AND e.status IN ('pending', 'in_flight') AND e.seq < m.seq)",
            dialect.index_hint(&format!("{t}_key_unfinished"))
        );
    }
    ["pending", "in_flight"]
        .map(|status| {
            format!(
                "NOT EXISTS (SELECT 1 FROM {t} e WHERE e.service = m.service \
                 AND e.partition_key = m.partition_key AND e.status = '{status}' \
                 AND e.seq < m.seq)"
            )
        })
        .join(" AND ")
}

/// One row of an `EXPLAIN`, its cells joined with ` | `.
fn plan_row(r: &QueryResult) -> String {
    let cells: Vec<String> = (0..r.column_names().len())
        .map(|i| {
            r.try_get_by_index::<Option<String>>(i)
                .ok()
                .flatten()
                .or_else(|| {
                    r.try_get_by_index::<Option<i64>>(i)
                        .ok()
                        .flatten()
                        .map(|n| n.to_string())
                })
                .or_else(|| {
                    // MySQL/MariaDB's `EXPLAIN` has an unsigned `id` column.
                    r.try_get_by_index::<Option<u64>>(i)
                        .ok()
                        .flatten()
                        .map(|n| n.to_string())
                })
                .unwrap_or_else(|| "NULL".into())
        })
        .collect();
    cells.join(" | ")
}

/// `a, b` → `t.a, t.b`.
fn qualified(table: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(n: u32) -> Value {
    Value::Int(Some(i32::try_from(n).unwrap_or(i32::MAX)))
}

pub(crate) fn limit_value(limit: usize) -> Value {
    Value::BigInt(Some(i64::try_from(limit).unwrap_or(i64::MAX)))
}

#[async_trait]
impl MessageStore for SeaOrmStore {
    async fn enqueue(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        let ids = self.enqueue_in(&self.db, messages).await?;
        self.wakers.wake();
        Ok(ids)
    }

    async fn record(&self, messages: Vec<OutboxMessage>) -> StoreResult<Vec<MessageId>> {
        self.record_in(&self.db, messages).await
    }

    async fn claim(&self, request: &ClaimRequest) -> StoreResult<Vec<ClaimedMessage>> {
        request.validate()?;
        let lease = Lease {
            owner: request.owner.clone(),
            token: LeaseToken::from_uuid(Uuid::new_v4()),
            expires_at: request.lease_expires_at(),
        };
        // InnoDB takes locks on the `_due` entries a claim walks past, and a concurrent
        // claim's `UPDATE` of those rows waits for them: two claims can deadlock, and
        // one is rolled back. Nothing of it took effect, so it runs again at once,
        // rather than failing the relay's step (which then pauses).
        let mut rolled_back = 0;
        let rows = loop {
            let attempt = match self.dialect {
                Dialect::Postgres => self.claim_postgres(request, &lease).await,
                _ => self.claim_in_steps(request, &lease).await,
            };
            match attempt {
                Ok(rows) => break rows,
                Err(Attempt::RolledBack(e)) if rolled_back < CLAIM_RERUNS => {
                    rolled_back += 1;
                    tracing::debug!(error = %e, rolled_back, "claim rolled back; running it again");
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut claimed = rows
            .iter()
            .map(|r| row::stored(self.dialect, r))
            .collect::<StoreResult<Vec<_>>>()?;
        claimed.sort_by_key(|s| (s.delivery.next_attempt_at, s.seq));
        Ok(claimed
            .into_iter()
            .map(|s| ClaimedMessage {
                seq: s.seq,
                message: s.message,
                lease: lease.clone(),
                attempts: s.delivery.attempts,
                max_attempts: s.delivery.max_attempts,
            })
            .collect())
    }

    async fn settle(
        &self,
        settlements: Vec<Settlement>,
        now: DateTime<Utc>,
    ) -> StoreResult<SettleReport> {
        if settlements.is_empty() {
            return Ok(SettleReport::default());
        }
        // Losing this commit in a crash (PostgreSQL) only re-publishes the messages,
        // which at-least-once delivery allows and the consumer's inbox absorbs.
        let txn =
            begin_write_with(&self.db, self.dialect, "SET LOCAL synchronous_commit = off").await?;
        if self.dialect != Dialect::MySql
            && settlements
                .iter()
                .all(|s| matches!(s.disposition, Disposition::Published))
        {
            let report = self.settle_published(&txn, &settlements, now).await?;
            #[cfg(feature = "failpoints")]
            fail::fail_point!("store.settle_txn");
            txn.commit().await.map_err(db_error)?;
            return Ok(report);
        }
        let ids: Vec<MessageId> = settlements.iter().map(|s| s.id).collect();
        let rows = self.lock_by_ids(&txn, &ids).await?;
        if let Some(missing) = ids.iter().find(|id| !rows.contains_key(id)) {
            // Dropping the transaction rolls it back: nothing is recorded.
            return Err(StoreError::NotFound {
                what: "message",
                id: missing.to_string(),
            });
        }
        let mut report = SettleReport::default();
        let mut published = Vec::new();
        for s in settlements {
            let (seq, delivery) = &rows[&s.id];
            let owned = delivery.lease.as_ref().is_some_and(|l| l.token == s.token);
            if !owned {
                report.lease_lost.push(s.id);
                continue;
            }
            let id = s.id;
            let next = delivery
                .apply(s.event(), now)
                .map_err(|source| StoreError::Transition { id, source })?;
            if next.status == MessageStatus::Published {
                // The common case, written for the whole batch in one statement below.
                published.push(Value::BigInt(Some(*seq)));
            } else {
                self.write(&txn, *seq, &next).await?;
            }
            report.settled += 1;
        }
        for chunk in published.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(
                self.dialect,
                format!(
                    "UPDATE {} SET status = 'published', lease_owner = NULL, lease_token = NULL, \
                     lease_expires_at = NULL, published_at = ",
                    self.table()
                ),
            );
            sql.bind(self.dialect.time(Some(now)))
                .push(" WHERE seq IN ")
                .bind_list(chunk.iter().cloned());
            txn.execute_raw(sql.build()).await.map_err(db_error)?;
        }
        // Crash-point kit: the outcomes are written but not committed; a crash rolls
        // them back, so the published messages will be published again.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("store.settle_txn");
        txn.commit().await.map_err(db_error)?;
        Ok(report)
    }

    async fn release_expired(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let txn = self.begin().await?;
        let mut sql = Sql::new(
            self.dialect,
            format!(
                "SELECT {DELIVERY_COLUMNS} FROM {} WHERE status = 'in_flight' \
                 AND lease_expires_at <= ",
                self.table()
            ),
        );
        sql.bind(self.dialect.time(Some(now)))
            .push(" ORDER BY lease_expires_at, seq LIMIT ")
            .bind(limit_value(limit))
            .push(self.dialect.skip_locked());
        let rows = txn.query_all_raw(sql.build()).await.map_err(db_error)?;
        for r in &rows {
            let (seq, id) = row::seq_and_id(self.dialect, r)?;
            let next = row::delivery(self.dialect, r)?
                .apply(DeliveryEvent::ExpireLease, now)
                .map_err(|source| StoreError::Transition { id, source })?;
            self.write(&txn, seq, &next).await?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(rows.len() as u64)
    }

    async fn mark_consumed(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64> {
        self.apply_each(
            ids,
            now,
            |d| !matches!(d.status, MessageStatus::Consumed | MessageStatus::Dead),
            || DeliveryEvent::Consume,
        )
        .await
    }

    async fn replay_dead(&self, ids: &[MessageId], now: DateTime<Utc>) -> StoreResult<u64> {
        self.apply_each(
            ids,
            now,
            |d| d.status == MessageStatus::Dead,
            || DeliveryEvent::Replay,
        )
        .await
    }

    async fn kill(&self, id: MessageId, reason: ErrorText, now: DateTime<Utc>) -> StoreResult<()> {
        let txn = self.begin().await?;
        let rows = self.lock_by_ids(&txn, &[id]).await?;
        let (seq, delivery) = rows.get(&id).ok_or_else(|| StoreError::NotFound {
            what: "message",
            id: id.to_string(),
        })?;
        let next = delivery
            .apply(DeliveryEvent::Kill { reason }, now)
            .map_err(|source| StoreError::Transition { id, source })?;
        self.write(&txn, *seq, &next).await?;
        txn.commit().await.map_err(db_error)
    }

    async fn get(&self, id: MessageId) -> StoreResult<Option<StoredMessage>> {
        let mut sql = Sql::new(
            self.dialect,
            format!("SELECT {ALL_COLUMNS} FROM {} WHERE id = ", self.table()),
        );
        sql.bind(self.dialect.uuid(Some(id.as_uuid())));
        self.db
            .query_one_raw(sql.build())
            .await
            .map_err(db_error)?
            .map(|r| row::stored(self.dialect, &r))
            .transpose()
    }

    async fn list(&self, filter: &ListFilter) -> StoreResult<Vec<StoredMessage>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let dl = self.dialect;
        let mut sql = Sql::new(
            dl,
            format!("SELECT {ALL_COLUMNS} FROM {} WHERE seq > ", self.table()),
        );
        let after = filter
            .after_seq
            .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        sql.bind(Value::BigInt(Some(after)));
        if let Some(status) = filter.status {
            sql.push(" AND status = ")
                .bind(Value::String(Some(status.as_str().to_owned())));
        } else if dl == Dialect::MySql && filter.partition_key.is_some() {
            // Every status, so that a key's rows are index ranges of `_key_unfinished`,
            // which leads with the status on MySQL. Without it MariaDB walked the primary
            // key: 200 000 rows read to list a key's 10 among 200 000, 10 with it.
            sql.push(" AND status IN ").bind_list(
                MessageStatus::ALL.map(|st| Value::String(Some(st.as_str().to_owned()))),
            );
        }
        for (column, value) in [
            ("service", &filter.service),
            ("event_type", &filter.event_type),
            ("partition_key", &filter.partition_key),
        ] {
            if let Some(value) = value {
                sql.push(&format!(" AND {column} = "))
                    .bind(Value::String(Some(value.clone())));
            }
        }
        if let Some(from) = filter.created_from {
            sql.push(" AND created_at >= ").bind(dl.time(Some(from)));
        }
        if let Some(before) = filter.created_before {
            sql.push(" AND created_at < ").bind(dl.time(Some(before)));
        }
        sql.push(" ORDER BY seq LIMIT ")
            .bind(limit_value(filter.limit));
        self.db
            .query_all_raw(sql.build())
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| row::stored(dl, r))
            .collect()
    }

    async fn stats(&self) -> StoreResult<OutboxStats> {
        Ok(self
            .collect_stats(false)
            .await?
            .into_values()
            .next()
            .unwrap_or_default())
    }

    async fn stats_by_service(&self) -> StoreResult<BTreeMap<String, OutboxStats>> {
        self.collect_stats(true).await
    }

    async fn delete_dead(&self, ids: &[MessageId]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let txn = self.begin().await?;
        let mut deleted = 0;
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(
                self.dialect,
                format!(
                    "DELETE FROM {} WHERE status = 'dead' AND id IN ",
                    self.table()
                ),
            );
            sql.bind_list(chunk.iter().map(|id| self.dialect.uuid(Some(id.as_uuid()))));
            deleted += txn
                .execute_raw(sql.build())
                .await
                .map_err(db_error)?
                .rows_affected();
        }
        txn.commit().await.map_err(db_error)?;
        Ok(deleted)
    }

    async fn purge_finished(
        &self,
        published_before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let t = self.table();
        let dl = self.dialect;
        if dl != Dialect::MySql {
            let mut sql = self.purge_pick(
                &format!("DELETE FROM {t} WHERE seq IN ("),
                published_before,
                limit,
            );
            sql.push(")");
            let result = self.db.execute_raw(sql.build()).await.map_err(db_error)?;
            return Ok(result.rows_affected());
        }
        // MySQL cannot `LIMIT` an `IN (subquery)`: select the batch, then delete it
        // (re-checking the condition; finished rows never become unfinished again).
        let seqs = query_seqs(&self.db, self.purge_pick("", published_before, limit)).await?;
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut sql = Sql::new(
            dl,
            format!("DELETE FROM {t} WHERE {FINISHED_PREDICATE} AND published_at < "),
        );
        sql.bind(dl.time(Some(published_before)))
            .push(" AND seq IN ")
            .bind_list(seqs);
        let result = self.db.execute_raw(sql.build()).await.map_err(db_error)?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On SQLite the parked-keys queries (the stats' count, `parked_heads`) probe for an
    /// earlier unfinished message through `_key_unfinished`, not through `_status`,
    /// which read every earlier pending row of every key.
    #[tokio::test]
    async fn on_sqlite_the_parked_keys_probe_reads_the_key_index() {
        let db = crate::connect("sqlite::memory:").await.unwrap();
        let store = SeaOrmStore::new(db, StoreConfig::default()).unwrap();
        store.create_tables().await.unwrap();
        for query in [
            store.parked_count_query(false),
            store.parked_count_query(true),
            store.parked_heads_query(10),
        ] {
            let mut explain = query.build();
            explain.sql = format!("EXPLAIN QUERY PLAN {}", explain.sql);
            let plan: Vec<String> = store
                .db
                .query_all_raw(explain)
                .await
                .unwrap()
                .iter()
                .map(plan_row)
                .collect();
            let plan = plan.join("\n");
            assert!(
                plan.contains(
                    "SEARCH e USING INDEX outbox_messages_key_unfinished \
                     (service=? AND partition_key=? AND seq<?)"
                ),
                "{plan}"
            );
            assert!(
                !plan.contains("SEARCH e USING INDEX outbox_messages_status"),
                "{plan}"
            );
        }
    }
}
