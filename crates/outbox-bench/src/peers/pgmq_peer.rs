//! pgmq through its Rust client (crate `pgmq` 0.33.7): a backlog filled in one statement,
//! then drained by [`CONSUMERS`] tasks in a `read_batch` + `delete_batch` (or
//! `archive_batch`) loop, each task with its own connection pool.
//!
//! Two flavours of the client, each in a database of its own:
//!
//! - [`Api::Client`]: `PGMQueue`, whose SQL is written by the client itself (it creates
//!   the queue's tables with `CREATE TABLE`, no server-side function at all). The crate
//!   marks it deprecated in favour of `PGMQueueExt`, but it is what "pgmq's Rust client,
//!   `read_batch` + `delete_batch`" names, and the issue's reference figure.
//! - [`Api::Sql`]: `PGMQueueExt` over pgmq's own SQL functions (`pgmq.read`,
//!   `pgmq.delete`, `pgmq.archive`), installed with the crate's feature
//!   `install-sql-embedded` (`install_sql_from_embedded`: the extension's scripts, bundled
//!   in the crate, run as plain SQL; no server extension needed).

// `PGMQueue` is deprecated in pgmq 0.33 (in favour of `PGMQueueExt`); measured all the same.
#![allow(deprecated)]

use super::CONSUMERS;
use crate::drain::BATCH;
use crate::harness::{Ctx, Db, payload, payload_sql};
use anyhow::{Context, Result, bail};
use pgmq::{PGMQueue, PGMQueueExt};
use serde_json::Value;
use sqlx_pgmq::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx_pgmq::{Pool, Postgres};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The queue's name: its tables are `pgmq.q_bench` and `pgmq.a_bench` (archive).
pub(crate) const QUEUE: &str = "bench";

/// The visibility timeout of every read (pgmq's default): far longer than a batch takes,
/// so no message is ever read twice; one that were would make a settle count come up
/// short and the run fail.
pub(crate) const VT_SECONDS: i32 = 30;

/// Connections per consumer's pool: its loop uses one at a time.
const POOL_PER_CONSUMER: u32 = 2;

/// Which of the client's two APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `PGMQueue`: client-side SQL, tables created by the client.
    Client,
    /// `PGMQueueExt`: pgmq's SQL functions, installed from the crate's embedded scripts.
    Sql,
}

/// What a consumer does with a message once read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// `delete_batch`: the row is gone.
    Delete,
    /// `archive_batch`: the row moves to the archive table.
    Archive,
}

/// A pgmq installation in a fresh database, with its queue created.
#[derive(Debug)]
pub(crate) struct Pgmq {
    db: Db,
    api: Api,
}

impl Pgmq {
    /// Creates database `name`, installs pgmq the way `api` needs, creates the queue and
    /// checks that [`Self::fill`] writes rows exactly like the client's `send_batch`.
    pub(crate) async fn setup(ctx: &Ctx, name: &str, api: Api) -> Result<Self> {
        let db = ctx.fresh_db(name).await?;
        let pool = pool(&db.url, 1).await?;
        match api {
            Api::Client => {
                let queue = PGMQueue::new_with_pool(pool.clone()).await;
                queue
                    .create(QUEUE)
                    .await
                    .context("pgmq: could not create the queue")?;
            }
            Api::Sql => {
                let queue = PGMQueueExt::new_with_pool(pool.clone()).await;
                queue
                    .install_sql_from_embedded()
                    .await
                    .context("pgmq: could not install pgmq's SQL from the crate")?;
                queue
                    .create(QUEUE)
                    .await
                    .context("pgmq: could not create the queue")?;
            }
        }
        let peer = Self { db, api };
        peer.check_fill(&pool).await?;
        pool.close().await;
        Ok(peer)
    }

    /// The installed pgmq SQL version, for [`Api::Sql`].
    pub(crate) async fn sql_version(&self) -> Result<Option<String>> {
        if self.api != Api::Sql {
            return Ok(None);
        }
        let pool = pool(&self.db.url, 1).await?;
        let version = pgmq::install::installed_version(&pool)
            .await
            .context("pgmq: could not read the installed version")?;
        pool.close().await;
        Ok(version.map(|v| v.to_string()))
    }

