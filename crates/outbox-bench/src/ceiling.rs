//! Scenario 6: the database's ceiling.
//!
//! Plain-SQL loops on the outbox table itself, with two clients of one connection
//! each: bulk `UPDATE … WHERE seq IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)
//! RETURNING` (what a claim must at least do) and `DELETE … RETURNING` (what a
//! consume-by-delete queue does). No relay can move rows faster than these on this
//! database; the report gives our relay's drain as a share of each. The three
//! measurements are interleaved in every round, so that drift hits them alike.

use crate::drain::{self, NoopPublisher};
use crate::harness::{self, Chart, Ctx, Db, Section, TABLE, Target, fmt_num, median};
use anyhow::{Context, Result, bail};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// Rows per statement in the plain-SQL loops (the reference figures use 1,000).
const BATCH: u64 = 1_000;
/// Clients of the plain-SQL loops, and relays of our drain.
const CLIENTS: usize = 2;
/// Keys of the backlog.
const KEYS: u64 = 1_000;

/// Which plain-SQL loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loop {
    /// `UPDATE … RETURNING`: claim rows by stamping a lease on them.
    Update,
    /// `DELETE … RETURNING`: take rows by deleting them.
    Delete,
}

impl Loop {
    /// The statement: one batch, every column returned. `$1` is the lease owner.
    ///
    /// Rows are picked in our claim's order, `(next_attempt_at, seq)`, which the partial
    /// index `outbox_messages_due` (pending rows only) serves. Ordered by `seq` alone,
    /// the planner walks the primary key and filters on `status`: every batch then
    /// steps over all the rows claimed before it, and an `UPDATE` loop slows down as it
    /// goes (a third of the rate over 200,000 rows on the development machine).
    fn sql(self) -> String {
        let pick = format!(
            "SELECT seq FROM {TABLE} WHERE status = 'pending' ORDER BY next_attempt_at, seq \
             LIMIT {BATCH} FOR UPDATE SKIP LOCKED"
        );
        match self {
            Loop::Update => format!(
                "UPDATE {TABLE} SET status = 'in_flight', lease_owner = $1, \
                 lease_expires_at = now() + interval '30 s' WHERE seq IN ({pick}) \
                 RETURNING {ALL_COLUMNS}"
            ),
            Loop::Delete => {
                format!("DELETE FROM {TABLE} WHERE seq IN ({pick}) RETURNING {ALL_COLUMNS}")
            }
        }
    }

    /// The values bound to [`Loop::sql`] for client `client`.
    fn values(self, client: usize) -> Vec<Value> {
        match self {
            Loop::Update => vec![Value::String(Some(format!("ceiling-{client}")))],
            Loop::Delete => Vec::new(),
        }
    }

    /// The name in the report.
    fn label(self) -> &'static str {
        match self {
            Loop::Update => "UPDATE … RETURNING",
            Loop::Delete => "DELETE … RETURNING",
        }
    }
}

/// Every column of the outbox table, as our claim returns them.
const ALL_COLUMNS: &str = "seq, id, status, attempts, max_attempts, next_attempt_at, \
     lease_owner, lease_token, lease_expires_at, last_error, published_at, consumed_at, \
     service, event_type, topic, partition_key, content_type, payload_json, payload_bytes, \
     headers, trace_context, schema_version, occurred_at, created_at";

