//! Scenario 2: drain a backlog with a no-op publisher, with 1, 2 and 4 relays.
//!
//! Also the drain every other scenario reuses ([`drain_with`]): relays as separate
//! [`Relay`]s, each with its own connection pool (as separate hosts would have), all
//! started together on a filled backlog; the clock runs from their start until the
//! last message is settled.

use crate::harness::{Chart, Ctx, Db, Section, fmt_num, median};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use outbox_domain::OutboxMessage;
use outbox_ports::{PublishError, PublishOutcome, Publisher};
use outbox_runtime::{CancellationToken, Relay, RelayConfig};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use sea_orm::ConnectionTrait;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Messages claimed per batch by every relay in the benchmarks (the peers read 500 too).
pub(crate) const BATCH: usize = 500;

/// Connections per relay: one claim loop needs one; the second serves the settle of
/// the batch before while the next claim runs, should it overlap.
const POOL_PER_RELAY: u32 = 2;

/// A publisher that acknowledges everything at once: what is left is the store.
#[derive(Debug, Default)]
pub(crate) struct NoopPublisher;

#[async_trait]
impl Publisher for NoopPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        vec![Ok(()); batch.len()]
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), PublishError> {
        Ok(())
    }
}

/// The relay configuration of every drain: batches of [`BATCH`], one claim loop, no
/// retention purge during the run, and a short idle poll (the backlog is there from the
/// start, so the poll only matters at the very end).
pub(crate) fn relay_config(id: usize) -> RelayConfig {
    let mut config = RelayConfig::default();
    config.relay_id = format!("bench-relay-{id}");
    config.batch_size = BATCH;
    config.min_poll_interval = Duration::from_millis(1);
    config.poll_interval = Duration::from_millis(20);
    config.retention = None;
    config
}

