//! The report: the machine and servers, a markdown table per part, and the JSON.

use crate::baseline::{Baseline, SEQUENTIAL_SENDS};
use crate::cells::{Cell, RunStats};
use crate::notify::NotifyCost;
use crate::probe::Probe;
use crate::stats::Dist;
use crate::{Args, TARGET_P50, TARGET_P99};
use anyhow::{Context, Result};
use chrono::Utc;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The machine, the servers and the configuration.
pub(crate) struct Setup {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory: String,
    pub(crate) kernel: String,
    pub(crate) load_start: String,
    pub(crate) postgres: String,
    pub(crate) pg_settings: Vec<(&'static str, String)>,
    pub(crate) broker: String,
    pub(crate) profile: &'static str,
}

impl Setup {
    pub(crate) async fn describe(args: &Args, url: &str) -> Result<Self> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']))
            })
            .unwrap_or("unknown")
            .to_owned();
        let memory = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .map_or("unknown".to_owned(), |kb| {
                format!("{:.0} GiB", kb as f64 / (1024.0 * 1024.0))
            });
        let db = outbox_sea_orm::connect(url).await?;
        let setting = |sql: String| {
            let db = db.clone();
            async move {
                let row = db
                    .query_one_raw(sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Postgres,
                        sql,
                    ))
                    .await?
                    .context("no row")?;
                anyhow::Ok(row.try_get::<String>("", "v")?)
            }
        };
        let postgres = setting("SELECT version() AS v".into()).await?;
        let mut pg_settings = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_buffers",
            "max_connections",
        ] {
            let value = setting(format!("SELECT current_setting('{name}') AS v")).await?;
            pg_settings.push((name, value));
        }
        db.close().await?;
        Ok(Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_start: load_average(),
            postgres,
            pg_settings,
            broker: args.broker.clone(),
            profile: if cfg!(debug_assertions) {
                "dev (debug assertions on)"
            } else {
                "release"
            },
        })
    }

    pub(crate) fn markdown(&self) -> String {
        let settings: Vec<String> = self
            .pg_settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "# bench_latency\n\nmachine: {} × {}, {}, Linux {}, load average at start {}\n\
             PostgreSQL: {} ({})\nbroker: {}\nbuild: {}\n",
            self.cores,
            self.cpu,
            self.memory,
            self.kernel,
            self.load_start,
            self.postgres,
            settings.join(", "),
            self.broker,
            self.profile
        )
    }

    pub(crate) fn json(&self) -> Value {
        let settings: BTreeMap<&str, &str> = self
            .pg_settings
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        json!({
            "cpu": self.cpu,
            "cores": self.cores,
            "memory": self.memory,
            "kernel": self.kernel,
            "load_average_start": self.load_start,
            "postgres": self.postgres,
            "postgres_settings": settings,
            "broker": self.broker,
            "build": self.profile,
        })
    }
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) struct Report {
    pub(crate) setup: Setup,
    /// The search for the maximum sustainable rate (not run with --quick or --high-rate).
    pub(crate) probe: Option<Probe>,
    /// The high rate and what it is ("80% of max", …), if one was run.
    pub(crate) high: Option<(&'static str, f64)>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) notify: NotifyCost,
    pub(crate) baseline: Vec<Baseline>,
    pub(crate) took: Duration,
}

pub(crate) fn ms(d: Duration) -> String {
    let m = ms_f(d);
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.2} ms")
    }
}

