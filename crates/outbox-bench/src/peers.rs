//! Scenario 7: peers on the same PostgreSQL (issue 9).
//!
//! The same backlog (size, payload) drained by 2 consumers of each system, one no-op
//! handler each: our relay ([`drain::drain_with`], 2 relays), pgmq's Rust client in a
//! `read_batch` + `delete_batch` (or `archive_batch`) loop ([`pgmq_peer`]), and
//! graphile-worker 0.17.3 with 2 `--once` processes, batched and unbatched
//! ([`graphile`]). Every system gets a database of its own on the same server and a
//! freshly filled, analysed backlog before each run.
//!
//! Runs are interleaved: each round runs every system once, in the order of
//! [`System::ALL`]; the first [`crate::harness::Plan::warmup`] rounds are thrown away,
//! and the report gives the median of the other [`crate::harness::Plan::runs`], so a
//! shift in the shared machine's load touches every system alike.

mod graphile;
mod pgmq_peer;

use crate::drain::{self, BATCH, NoopPublisher};
use crate::harness::{Chart, Ctx, Db, Section, Target, fmt_num, median};
use anyhow::{Context, Result};
use graphile::{Graphile, Mode};
use pgmq_peer::{Api, Pgmq, Settle};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

/// Consumers of every system: relays, pgmq tasks, graphile-worker processes.
pub(crate) const CONSUMERS: usize = 2;

/// Partition keys of our backlog.
const KEYS: u64 = 1_000;

/// Why the graphile-worker rows are empty without `--graphile-worker`.
const NOT_INSTALLED: &str = "not run (graphile-worker not installed)";

/// The backlog of unbatched graphile-worker (the others get the whole backlog).
const UNBATCHED_BACKLOG: u64 = 20_000;

/// The backlog `system` drains in a run of a scenario whose backlog is `n`.
fn backlog(system: System, n: u64) -> u64 {
    if system == System::GraphileUnbatched {
        n.min(UNBATCHED_BACKLOG)
    } else {
        n
    }
}

/// The systems measured, in the order each round runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    /// Our relay.
    Ours,
    /// pgmq `PGMQueue`, `delete_batch`.
    PgmqDelete,
    /// pgmq `PGMQueue`, `archive_batch`.
    PgmqArchive,
    /// pgmq `PGMQueueExt` over pgmq's installed SQL functions, `delete_batch`.
    PgmqSqlDelete,
    /// graphile-worker, batched.
    GraphileBatched,
    /// graphile-worker, unbatched.
    GraphileUnbatched,
}

impl System {
    /// Every system, in round order.
    const ALL: [Self; 6] = [
        Self::Ours,
        Self::PgmqDelete,
        Self::PgmqArchive,
        Self::PgmqSqlDelete,
        Self::GraphileBatched,
        Self::GraphileUnbatched,
    ];