/// Drains the `n` pending messages in `db` with `relays` relays, each publishing through
/// the publisher `publisher(i)` makes. Returns events per second.
pub(crate) async fn drain_with(
    db: &Db,
    relays: usize,
    n: u64,
    publisher: impl Fn(usize) -> Result<Arc<dyn Publisher>>,
) -> Result<f64> {
    let mut built = Vec::with_capacity(relays);
    for i in 0..relays {
        let store = SeaOrmStore::new(db.pool(POOL_PER_RELAY).await?, StoreConfig::default())?;
        let relay = Relay::new(Arc::new(store), publisher(i)?, relay_config(i))?;
        built.push(relay);
    }
    let counters: Vec<_> = built.iter().map(Relay::counters).collect();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handles: Vec<_> = built
        .into_iter()
        .map(|r| r.spawn(shutdown.clone()))
        .collect();
    let deadline = started + Duration::from_secs(600);
    let elapsed = loop {
        let done: u64 = counters
            .iter()
            .map(|c| c.published.load(Ordering::Relaxed))
            .sum();
        if done >= n {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the relays published {done} of {n} messages in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shutdown.cancel();
    for h in handles {
        h.shutdown().await;
    }
    let errors: u64 = counters
        .iter()
        .map(|c| c.errors.load(Ordering::Relaxed) + c.lease_lost.load(Ordering::Relaxed))
        .sum();
    if errors > 0 {
        bail!("the relays counted {errors} errors or lost leases");
    }
    let left = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {} WHERE status <> 'published'",
            crate::harness::TABLE
        ))
        .await?;
    if left != 0 {
        bail!("{left} messages were not published after the drain");
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// One statement of the relay's, as `pg_stat_statements` saw it over a drain.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StatementCost {
    /// The statement, shortened.
    pub(crate) query: String,
    /// Times it ran.
    pub(crate) calls: i64,
    /// Its total execution time, ms.
    pub(crate) total_ms: f64,
    /// Rows it returned or changed.
    pub(crate) rows: i64,
    /// WAL records it wrote.
    pub(crate) wal_records: i64,
}

/// The statements of a drain with 1 relay, by total execution time, from
/// `pg_stat_statements` (when the server preloads it, as `cargo xtask bench` does):
/// where the database time of a drain goes. `None` when it is not available.
async fn profile_drain(db: &Db, n: u64, keys: u64) -> Result<Option<(f64, Vec<StatementCost>)>> {
    if db
        .exec("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .is_err()
    {
        return Ok(None);
    }
    db.empty_outbox().await?;
    db.fill_pending(n, keys, true).await?;
    if db.exec("SELECT pg_stat_statements_reset()").await.is_err() {
        // Created, but not preloaded by the server.
        return Ok(None);
    }
    let rate = drain_with(db, 1, n, |_| Ok(Arc::new(NoopPublisher))).await?;
    let rows = db
        .conn
        .query_all_raw(sea_orm::Statement::from_string(
            db.conn.get_database_backend(),
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS query, calls, \
             total_exec_time, rows, wal_records FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%COUNT(*)%' \
             ORDER BY total_exec_time DESC LIMIT 8",
        ))
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(StatementCost {
            query: r.try_get("", "query")?,
            calls: r.try_get("", "calls")?,
            total_ms: r.try_get("", "total_exec_time")?,
            rows: r.try_get("", "rows")?,
            wal_records: r.try_get::<Option<i64>>("", "wal_records")?.unwrap_or(0),
        });
    }
    Ok(Some((rate, out)))
}

/// Runs scenario 2.
pub(crate) async fn run(ctx: &Ctx) -> Result<()> {
    let n = ctx.size(200_000, 20_000);
    let keys = 1_000;
    let plan = ctx.plan();
    let db = ctx.fresh_db("bench_drain").await?;
    let mut section = Section::new(ctx, "drain", "2. Drain throughput, no-op publisher");
    let mut rows = Vec::new();
    let mut medians = Vec::new();
    for relays in [1usize, 2, 4] {
        let values = plan
            .measure(&format!("drain, {relays} relay(s)"), |_warmup| {
                let db = db.clone();
                async move {
                    db.empty_outbox().await?;
                    db.fill_pending(n, keys, true).await?;
                    drain_with(&db, relays, n, |_| Ok(Arc::new(NoopPublisher)))
                        .await
                        .context("drain")
                }
            })
            .await?;
        let m = median(&values);
        medians.push(m);
        rows.push(json!({ "relays": relays, "events_per_s": values, "median": m }));
    }
    let profile = profile_drain(&db, n, keys).await?;
    section.markdown = format!(
        "A backlog of {n} messages over {keys} keys, drained by 1, 2 and 4 relays (each \
         its own `Relay` with its own pool of {POOL_PER_RELAY} connections, batch {BATCH}, \
         publisher acknowledging at once). Median of {} runs after {} warm-up; each run \
         starts from a freshly filled, analysed table.\n\n\
         | Relays | events/s (median) | runs |\n|---|---|---|\n{}",
        plan.runs,
        plan.warmup,
        rows.iter()
            .map(|r| format!(
                "| {} | {} | {} |\n",
                r["relays"],
                fmt_num(r["median"].as_f64().unwrap_or(f64::NAN)),
                r["events_per_s"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .map(|v| fmt_num(v.as_f64().unwrap_or(f64::NAN)))
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ))
            .collect::<String>()
    );
    if let Some((rate, statements)) = &profile {
        let secs = n as f64 / rate;
        section.markdown.push_str(&format!(
            "\n**Where the database time goes** (one more drain with 1 relay, {} events/s, \
             {secs:.1} s of wall time; `pg_stat_statements`, top statements by total \
             execution time; WAL records per row count the heap and index entries each \
             change writes):\n\n\
             | Statement | calls | total ms | share of wall time | rows | WAL records per row |\n\
             |---|---|---|---|---|---|\n",
            fmt_num(*rate)
        ));
        for st in statements {
            section.markdown.push_str(&format!(
                "| `{}` | {} | {:.0} | {:.0}% | {} | {} |\n",
                st.query.replace('|', "\\|"),
                st.calls,
                st.total_ms,
                st.total_ms / 10.0 / secs,
                st.rows,
                if st.rows > 0 {
                    format!("{:.1}", st.wal_records as f64 / st.rows as f64)
                } else {
                    "–".into()
                }
            ));
        }
    }
    section.data = json!({
        "messages": n, "keys": keys, "batch": BATCH, "plan": plan, "runs": rows,
        "profile": profile.map(|(rate, statements)| json!({ "events_per_s": rate, "statements": statements })),
    });
    section.charts.push(Chart {
        name: "throughput".into(),
        title: format!("Drain of {n} messages, no-op publisher"),
        unit: "events/s".into(),
        groups: vec!["1 relay".into(), "2 relays".into(), "4 relays".into()],
        series: vec![("outbox-rs".into(), medians)],
    });
    section.write(&ctx.out)
}