pub(crate) fn ms_f(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

impl Report {
    pub(crate) fn markdown(&self, args: &Args) -> String {
        let mut out = String::new();
        let relay = args.relay_config();
        let _ = writeln!(
            out,
            "\n## Commit-to-ack latency\n\n{} keys, {} paced writer tasks, {} partitions; \
             per cell the median of {} runs, each a fresh relay, {:.1} s of warm-up, then \
             {:.0} s measured. Relay: batch_size {}, poll_interval {:?}, \
             min_poll_interval {:?}, concurrency {}, pipeline_depth {}; KafkaPublisher defaults; PgNotifier window {} ms. \
             Targets at {:.0}/s (in-process and cross-process): p50 ≤ {} ms, p99 ≤ {} ms.\n",
            args.keys,
            args.writers,
            args.partitions,
            args.runs,
            args.warmup_len().as_secs_f64(),
            args.run_len().as_secs_f64(),
            relay.batch_size,
            relay.poll_interval,
            relay.min_poll_interval,
            relay.concurrency,
            relay.pipeline_depth,
            args.notify_window_ms,
            args.rate,
            TARGET_P50.as_millis(),
            TARGET_P99.as_millis(),
        );
        out.push_str(
            "CPU: how busy the machine's cores were over a run (warm-up included), and the \
             broker process's CPU time in cores (1.00 = one core all the time); medians \
             over the runs.\n\n\
             | Mode | Rate/s (target) | Achieved/s | Count | p50 | p99 | p99.9 | max | CPU busy | broker cores | Target |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.cells {
            let s = &c.summary;
            let target = match c.meets() {
                Some((p50, p99)) => format!("p50 {} p99 {}", mark(p50), mark(p99)),
                None => "–".into(),
            };
            let (busy, broker) = s.cpu.cells();
            let _ = writeln!(
                out,
                "| {} | {:.0} ({}) | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.mode.name(),
                c.target_rate,
                c.rate_label,
                s.achieved_rate,
                s.latency.count,
                ms(s.latency.p50),
                ms(s.latency.p99),
                ms(s.latency.p999),
                ms(s.latency.max),
                busy,
                broker,
                target
            );
        }

        out.push_str(
            "\n## Where the time goes\n\nPer message, median over the runs of p50 / p99: \
             from the commit to the start of the claim that took it, that claim, and from \
             the claim's end to the broker's ack. Per relay step: claims that found work, \
             publish calls (a batch, until its last ack) and settlements, p50 / p99 over \
             the cell.\n\n\
             | Mode | Rate/s | wait for claim | claim | claim → ack | batches | mean batch | \
             claim call | publish call | settle call | empty claims | NOTIFYs |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.cells {
            let s = &c.summary;
            let pair = |d: &Dist| format!("{} / {}", ms(d.p50), ms(d.p99));
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                c.mode.name(),
                c.target_rate,
                pair(&s.wait),
                pair(&s.claim),
                pair(&s.publish),
                c.batches,
                c.mean_batch,
                pair(&c.claims),
                pair(&c.publish_calls),
                pair(&c.settles),
                c.empty_claims,
                c.notifies.map_or("–".into(), |n| n.to_string()),
            );
        }
        let trouble: Vec<String> = self
            .cells
            .iter()
            .filter(|c| c.retried + c.dead + c.errors > 0)
            .map(|c| {
                format!(
                    "{} at {:.0}/s: {} retried, {} dead, {} relay errors",
                    c.mode.name(),
                    c.target_rate,
                    c.retried,
                    c.dead,
                    c.errors
                )
            })
            .collect();
        if !trouble.is_empty() {
            let _ = writeln!(out, "\nNot clean: {}", trouble.join("; "));
        }

        let high = self.high.map_or("not run".to_owned(), |(label, r)| {
            format!("{r:.0}/s ({label})")
        });
        match &self.probe {
            Some(probe) => {
                let _ = writeln!(
                    out,
                    "\n## Maximum sustainable rate\n\nPaced steps of {:.0} s with an \
                     in-process relay (configured as above); sustainable when the writers \
                     achieve 95% of the rate and at most 0.25 s worth of messages is \
                     unacknowledged when they stop.\n\n\
                     | Rate/s | Achieved/s | Backlog at the end | Sustainable |\n|---|---|---|---|",
                    probe.step.as_secs_f64(),
                );
                for step in &probe.steps {
                    let _ = writeln!(
                        out,
                        "| {:.0} | {:.0} | {} | {} |",
                        step.rate,
                        step.achieved,
                        step.backlog,
                        mark(step.sustainable)
                    );
                }
                let _ = writeln!(
                    out,
                    "\nMaximum sustainable rate: {:.0}/s; high rate: {high}.",
                    probe.max
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "\n## Maximum sustainable rate\n\nNot searched (--quick or --high-rate); \
                     high rate: {high}."
                );
            }
        }

        let plain = self.notify.results[0].rate.max(f64::MIN_POSITIVE);
        let _ = writeln!(
            out,
            "\n## What NOTIFY costs\n\n{} writers at full speed, one message per \
             transaction, median of {} rounds × {:.0} s per variant (alternating); a \
             PgWakeListener listening ({} wakes received). PgNotifier window {} ms.\n\n\
             | Variant | commits/s | ratio to no NOTIFY | transaction p50 | p99 | NOTIFYs sent |\n\
             |---|---|---|---|---|---|",
            args.notify_writers,
            args.notify_rounds,
            self.notify.round.as_secs_f64(),
            self.notify.wakes,
            args.notify_window_ms
        );
        for r in &self.notify.results {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.2} | {} | {} | {} for {} commits |",
                r.variant.name(),
                r.rate,
                r.rate / plain,
                ms(r.transactions.p50),
                ms(r.transactions.p99),
                r.notifies,
                r.commits
            );
        }

        let _ = writeln!(
            out,
            "\n## Producer baseline\n\nA bare rdkafka FutureProducer with the publisher's \
             settings (idempotent, acks=all) to the same broker, send to ack: paced at \
             {:.0}/s for {:.0} s, and {SEQUENTIAL_SENDS} messages one at a time (each sent \
             when the previous was acknowledged: the unloaded round trip); then paced again \
             while {} writers commit to PostgreSQL at the same rate (no relay). CPU as \
             in the latency table, over the timed sends.\n\n\
             | Load | linger.ms | Achieved/s | Count | p50 | p99 | p99.9 | max | CPU busy | broker cores |\n\
             |---|---|---|---|---|---|---|---|---|---|",
            args.rate,
            args.run_len().as_secs_f64(),
            args.writers
        );
        for b in &self.baseline {
            let load = match (b.rate, b.under_load) {
                (None, _) => "one at a time".to_owned(),
                (Some(r), false) => format!("{r:.0}/s"),
                (Some(r), true) => format!("{r:.0}/s + writers"),
            };
            let (busy, broker) = b.cpu.cells();
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                load,
                b.linger_ms.map_or("default (5)".into(), |l| l.to_string()),
                b.achieved,
                b.latency.count,
                ms(b.latency.p50),
                ms(b.latency.p99),
                ms(b.latency.p999),
                ms(b.latency.max),
                busy,
                broker
            );
        }
        let _ = writeln!(
            out,
            "\ntotal {:.0} s; load average at the end {}",
            self.took.as_secs_f64(),
            load_average()
        );
        out
    }

    /// The report as a section of `cargo xtask bench`'s page (the shape of
    /// `outbox-bench`'s `Section`): the figures, the issue-8 targets at the target rate
    /// for the modes that have them, and a chart of p50/p99/p999 per cell.
    pub(crate) fn section(&self, args: &Args) -> Value {
        let mut targets = Vec::new();
        for c in self.cells.iter().filter(|c| c.meets().is_some()) {
            let l = &c.summary.latency;
            for (what, value, bound) in [("p50", l.p50, TARGET_P50), ("p99", l.p99, TARGET_P99)] {
                targets.push(json!({
                    "what": format!("{what} at {:.0}/s, {}", c.target_rate, c.mode.name()),
                    "goal": format!("≤ {} ms", bound.as_millis()),
                    "measured": ms(value),
                    "met": value <= bound,
                }));
            }
        }
        let groups: Vec<String> = self
            .cells
            .iter()
            .map(|c| format!("{}, {:.0}/s", c.mode.name(), c.target_rate))
            .collect();
        let series: Vec<Value> = [("p50", 0), ("p99", 1), ("p999", 2)]
            .into_iter()
            .map(|(name, i)| {
                let values: Vec<f64> = self
                    .cells
                    .iter()
                    .map(|c| {
                        let l = &c.summary.latency;
                        ms_f([l.p50, l.p99, l.p999][i])
                    })
                    .collect();
                json!([name, values])
            })
            .collect();
        json!({
            "name": "latency",
            "title": "4. Commit-to-ack latency",
            "quick": args.quick,
            "finished_at": Utc::now().to_rfc3339(),
            "data": self.json(args),
            "targets": targets,
            "charts": [{
                "name": "latency",
                "title": "Commit-to-broker-ack latency (median of runs)",
                "unit": "ms",
                "groups": groups,
                "series": series,
            }],
        })
    }

    pub(crate) fn json(&self, args: &Args) -> Value {
        let relay = args.relay_config();
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|c| {
                let meets = c.meets().map(|(p50, p99)| json!({"p50": p50, "p99": p99}));
                json!({
                    "mode": c.mode.key(),
                    "mode_name": c.mode.name(),
                    "rate": c.rate_label,
                    "target_rate": c.target_rate,
                    "median": c.summary.json(),
                    "runs": c.runs.iter().map(RunStats::json).collect::<Vec<_>>(),
                    "meets_target": meets,
                    "relay": {
                        "claims": c.claims.json(),
                        "empty_claims": c.empty_claims,
                        "batches": c.batches,
                        "mean_batch": c.mean_batch,
                        "publish_calls": c.publish_calls.json(),
                        "settles": c.settles.json(),
                        "retried": c.retried,
                        "dead": c.dead,
                        "errors": c.errors,
                    },
                    "notifies_sent": c.notifies,
                })
            })
            .collect();
        let steps: Vec<Value> = self
            .probe
            .iter()
            .flat_map(|p| &p.steps)
            .map(|s| {
                json!({
                    "rate": s.rate,
                    "achieved": s.achieved,
                    "backlog": s.backlog,
                    "sustainable": s.sustainable,
                })
            })
            .collect();
        let baseline: Vec<Value> = self
            .baseline
            .iter()
            .map(|b| {
                json!({
                    "rate": b.rate,
                    "linger_ms": b.linger_ms,
                    "under_writer_load": b.under_load,
                    "achieved_rate": b.achieved,
                    "latency": b.latency.json(),
                    "cpu": b.cpu.json(),
                })
            })
            .collect();
        let plain = self.notify.results[0].rate.max(f64::MIN_POSITIVE);
        let notify: Vec<Value> = self
            .notify
            .results
            .iter()
            .map(|r| {
                json!({
                    "variant": r.variant.key(),
                    "commits_per_second": r.rate,
                    "rounds": r.rates,
                    "ratio_to_plain": r.rate / plain,
                    "transaction": r.transactions.json(),
                    "notifies_sent": r.notifies,
                    "commits": r.commits,
                })
            })
            .collect();
        json!({
            "benchmark": "bench_latency",
            "finished_at": Utc::now().to_rfc3339(),
            "took_seconds": self.took.as_secs_f64(),
            "load_average_end": load_average(),
            "setup": self.setup.json(),
            "config": {
                "quick": args.quick,
                "keys": args.keys,
                "writers": args.writers,
                "partitions": args.partitions,
                "warmup_seconds": args.warmup_len().as_secs_f64(),
                "runs": args.runs,
                "run_seconds": args.run_len().as_secs_f64(),
                "notify_window_ms": args.notify_window_ms,
                "relay": {
                    "batch_size": relay.batch_size,
                    "poll_interval_ms": relay.poll_interval.as_millis() as u64,
                    "min_poll_interval_ms": relay.min_poll_interval.as_millis() as u64,
                    "concurrency": relay.concurrency,
                    "pipeline_depth": relay.pipeline_depth,
                },
            },
            "targets": {
                "rate": args.rate,
                "p50_ms": ms_f(TARGET_P50),
                "p99_ms": ms_f(TARGET_P99),
            },
            "max_rate": {
                "steps": steps,
                "searched": self.probe.is_some(),
                "step_seconds": self.probe.as_ref().map(|p| p.step.as_secs_f64()),
                "max_sustainable": self.probe.as_ref().map(|p| p.max),
                "high_rate": self.high.map(|(_, r)| r),
                "high_rate_label": self.high.map(|(label, _)| label),
            },
            "latency": cells,
            "notify_cost": {
                "writers": args.notify_writers,
                "rounds": args.notify_rounds,
                "round_seconds": self.notify.round.as_secs_f64(),
                "wakes_received": self.notify.wakes,
                "variants": notify,
            },
            "producer_baseline": baseline,
        })
    }
}