    /// A stable identifier for the JSON.
    fn id(self) -> &'static str {
        match self {
            Self::Ours => "outbox-rs",
            Self::PgmqDelete => "pgmq-delete",
            Self::PgmqArchive => "pgmq-archive",
            Self::PgmqSqlDelete => "pgmq-sql-delete",
            Self::GraphileBatched => "graphile-worker-batched",
            Self::GraphileUnbatched => "graphile-worker-unbatched",
        }
    }

    /// The table's and chart's name of the system.
    fn label(self) -> &'static str {
        match self {
            Self::Ours => "outbox-rs relay",
            Self::PgmqDelete => "pgmq (delete)",
            Self::PgmqArchive => "pgmq (archive)",
            Self::PgmqSqlDelete => "pgmq SQL API (delete)",
            Self::GraphileBatched => "graphile-worker (batched)",
            Self::GraphileUnbatched => "graphile-worker (unbatched)",
        }
    }

    /// Its configuration, in one table cell.
    fn configuration(self) -> String {
        match self {
            Self::Ours => format!(
                "{CONSUMERS} relays, batch {BATCH}, one pool of 2 connections each, no-op \
                 publisher; {} keys",
                fmt_num(KEYS as f64)
            ),
            Self::PgmqDelete | Self::PgmqArchive => format!(
                "crate `pgmq` 0.33.7, `PGMQueue`; {CONSUMERS} consumer tasks, one pool of 2 \
                 connections each; `read_batch({BATCH}, vt {} s)` + `{}`",
                pgmq_peer::VT_SECONDS,
                if self == Self::PgmqDelete {
                    "delete_batch"
                } else {
                    "archive_batch"
                }
            ),
            Self::PgmqSqlDelete => format!(
                "crate `pgmq` 0.33.7, `PGMQueueExt` over pgmq's SQL functions (installed \
                 from the crate); {CONSUMERS} consumer tasks, one pool of 2 connections each; \
                 `read_batch({BATCH}, vt {} s)` + `delete_batch`",
                pgmq_peer::VT_SECONDS
            ),
            Self::GraphileBatched => format!(
                "`graphile-worker@{}`; {CONSUMERS} `--once` processes; `concurrentJobs: 24`, \
                 `maxPoolSize: 25`, `localQueue: {{ size: 500 }}`, `completeJobBatchDelay: 0`, \
                 `failJobBatchDelay: 0`",
                graphile::VERSION
            ),
            Self::GraphileUnbatched => format!(
                "`graphile-worker@{}`; {CONSUMERS} `--once` processes; `concurrentJobs: 24`, \
                 `maxPoolSize: 25`, no local queue, no completion batching",
                graphile::VERSION
            ),
        }
    }
}

/// One system's results.
#[derive(Debug)]
struct Row {
    /// Which.
    system: System,
    /// Events per second of each measured run.
    values: Vec<f64>,
    /// Why it did not run, if it did not.
    skipped: Option<&'static str>,
}

/// The systems, set up.
struct Peers {
    /// Our outbox's database.
    ours: Db,
    /// pgmq through `PGMQueue`.
    pgmq: Pgmq,
    /// pgmq through `PGMQueueExt` and its installed SQL.
    pgmq_sql: Pgmq,
    /// graphile-worker, when its command was given.
    graphile: Option<Graphile>,
}

impl Peers {
    /// One run of `system` on a fresh backlog of `n`: events per second.
    async fn run(&self, system: System, n: u64) -> Result<f64> {
        match system {
            System::Ours => {
                self.ours.empty_outbox().await?;
                self.ours.fill_pending(n, KEYS, true).await?;
                drain::drain_with(&self.ours, CONSUMERS, n, |_| Ok(Arc::new(NoopPublisher))).await
            }
            System::PgmqDelete => self.pgmq.drain(n, Settle::Delete).await,
            System::PgmqArchive => self.pgmq.drain(n, Settle::Archive).await,
            System::PgmqSqlDelete => self.pgmq_sql.drain(n, Settle::Delete).await,
            System::GraphileBatched | System::GraphileUnbatched => {
                let mode = if system == System::GraphileBatched {
                    Mode::Batched
                } else {
                    Mode::Unbatched
                };
                self.graphile
                    .as_ref()
                    .context("graphile-worker is not set up")?
                    .drain(n, mode)
                    .await
            }
        }
    }
}