    /// The `INSERT … SELECT` that writes `n` messages: the rows the client's
    /// `send_batch(&[payload(1), …, payload(n)])` writes, in one statement.
    ///
    /// - `PGMQueue::send_batch` runs `INSERT INTO pgmq.q_bench (vt, message) VALUES
    ///   ((now() + interval '0 seconds'), $1::json), …`: `vt` is the transaction's
    ///   `now()`, and the defaults give `enqueued_at = now()`, `read_ct = 0` and the
    ///   identity `msg_id`.
    /// - `PGMQueueExt::send_batch` calls `pgmq.send_batch(queue, msgs, NULL,
    ///   clock_timestamp())`, which runs `INSERT INTO pgmq.q_bench (vt, message, headers)
    ///   SELECT $2, unnest($1), unnest(ARRAY[]::jsonb[])`: `vt` is one `clock_timestamp()`
    ///   taken at the call, `headers` and `last_read_at` are NULL, the rest defaults.
    ///
    /// The payload is [`payload_sql`], the JSON [`payload`] gives every system.
    pub(crate) fn fill_sql(&self, n: u64) -> String {
        let message = payload_sql("g");
        match self.api {
            Api::Client => format!(
                "INSERT INTO pgmq.q_{QUEUE} (vt, message) \
                 SELECT now() + interval '0 seconds', {message} FROM generate_series(1, {n}) g"
            ),
            Api::Sql => format!(
                "INSERT INTO pgmq.q_{QUEUE} (vt, message, headers) \
                 SELECT t.vt, {message}, NULL \
                 FROM (SELECT clock_timestamp() AS vt) t, generate_series(1, {n}) g"
            ),
        }
    }

    /// Empties the queue and its archive, writes `n` messages with [`Self::fill_sql`] and
    /// `VACUUM ANALYZE`s both tables.
    pub(crate) async fn fill(&self, n: u64) -> Result<()> {
        self.db
            .exec(&format!("TRUNCATE pgmq.q_{QUEUE}, pgmq.a_{QUEUE}"))
            .await?;
        self.db.exec(&self.fill_sql(n)).await?;
        self.db
            .exec(&format!("VACUUM ANALYZE pgmq.q_{QUEUE}, pgmq.a_{QUEUE}"))
            .await?;
        let queued = self.count("q").await?;
        if queued != n as i64 {
            bail!("pgmq: the queue holds {queued} messages after a fill of {n}");
        }
        Ok(())
    }

    /// Sends two messages with the client's `send_batch` and writes the same two with
    /// [`Self::fill_sql`], then compares the rows: every column but `msg_id`, `vt` and
    /// `enqueued_at` equal, and in both `enqueued_at ≤ vt ≤ clock_timestamp()` (visible
    /// at once, never read).
    async fn check_fill(&self, pool: &Pool<Postgres>) -> Result<()> {
        let messages = [payload(1), payload(2)];
        let sent = match self.api {
            Api::Client => {
                let queue = PGMQueue::new_with_pool(pool.clone()).await;
                queue.send_batch(QUEUE, &messages[..]).await?.len()
            }
            Api::Sql => {
                let queue = PGMQueueExt::new_with_pool(pool.clone()).await;
                queue.send_batch(QUEUE, &messages[..]).await?.len()
            }
        };
        if sent != 2 {
            bail!("pgmq: send_batch of 2 messages returned {sent} ids");
        }
        self.db.exec(&self.fill_sql(2)).await?;
        let rows = format!(
            "SELECT to_jsonb(q) - 'msg_id' - 'vt' - 'enqueued_at' AS r, \
             enqueued_at <= vt AND vt <= clock_timestamp() AS visible FROM pgmq.q_{QUEUE} q"
        );
        // Two distinct rows, each written once by send_batch and once by the fill.
        let pairs = self
            .db
            .scalar(&format!(
                "SELECT COUNT(*) FROM (SELECT r FROM ({rows}) x WHERE visible \
                 GROUP BY r HAVING COUNT(*) = 2) y"
            ))
            .await?;
        let total = self.count("q").await?;
        if pairs != 2 || total != 4 {
            bail!(
                "pgmq: the fill does not write what send_batch writes ({pairs} matching pairs \
                 of 2, {total} rows of 4); compare the rows of pgmq.q_{QUEUE} in database {}",
                self.db.url
            );
        }
        self.db
            .exec(&format!("TRUNCATE pgmq.q_{QUEUE}, pgmq.a_{QUEUE}"))
            .await
    }

    /// Fills the queue with `n` messages, then drains it with [`CONSUMERS`] consumers,
    /// settling each batch with `settle`. Returns events per second, the clock running from
    /// the consumers' start (their pools already connected) until the last batch is
    /// settled. Fails unless every message was settled exactly once and the queue is
    /// empty (and, archiving, the archive holds all `n`).
    pub(crate) async fn drain(&self, n: u64, settle: Settle) -> Result<f64> {
        self.fill(n).await?;
        let mut consumers = Vec::with_capacity(CONSUMERS);
        for _ in 0..CONSUMERS {
            consumers.push(Consumer::connect(&self.db.url, self.api).await?);
        }
        let settled = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(600);
        let handles: Vec<_> = consumers
            .into_iter()
            .map(|c| tokio::spawn(c.run(settle, n, Arc::clone(&settled), deadline)))
            .collect();
        let mut total = 0;
        let mut finished = Vec::with_capacity(CONSUMERS);
        for handle in handles {
            let (mine, consumer) = handle.await.context("a pgmq consumer panicked")??;
            total += mine;
            finished.push(consumer);
        }
        let elapsed = started.elapsed();
        for consumer in finished {
            consumer.close().await;
        }
        if total != n {
            bail!("pgmq: the consumers settled {total} messages of {n}");
        }
        let left = self.count("q").await?;
        if left != 0 {
            bail!("pgmq: {left} messages are left in the queue after the drain");
        }
        if settle == Settle::Archive {
            let archived = self.count("a").await?;
            if archived != n as i64 {
                bail!("pgmq: the archive holds {archived} messages of {n}");
            }
        }
        Ok(n as f64 / elapsed.as_secs_f64())
    }

