//! Scenario 5: claim cost and drain rate as finished history grows (0, 1M, 5M rows
//! retained), and on tables whose statistics are missing or stale.
//!
//! Each measurement drains a fresh backlog with the store's own claim and settle, in
//! a loop of one claim loop (what one relay does, with a publisher that takes no
//! time), timing every claim: the claim p50/p99 and the drain rate come from the same
//! loop.

use crate::drain::BATCH;
use crate::harness::{Chart, Ctx, Db, Dist, Section, TABLE, Target, fmt_num, median};
use anyhow::{Context, Result, bail};
use chrono::Utc;
use outbox_ports::{ClaimRequest, Disposition, MessageStore, Settlement};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Keys of every backlog here.
const KEYS: u64 = 1_000;

/// One measured drain.
#[derive(Debug, Clone)]
struct Drained {
    /// Events per second over the whole backlog.
    rate: f64,
    /// Every claim's duration.
    claims: Dist,
}

impl crate::harness::Headline for Drained {
    fn headline(&self) -> f64 {
        self.rate
    }
}

/// Drains the `n` pending messages of `db` with claim-and-settle loops, timing each
/// claim.
async fn drain_timed(db: &Db, n: u64) -> Result<Drained> {
    let store = SeaOrmStore::new(db.pool(2).await?, StoreConfig::default())?;
    let mut times = Vec::new();
    let mut done = 0u64;
    let started = Instant::now();
    while done < n {
        let request = ClaimRequest {
            owner: "bench-history".into(),
            limit: BATCH,
            lease_for: Duration::from_secs(60),
            now: Utc::now(),
        };
        let t = Instant::now();
        let claimed = store.claim(&request).await?;
        times.push(t.elapsed());
        if claimed.is_empty() {
            bail!(
                "a claim found nothing with {} of {n} messages left",
                n - done
            );
        }
        let settlements = claimed
            .iter()
            .map(|c| Settlement {
                id: c.message.id,
                token: c.lease.token,
                disposition: Disposition::Published,
            })
            .collect();
        let report = store.settle(settlements, Utc::now()).await?;
        if !report.lease_lost.is_empty() {
            bail!(
                "{} leases lost in a single-relay drain",
                report.lease_lost.len()
            );
        }
        done += claimed.len() as u64;
        if started.elapsed() > Duration::from_secs(600) {
            bail!("drained only {done} of {n} messages in 10 minutes");
        }
    }
    Ok(Drained {
        rate: n as f64 / started.elapsed().as_secs_f64(),
        claims: Dist::of(&times),
    })
}

/// Removes the rows after `history_end` (a drained backlog) and vacuums, so the
/// history stays what it was.
async fn drop_backlog(db: &Db, history_end: i64) -> Result<()> {
    db.exec(&format!("DELETE FROM {TABLE} WHERE seq > {history_end}"))
        .await?;
    db.exec(&format!("VACUUM {TABLE}")).await
}

/// Median of the runs' rates and the claim distribution of the median run.
fn summarise(runs: &[Drained]) -> (f64, Dist, Vec<Value>) {
    let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    let m = median(&rates);
    let mid = runs
        .iter()
        .min_by(|a, b| (a.rate - m).abs().total_cmp(&(b.rate - m).abs()))
        .map(|r| r.claims)
        .unwrap_or_default();
    let all = runs
        .iter()
        .map(|r| json!({ "events_per_s": r.rate, "claim_ms": r.claims }))
        .collect();
    (m, mid, all)
}