/// Runs scenario 7; `graphile_worker` is the `graphile-worker` command, without which
/// its rows say they did not run.
///
/// Unbatched graphile-worker drains at about 1.5k events/s here: it gets at most
/// [`UNBATCHED_BACKLOG`] jobs, so that the full run does not spend ten minutes on it.
pub(crate) async fn run(ctx: &Ctx, graphile_worker: Option<&Path>) -> Result<()> {
    let n = ctx.size(200_000, 10_000);
    let plan = ctx.plan();

    let ours = ctx.fresh_db("bench_peers").await?;
    let pgmq = Pgmq::setup(ctx, "bench_peers_pgmq", Api::Client).await?;
    let pgmq_sql = Pgmq::setup(ctx, "bench_peers_pgmq_sql", Api::Sql).await?;
    let pgmq_sql_version = pgmq_sql.sql_version().await?.unwrap_or_default();
    let graphile = match graphile_worker {
        Some(bin) => Some(
            Graphile::setup(ctx, "bench_peers_graphile", bin)
                .await
                .context("could not set up graphile-worker")?,
        ),
        None => {
            eprintln!("  graphile-worker: {NOT_INSTALLED} (pass --graphile-worker)");
            None
        }
    };
    let server_version = show(&ours, "server_version").await?;
    let synchronous_commit = show(&ours, "synchronous_commit").await?;
    let node_version = node_version();
    let peers = Peers {
        ours,
        pgmq,
        pgmq_sql,
        graphile,
    };

    let mut rows: Vec<Row> = System::ALL
        .iter()
        .map(|&system| Row {
            system,
            values: Vec::new(),
            skipped: match system {
                System::GraphileBatched | System::GraphileUnbatched if peers.graphile.is_none() => {
                    Some(NOT_INSTALLED)
                }
                _ => None,
            },
        })
        .collect();
    let mut startup_ms = Vec::new();
    for round in 0..plan.warmup + plan.runs {
        let warmup = round < plan.warmup;
        let tag = if warmup {
            format!("warm-up {}", round + 1)
        } else {
            format!("run {}", round + 1 - plan.warmup)
        };
        for row in rows.iter_mut().filter(|r| r.skipped.is_none()) {
            let v = peers
                .run(row.system, backlog(row.system, n))
                .await
                .with_context(|| format!("peers, {}: {tag}", row.system.label()))?;
            eprintln!("  peers, {}: {tag}: {v:.1} events/s", row.system.label());
            if !warmup {
                row.values.push(v);
            }
        }
        if let Some(graphile) = &peers.graphile
            && !warmup
        {
            let ms = graphile
                .startup_ms()
                .await
                .context("graphile-worker start-up on an empty queue")?;
            eprintln!("  peers, graphile-worker start-up and exit, empty queue: {ms:.0} ms");
            startup_ms.push(ms);
        }
    }

    let medians: Vec<Option<f64>> = rows
        .iter()
        .map(|r| r.skipped.is_none().then(|| median(&r.values)))
        .collect();
    let median_of = |system: System| -> Option<f64> {
        rows.iter()
            .zip(&medians)
            .find(|(r, _)| r.system == system)
            .and_then(|(_, m)| *m)
    };
    let ours_median = median_of(System::Ours).unwrap_or(f64::NAN);

    let mut section = Section::new(ctx, "peers", "7. Peers on the same PostgreSQL");
    let mut md = format!(
        "A backlog of {} messages with the same ~90-byte JSON payload, drained by {CONSUMERS} \
         consumers of each system with a handler that does nothing, on the same PostgreSQL \
         ({server_version}, `synchronous_commit = {synchronous_commit}`). Median of {} \
         run(s) after {} warm-up round(s); runs interleaved (every round runs every system \
         once, in the table's order), each on a freshly filled and analysed backlog in the \
         system's own database. Unbatched graphile-worker gets at most {} jobs, which \
         it takes minutes to drain.\n\n\
         | System | Configuration | events/s (median) | Runs | Our ratio to it |\n\
         |---|---|---|---|---|\n",
        fmt_num(n as f64),
        plan.runs,
        plan.warmup,
        fmt_num(UNBATCHED_BACKLOG as f64),
    );
    for (row, m) in rows.iter().zip(&medians) {
        let (figure, runs, ratio) = match (row.skipped, m) {
            (Some(_), _) | (None, None) => (why_or(row.skipped), String::new(), String::new()),
            (None, Some(m)) => (
                fmt_num(*m),
                row.values
                    .iter()
                    .map(|v| fmt_num(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                if row.system == System::Ours {
                    "—".to_owned()
                } else {
                    format!("{:.2}×", ours_median / m)
                },
            ),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {figure} | {runs} | {ratio} |",
            row.system.label(),
            row.system.configuration()
        );
    }
    md.push_str(&method_notes(
        n,
        &peers,
        &pgmq_sql_version,
        node_version.as_deref(),
        &startup_ms,
    ));
    section.markdown = md;

    section.data = json!({
        "messages": n,
        "consumers": CONSUMERS,
        "batch": BATCH,
        "keys": KEYS,
        "plan": plan,
        "interleaved": true,
        "postgres": { "server_version": server_version, "synchronous_commit": synchronous_commit },
        "pgmq": {
            "crate": "0.33.7",
            "sql_version": pgmq_sql_version,
            "vt_seconds": pgmq_peer::VT_SECONDS,
            "queue": pgmq_peer::QUEUE,
            "fill_client": peers.pgmq.fill_sql(n),
            "fill_sql_api": peers.pgmq_sql.fill_sql(n),
        },
        "graphile_worker": match &peers.graphile {
            Some(g) => json!({
                "version": g.version,
                "node": node_version,
                "batched_config": graphile::BATCHED_CONFIG,
                "unbatched_config": graphile::UNBATCHED_CONFIG,
                "env": graphile::ENV.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "add_jobs": Graphile::add_jobs_sql(n),
                "startup_ms": startup_ms,
                "startup_ms_median": median(&startup_ms),
            }),
            None => Value::String(NOT_INSTALLED.to_owned()),
        },
        "systems": rows.iter().zip(&medians).map(|(r, m)| json!({
            "id": r.system.id(),
            "system": r.system.label(),
            "configuration": r.system.configuration(),
            "status": why_or(r.skipped),
            "events_per_s": r.values,
            "median": m,
            "our_ratio": m.map(|m| ours_median / m),
        })).collect::<Vec<_>>(),
    });

    if let Some(pgmq_median) = median_of(System::PgmqDelete) {
        section.targets.push(Target::ratio(
            "drain vs pgmq (delete)",
            ours_median,
            pgmq_median,
            1.2,
            false,
            "events/s",
        ));
    }
    if let Some(sql_median) = median_of(System::PgmqSqlDelete) {
        section.targets.push(Target::ratio(
            "drain vs pgmq SQL API (delete), informational",
            ours_median,
            sql_median,
            1.2,
            false,
            "events/s",
        ));
    }
    if let Some(gw_median) = median_of(System::GraphileBatched) {
        section.targets.push(Target::ratio(
            "drain vs graphile-worker (batched), informational",
            ours_median,
            gw_median,
            1.0,
            false,
            "events/s",
        ));
    }

    let (groups, values): (Vec<String>, Vec<f64>) = rows
        .iter()
        .zip(&medians)
        .filter_map(|(r, m)| m.map(|m| (r.system.label().to_owned(), m)))
        .unzip();
    section.charts.push(Chart {
        name: "throughput".into(),
        title: format!(
            "Drain of {} events, {CONSUMERS} consumers, no-op handler",
            fmt_num(n as f64)
        ),
        unit: "events/s".into(),
        groups,
        series: vec![("events/s (median)".into(), values)],
    });
    section.write(&ctx.out)
}

/// "measured", or why not.
fn why_or(skipped: Option<&str>) -> String {
    skipped.unwrap_or("measured").to_owned()
}

/// The method, precisely enough to reproduce it.
fn method_notes(
    n: u64,
    peers: &Peers,
    pgmq_sql_version: &str,
    node_version: Option<&str>,
    startup_ms: &[f64],
) -> String {
    let mut md = String::from("\n**Method.**\n\n");
    let _ = writeln!(
        md,
        "- *outbox-rs*: the outbox table emptied (`TRUNCATE`), {n} pending rows written over \
         {KEYS} keys in one `INSERT … SELECT … generate_series`, `VACUUM ANALYZE`; then \
         {CONSUMERS} `Relay`s started together, each with its own pool, batch {BATCH}, a \
         publisher that acknowledges at once. The clock stops when the relays have \
         published all {n}; then no row may be left unpublished."
    );
    let _ = writeln!(
        md,
        "- *pgmq* (crate `pgmq` 0.33.7, feature `install-sql-embedded`; sqlx 0.8): queue \
         `{q}` created with `PGMQueue::create` (tables `pgmq.q_{q}` and `pgmq.a_{q}`), or, \
         for the SQL API row, pgmq's SQL {pgmq_sql_version} installed with \
         `PGMQueueExt::install_sql_from_embedded` (no server extension) and the queue \
         created with `PGMQueueExt::create`. Before each run: `TRUNCATE` of both tables, one \
         statement writing all {n} messages, `VACUUM ANALYZE`. The statement writes the \
         rows `send_batch` writes (checked at set-up against two real `send_batch` \
         messages: all columns but `msg_id`, `vt` and `enqueued_at` equal, and in both \
         `enqueued_at ≤ vt ≤ clock_timestamp()`):\n  - `PGMQueue`: `{client}`\n  - \
         `PGMQueueExt`: `{sql}`\n\n  Then {CONSUMERS} tokio tasks, each with its own pool of \
         2 connections (connected before the clock starts), loop `read_batch::<Value>(\"{q}\", \
         vt {vt} s, {BATCH})` then `delete_batch` (or `archive_batch`) of the ids read, \
         until all {n} are settled; an empty read while messages remain (the other task \
         holds them) waits 1 ms. The clock stops at the last settle; every settle must \
         settle every id read, and the queue must then be empty (the archive holding all \
         {n}, archiving).",
        q = pgmq_peer::QUEUE,
        client = peers.pgmq.fill_sql(n),
        sql = peers.pgmq_sql.fill_sql(n),
        vt = pgmq_peer::VT_SECONDS,
    );
    match &peers.graphile {
        Some(g) => {
            let _ = writeln!(
                md,
                "- *graphile-worker* {version} (npm; Node.js {node}): schema installed with \
                 `graphile-worker --schema-only`; before each run `TRUNCATE \
                 graphile_worker._private_jobs`, all {n} jobs added in one call of its bulk \
                 function, `{add}`, then `VACUUM ANALYZE`. Then {CONSUMERS} `graphile-worker \
                 --config <file> --once` processes started together with `DATABASE_URL` and \
                 {env}; the clock runs from their start until both have exited, after which \
                 no job may be left (completed jobs are deleted; a failed one would stay to \
                 be retried) and both must exit 0. Task directory: `tasks/noop.cjs` = \
                 `{task}`; an empty crontab. Configurations (`--config`), written to \
                 `<out>/graphile/`:\n\n  ```js\n{batched}  ```\n\n  ```js\n{unbatched}  ```\n\n  \
                 The batched one is the configuration of graphile-worker's performance page \
                 (its fastest documented one); the unbatched one is the same without the \
                 batching options. The wall time includes Node.js start-up, loading and \
                 exit: {CONSUMERS} processes on an empty queue take {startup} ms (median), \
                 which is part of every graphile-worker figure, as in graphile-worker's own \
                 performance test.",
                version = g.version,
                node = node_version.unwrap_or("unknown"),
                add = Graphile::add_jobs_sql(n),
                env = graphile::ENV
                    .iter()
                    .map(|(k, v)| format!("`{k}={v}` (no log line per job)"))
                    .collect::<Vec<_>>()
                    .join(", "),
                task = graphile::NOOP_TASK.trim_end(),
                batched = indent(graphile::BATCHED_CONFIG),
                unbatched = indent(graphile::UNBATCHED_CONFIG),
                startup = fmt_num(median(startup_ms)),
            );
        }
        None => {
            let _ = writeln!(
                md,
                "- *graphile-worker*: {NOT_INSTALLED}; `cargo xtask bench` installs {} with \
                 npm and passes it with `--graphile-worker`.",
                graphile::VERSION
            );
        }
    }
    let _ = writeln!(
        md,
        "- Not the same guarantee: our relay delivers in order per partition key (a claim \
         takes only the oldest pending message of keys with none in flight), pgmq's \
         `read_batch` and graphile-worker's jobs without a queue name are unordered."
    );
    let _ = writeln!(
        md,
        "- Our ratio to a system is our median over its median (above 1: we drain faster)."
    );
    md
}

/// `text` with every line indented by two spaces (a block inside a list item).
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

/// `SHOW <setting>` on `db`'s server.
async fn show(db: &Db, setting: &str) -> Result<String> {
    use sea_orm::ConnectionTrait;
    let row = db
        .conn
        .query_one_raw(sea_orm::Statement::from_string(
            db.conn.get_database_backend(),
            format!("SHOW {setting}"),
        ))
        .await
        .with_context(|| format!("SHOW {setting} failed"))?
        .with_context(|| format!("SHOW {setting} returned no row"))?;
    Ok(row.try_get_by_index::<String>(0)?)
}

/// `node --version`, when `node` runs.
fn node_version() -> Option<String> {
    let out = std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