    /// Rows in the queue (`q`) or archive (`a`) table.
    async fn count(&self, table: &str) -> Result<i64> {
        self.db
            .scalar(&format!("SELECT COUNT(*) FROM pgmq.{table}_{QUEUE}"))
            .await
    }
}

/// One consumer: the client over a pool of its own.
enum Consumer {
    /// `PGMQueue`.
    Client(PGMQueue),
    /// `PGMQueueExt`.
    Sql(PGMQueueExt),
}

impl Consumer {
    /// A client of `api` over a new pool to `url`.
    async fn connect(url: &str, api: Api) -> Result<Self> {
        let pool = pool(url, POOL_PER_CONSUMER).await?;
        Ok(match api {
            Api::Client => Self::Client(PGMQueue::new_with_pool(pool).await),
            Api::Sql => Self::Sql(PGMQueueExt::new_with_pool(pool).await),
        })
    }

    /// Reads up to [`BATCH`] messages (their payloads parsed as JSON, as any consumer
    /// would) and returns their ids; none when nothing is visible.
    async fn read(&self) -> Result<Vec<i64>> {
        let messages = match self {
            Self::Client(q) => q
                .read_batch::<Value>(QUEUE, Some(VT_SECONDS), BATCH as i32)
                .await?
                .unwrap_or_default(),
            Self::Sql(q) => {
                q.read_batch::<Value>(QUEUE, VT_SECONDS, BATCH as i32)
                    .await?
            }
        };
        Ok(messages.iter().map(|m| m.msg_id).collect())
    }

    /// Deletes or archives `ids`; returns how many rows it settled.
    async fn settle(&self, settle: Settle, ids: &[i64]) -> Result<u64> {
        Ok(match (self, settle) {
            (Self::Client(q), Settle::Delete) => q.delete_batch(QUEUE, ids).await?,
            (Self::Client(q), Settle::Archive) => q.archive_batch(QUEUE, ids).await?,
            (Self::Sql(q), Settle::Delete) => q.delete_batch(QUEUE, ids).await? as u64,
            (Self::Sql(q), Settle::Archive) => q.archive_batch(QUEUE, ids).await? as u64,
        })
    }

    /// Reads and settles batches until all `n` messages are settled (by this consumer or
    /// another, counted in `settled`). An empty read while messages remain means the other
    /// consumer holds them (read, not yet settled): it waits a millisecond and reads again.
    /// Returns how many messages this consumer settled, and the consumer (closed once the
    /// clock has stopped).
    async fn run(
        self,
        settle: Settle,
        n: u64,
        settled: Arc<AtomicU64>,
        deadline: Instant,
    ) -> Result<(u64, Self)> {
        let mut mine = 0;
        while settled.load(Ordering::Acquire) < n {
            let ids = self.read().await.context("pgmq: read_batch failed")?;
            if ids.is_empty() {
                if Instant::now() > deadline {
                    bail!(
                        "pgmq: {} of {n} messages settled in 10 minutes",
                        settled.load(Ordering::Acquire)
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let done = self
                .settle(settle, &ids)
                .await
                .with_context(|| format!("pgmq: {settle:?} of a batch failed"))?;
            if done != ids.len() as u64 {
                bail!(
                    "pgmq: {settle:?} settled {done} of the {} messages read",
                    ids.len()
                );
            }
            mine += done;
            settled.fetch_add(done, Ordering::AcqRel);
        }
        Ok((mine, self))
    }

    /// Closes the pool.
    async fn close(self) {
        match self {
            Self::Client(q) => q.connection.close().await,
            Self::Sql(q) => q.connection.close().await,
        }
    }
}

/// A sqlx 0.8 pool of at most `max` connections to `url` (pgmq's own `util::connect`
/// insists on a password and an explicit port in the URL).
async fn pool(url: &str, max: u32) -> Result<Pool<Postgres>> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("pgmq: could not parse the database URL {url}"))?;
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| format!("pgmq: could not connect to {url}"))
}