/// Runs scenario 5.
pub(crate) async fn run(ctx: &Ctx) -> Result<()> {
    let backlog = ctx.size(100_000, 5_000);
    let levels: Vec<u64> = if ctx.quick {
        vec![0, 100_000]
    } else {
        vec![0, 1_000_000, 5_000_000]
    };
    let plan = ctx.plan();
    let mut section = Section::new(
        ctx,
        "history",
        "5. History and statistics: claim cost and drain rate",
    );
    let mut rows = Vec::new();
    let mut table = String::from(
        "| Table | events/s (median) | claim p50 ms | claim p99 ms |\n|---|---|---|---|\n",
    );
    let mut rates = Vec::new();
    let mut claim_p50 = Vec::new();

    // History levels: one database, grown from one level to the next.
    let db = ctx.fresh_db("bench_history").await?;
    let mut retained = 0;
    for &level in &levels {
        db.fill_published(level - retained, KEYS).await?;
        retained = level;
        db.exec(&format!("VACUUM ANALYZE {TABLE}")).await?;
        let history_end = db
            .scalar(&format!("SELECT COALESCE(MAX(seq), 0) FROM {TABLE}"))
            .await?;
        let label = match level {
            0 => "no finished rows".to_owned(),
            n => format!("{} finished rows", fmt_num(n as f64)),
        };
        let runs = plan
            .measure(&label, |_warmup| {
                let db = db.clone();
                async move {
                    db.fill_pending(backlog, KEYS, true).await?;
                    let drained = drain_timed(&db, backlog).await?;
                    drop_backlog(&db, history_end).await?;
                    Ok(drained)
                }
            })
            .await?;
        let (rate, claims, all) = summarise(&runs);
        table.push_str(&format!(
            "| {label} | {} | {:.2} | {:.2} |\n",
            fmt_num(rate),
            claims.p50,
            claims.p99
        ));
        rows.push(json!({ "table": label, "finished_rows": level, "events_per_s": rate, "claim_ms": claims, "runs": all }));
        rates.push(rate);
        claim_p50.push(claims.p50);
    }
    let (first, last) = (rates[0], rates[rates.len() - 1]);
    let top = fmt_num(*levels.last().unwrap_or(&0) as f64);
    section.targets.push(Target::ratio(
        &format!("claim p50 with {top} finished rows vs none"),
        claim_p50[claim_p50.len() - 1],
        claim_p50[0],
        1.5,
        true,
        "ms",
    ));
    section.targets.push(Target::ratio(
        &format!("drain rate with none vs {top} finished rows"),
        first,
        last,
        1.5,
        true,
        "events/s",
    ));
    drop(db);

    // Statistics: the same backlog on a table that was never analysed, on one analysed
    // while it held no pending rows (what a relay that keeps up leaves behind), and on
    // an analysed one. Autovacuum is off for the table, so nothing analyses it behind
    // the benchmark's back.
    let db = ctx.fresh_db("bench_stats").await?;
    db.exec(&format!(
        "ALTER TABLE {TABLE} SET (autovacuum_enabled = false)"
    ))
    .await?;
    let mut stats_rates = Vec::new();
    let mut stats_p50 = Vec::new();
    for (key, label) in [
        ("cold", "bulk-filled, never analysed"),
        ("stale", "analysed with no pending rows"),
        ("analysed", "analysed after the fill"),
    ] {
        let runs = plan
            .measure(label, |_warmup| {
                let db = db.clone();
                async move {
                    // A fresh table each run: DROP and recreate would lose the settings,
                    // so TRUNCATE, which also resets the statistics' basis (not pg_stats).
                    db.exec(&format!("TRUNCATE {TABLE}")).await?;
                    db.exec(&format!(
                        "DELETE FROM pg_catalog.pg_statistic WHERE starelid = '{TABLE}'::regclass"
                    ))
                    .await
                    .context("clearing the statistics (needs a superuser)")?;
                    match key {
                        "cold" => db.fill_pending(backlog, KEYS, false).await?,
                        "stale" => {
                            db.fill_published(backlog, KEYS).await?;
                            db.exec(&format!("ANALYZE {TABLE}")).await?;
                            db.exec(&format!("TRUNCATE {TABLE}")).await?;
                            db.fill_pending(backlog, KEYS, false).await?;
                        }
                        _ => {
                            db.fill_pending(backlog, KEYS, false).await?;
                            db.exec(&format!("ANALYZE {TABLE}")).await?;
                        }
                    }
                    drain_timed(&db, backlog).await
                }
            })
            .await?;
        let (rate, claims, all) = summarise(&runs);
        table.push_str(&format!(
            "| {label} ({} pending) | {} | {:.2} | {:.2} |\n",
            fmt_num(backlog as f64),
            fmt_num(rate),
            claims.p50,
            claims.p99
        ));
        rows.push(json!({ "table": label, "statistics": key, "events_per_s": rate, "claim_ms": claims, "runs": all }));
        stats_rates.push(rate);
        stats_p50.push(claims.p50);
    }
    for (i, what) in [(0, "never analysed"), (1, "stale statistics")] {
        section.targets.push(Target::ratio(
            &format!("claim p50, {what} vs analysed"),
            stats_p50[i],
            stats_p50[2],
            1.5,
            true,
            "ms",
        ));
    }

    section.markdown = format!(
        "Each row drains a backlog of {} pending messages over {KEYS} keys with one \
         claim loop (claim {BATCH}, settle all as published; no publisher), timing every \
         claim. History rows are published messages retained by the retention policy, \
         filled in bulk and vacuumed and analysed before the backlog. The statistics rows \
         use a table with autovacuum off: *never analysed* is filled in bulk with no \
         ANALYZE; *analysed with no pending rows* was analysed while it held only \
         published rows, then refilled with pending ones (the statistics a relay that \
         keeps up leaves behind when a burst arrives). Median of {} runs after {} \
         warm-up; the claim percentiles are those of the median run.\n\n{table}",
        fmt_num(backlog as f64),
        plan.runs,
        plan.warmup,
    );
    section.data =
        json!({ "backlog": backlog, "keys": KEYS, "batch": BATCH, "plan": plan, "rows": rows });
    let history_groups: Vec<String> = levels
        .iter()
        .map(|l| format!("{} finished", fmt_num(*l as f64)))
        .collect();
    let mut groups = history_groups;
    groups.extend([
        "never analysed".into(),
        "stale stats".into(),
        "analysed".into(),
    ]);
    let mut all_rates = rates.clone();
    all_rates.extend(&stats_rates);
    let mut all_p50 = claim_p50.clone();
    all_p50.extend(&stats_p50);
    section.charts.push(Chart {
        name: "rate".into(),
        title: format!("Drain rate of {} messages", fmt_num(backlog as f64)),
        unit: "events/s".into(),
        groups: groups.clone(),
        series: vec![("outbox-rs".into(), all_rates)],
    });
    section.charts.push(Chart {
        name: "claim".into(),
        title: format!("Claim of {BATCH}, p50"),
        unit: "ms".into(),
        groups,
        series: vec![("claim p50".into(), all_p50)],
    });
    section.write(&ctx.out)
}