/// Runs `kind` on `clients` (one connection each) until each of them gets no row back.
/// Checks that the clients together took exactly the `n` rows of the backlog and left
/// the table as the loop should. Returns rows per second over the wall time of all.
async fn sql_loop(db: &Db, clients: &[DatabaseConnection], kind: Loop, n: u64) -> Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, conn)| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let mut rows = 0u64;
                loop {
                    let statement = Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        kind.sql(),
                        kind.values(i),
                    );
                    let got = conn
                        .query_all_raw(statement)
                        .await
                        .with_context(|| format!("{} by client {i}", kind.label()))?;
                    if got.is_empty() {
                        return Ok::<_, anyhow::Error>(rows);
                    }
                    rows += got.len() as u64;
                }
            })
        })
        .collect();
    let mut rows = 0;
    for task in tasks {
        rows += task.await.context("a ceiling client panicked")??;
    }
    let elapsed = started.elapsed();
    if rows != n {
        bail!("{}: the clients took {rows} rows of {n}", kind.label());
    }
    let (left_sql, want) = match kind {
        Loop::Update => (
            format!("SELECT COUNT(*) FROM {TABLE} WHERE status = 'in_flight'"),
            n,
        ),
        Loop::Delete => (format!("SELECT COUNT(*) FROM {TABLE}"), 0),
    };
    let found = db.scalar(&left_sql).await?;
    if u64::try_from(found).ok() != Some(want) {
        bail!(
            "{}: {found} rows where {want} were expected after the loop",
            kind.label()
        );
    }
    let pending = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM {TABLE} WHERE status = 'pending'"
        ))
        .await?;
    if pending != 0 {
        bail!(
            "{}: {pending} rows still pending after the loop",
            kind.label()
        );
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// A fresh backlog of `n` pending messages.
async fn refill(db: &Db, n: u64) -> Result<()> {
    db.empty_outbox().await?;
    db.fill_pending(n, KEYS, true).await
}

/// `SHOW synchronous_commit` on `conn`.
async fn synchronous_commit(conn: &DatabaseConnection) -> Result<String> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SHOW synchronous_commit",
        ))
        .await?
        .context("SHOW synchronous_commit returned no row")?;
    Ok(row.try_get_by_index::<String>(0)?)
}

/// The runs of one measurement as `a, b, c`.
fn runs(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| fmt_num(*v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs scenario 6.
pub(crate) async fn run(ctx: &Ctx) -> Result<()> {
    let n = ctx.size(200_000, 10_000);
    let plan = ctx.plan();
    let db = ctx.fresh_db("bench_ceiling").await?;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(harness::connect(&db.url, 1).await?);
    }
    let sync_commit = synchronous_commit(&clients[0]).await?;

    let (mut update, mut delete, mut relay) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.warmup + plan.runs {
        let warmup = round < plan.warmup;
        let tag = if warmup {
            "warm-up".to_owned()
        } else {
            format!("run {}", round - plan.warmup + 1)
        };
        refill(&db, n).await?;
        let u = sql_loop(&db, &clients, Loop::Update, n)
            .await
            .with_context(|| format!("ceiling, UPDATE loop, {tag}"))?;
        refill(&db, n).await?;
        let d = sql_loop(&db, &clients, Loop::Delete, n)
            .await
            .with_context(|| format!("ceiling, DELETE loop, {tag}"))?;
        refill(&db, n).await?;
        let r = drain::drain_with(&db, CLIENTS, n, |_| Ok(Arc::new(NoopPublisher)))
            .await
            .with_context(|| format!("ceiling, relay drain, {tag}"))?;
        eprintln!(
            "  ceiling {tag}: UPDATE {} rows/s, DELETE {} rows/s, drain {} events/s",
            fmt_num(u),
            fmt_num(d),
            fmt_num(r)
        );
        if !warmup {
            update.push(u);
            delete.push(d);
            relay.push(r);
        }
    }
    for c in clients {
        c.close().await?;
    }

    let (u, d, r) = (median(&update), median(&delete), median(&relay));
    let share = |ceiling: f64| 100.0 * r / ceiling;
    let mut section = Section::new(ctx, "ceiling", "6. Database ceiling (plain SQL, 2 clients)");
    section.markdown = format!(
        "What this PostgreSQL can do on the outbox table itself, with no relay: {CLIENTS} \
         clients, each on its own connection, loop on one statement until it returns no \
         row, over a backlog of {nf} pending messages ({KEYS} keys, freshly filled and \
         analysed before every loop). Each statement takes {BATCH} rows with \
         `WHERE seq IN (SELECT seq … WHERE status = 'pending' ORDER BY next_attempt_at, seq \
         LIMIT {BATCH} FOR UPDATE SKIP LOCKED)` and returns every column; the order is our \
         claim's, served by the partial index of pending rows (ordered by `seq` alone, the \
         planner walks the primary key past every row already claimed, and an `UPDATE` loop \
         slows down as it goes); values are bound and the \
         statements prepared once per connection. The `UPDATE` stamps a lease \
         (`status`, `lease_owner`, `lease_expires_at`); the `DELETE` removes the rows. \
         Every statement commits on its own (synchronous commit: `{sync_commit}`). No relay \
         can move rows faster than these loops; ours (`drain`, {CLIENTS} relays, batch \
         {relay_batch}, a publisher that acknowledges at once) also settles every message \
         in a second statement. Rates are rows over the wall time of all clients; median of \
         {runs} run(s) after {warmup} warm-up, the three measurements interleaved in every \
         round.\n\n\
         | Loop | rows/s (median) | runs | relay's share |\n|---|---|---|---|\n\
         | {ul} (claim ceiling) | {uf} | {ur} | {us:.0} % |\n\
         | {dl} (consume ceiling) | {df} | {dr} | {ds:.0} % |\n\
         | outbox-rs drain, {CLIENTS} relays | {rf} | {rr} | |\n\n\
         For comparison, the issue's reference machine (2 vCPU, PostgreSQL 15, synchronous \
         commit on, 2 clients, batch 1,000) gave about 97k rows/s for `UPDATE … RETURNING` \
         and 206k rows/s for `DELETE … RETURNING`.\n",
        nf = fmt_num(n as f64),
        relay_batch = drain::BATCH,
        runs = plan.runs,
        warmup = plan.warmup,
        ul = Loop::Update.label(),
        dl = Loop::Delete.label(),
        uf = fmt_num(u),
        df = fmt_num(d),
        rf = fmt_num(r),
        ur = runs(&update),
        dr = runs(&delete),
        rr = runs(&relay),
        us = share(u),
        ds = share(d),
    );
    section.targets.push(Target::ratio(
        "drain vs DELETE … RETURNING ceiling",
        r,
        d,
        0.4,
        false,
        "events/s",
    ));
    section.data = json!({
        "messages": n,
        "keys": KEYS,
        "batch": BATCH,
        "clients": CLIENTS,
        "relay_batch": drain::BATCH,
        "synchronous_commit": sync_commit,
        "plan": plan,
        "update_rows_per_s": update,
        "delete_rows_per_s": delete,
        "drain_events_per_s": relay,
        "median": { "update": u, "delete": d, "drain": r },
        "relay_share_percent": { "update": share(u), "delete": share(d) },
    });
    section.charts.push(Chart {
        name: "rates".into(),
        title: format!(
            "Rows per second on the outbox table, {CLIENTS} clients, {} rows",
            fmt_num(n as f64)
        ),
        unit: "rows/s".into(),
        groups: vec![
            Loop::Update.label().into(),
            Loop::Delete.label().into(),
            format!("outbox-rs drain ({CLIENTS} relays)"),
        ],
        series: vec![("rows/s".into(), vec![u, d, r])],
    });
    section.write(&ctx.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_take_a_batch_of_pending_rows_and_return_every_column() {
        for kind in [Loop::Update, Loop::Delete] {
            let sql = kind.sql();
            assert!(sql.contains("WHERE seq IN (SELECT seq FROM outbox_messages"));
            assert!(
                sql.contains("ORDER BY next_attempt_at, seq LIMIT 1000 FOR UPDATE SKIP LOCKED)")
            );
            assert!(sql.ends_with(&format!("RETURNING {ALL_COLUMNS}")));
            // As many placeholders as values.
            assert_eq!(sql.matches('$').count(), kind.values(0).len());
        }
        assert!(
            Loop::Update
                .sql()
                .starts_with("UPDATE outbox_messages SET status = 'in_flight'")
        );
        assert!(
            Loop::Delete
                .sql()
                .starts_with("DELETE FROM outbox_messages")
        );
    }
}
