//! Commit-to-broker-ack latency of the relay on PostgreSQL and Kafka, with and without
//! wake-ups, and what the coalesced `NOTIFY` costs the writers.
//!
//! Run through `cargo xtask bench`, which starts PostgreSQL and a Kafka-protocol broker
//! (tansu) and writes its section of the report into `target/bench`. By hand:
//!
//! ```text
//! cargo run -p outbox-kafka --example bench_latency -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/postgres \
//!     --bootstrap 127.0.0.1:9092 [--quick] [--out target/bench]
//! ```
//!
//! Method (docs/benchmarks.md has the numbers and the discussion):
//!
//! 1. A fresh database through the admin URL, one outbox table per mode, one topic.
//! 2. **Maximum sustainable rate**: paced steps (the writer of step 3) with an
//!    in-process relay, starting at the target rate, ×1.5 while sustainable, then
//!    bisecting to within 10%. A rate is sustainable when the writers achieve 95% of it
//!    and at most 0.25 s worth of messages is unacknowledged when they stop. The high
//!    rate is 80% of the maximum. `--high-rate` skips the search, and so does
//!    `--quick`, which takes 1.5 × the target rate instead.
//! 3. **Latency cells**, one per (rate, mode): a paced, open-loop writer schedules
//!    message `i` at `i / rate` and spreads the slots over `--writers` tasks; each
//!    transaction is `BEGIN`, `enqueue_in` one message (key `i % --keys`), commit. The
//!    commit instant is taken when the commit returns. The relay (`RelayConfig`
//!    defaults) publishes through `KafkaPublisher` (defaults: idempotent, `acks=all`)
//!    wrapped so that each message is handed to the inner publisher on its own and its
//!    ack instant is taken when its outcome comes back `Ok`; latency = ack − commit.
//!    The store is wrapped too, to time claims and settlements. Modes:
//!    - `in-process`: the writer's store has the relay's waker (`with_waker`) and
//!      commits with `SeaOrmStore::commit`; writer and relay share a pool.
//!    - `cross-process`: the relay has its own pool and is woken only by
//!      `PgNotifier` (writer side, `--notify-window-ms`) → `PgWakeListener`.
//!    - `poll-only`: no wake at all; the relay has its own pool and finds the messages
//!      by polling (`poll_interval` 1 s, adaptive `min_poll_interval` 10 ms): the control.
//!    - `in-process, pipeline depth 1` (at the target rate only): `in-process` with a
//!      claim loop that claims, publishes and settles in turn, to show what the
//!      pipeline (`RelayConfig::pipeline_depth`) buys; and `in-process` with
//!      librdkafka's default `linger.ms` of 5 ms instead of the publisher's 0, to show
//!      what the producer's batching delay costs.
//!
//!    Rates: `--low-rate` (an idle relay between messages: what wakes are for), `--rate`
//!    (the target, 1000/s) and 80% of the maximum. Each table first gets `--history`
//!    published rows and a `VACUUM ANALYZE`, as a table in steady state would have.
//!    A cell is `--runs` runs; per rate the runs go round the modes (run 1 of each
//!    mode, then run 2, …) so that noise on the machine hits them alike. A run starts a
//!    fresh relay, writes without a pause for `--warmup-secs` then `--run-secs`, and
//!    counts the messages whose slot fell in the second part. The report gives the
//!    median over the runs of each statistic, and splits every message's latency into
//!    the wait for the claim that took it, the claim, and claim-to-ack.
//! 4. **NOTIFY cost**: `--notify-writers` writers at full speed, one message per
//!    transaction, a `PgWakeListener` listening; in alternating rounds (the order
//!    rotates) the commit is plain, followed by the coalesced `PgNotifier`, or carries a
//!    `NOTIFY` inside the transaction (what coalescing avoids). The table is truncated
//!    before each round. Reported: median commits/s and the ratios to plain commits.
//! 5. **Producer baseline**: a bare rdkafka `FutureProducer` with the publisher's
//!    settings sends to the same broker, paced at the target rate, one message at a
//!    time (the unloaded round trip), and paced again while writers commit to
//!    PostgreSQL at the target rate with no relay (what the database load alone does to
//!    the broker on a shared machine); its send-to-ack latency, with librdkafka's
//!    default `linger.ms` (5 ms) and with 0.
//!
//! The latency targets of issue 8 (p50 ≤ 5 ms and p99 ≤ 25 ms at 1000/s) are marked
//! ✓/✗ in the report; missing them does not fail the run. It fails only on errors
//! (a message not delivered within a minute included). The database is dropped at the
//! end, also when a step fails.

mod baseline;
mod cells;
mod cpu;
mod instrument;
mod notify;
mod probe;
mod report;
mod stats;
mod writer;

use crate::baseline::producer_baseline;
use crate::cells::{Cell, Mode, ModeSetup, RunOutcome, run_once, store_config};
use crate::notify::notify_cost;
use crate::probe::probe_max_rate;
use crate::report::{Report, Setup};
use crate::writer::{Commit, Writer};
use anyhow::{Context, Result, bail};
use clap::Parser;
use outbox_domain::Identifier;
use outbox_kafka::{KafkaConfig, Provisioning, TopicSpec, ensure_topics};
use outbox_runtime::RelayConfig;
use outbox_sea_orm::SeaOrmStore;
use sea_orm::ConnectionTrait;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The targets of issue 8, at the target rate.
pub(crate) const TARGET_P50: Duration = Duration::from_millis(5);
pub(crate) const TARGET_P99: Duration = Duration::from_millis(25);

/// Commit-to-broker-ack latency on PostgreSQL + Kafka, and the cost of NOTIFY.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench_latency")]
pub(crate) struct Args {
    /// Admin URL of a PostgreSQL server; a database is created and dropped.
    #[arg(long, env = "BENCH_DATABASE_URL")]
    pub(crate) database_url: String,
    /// The Kafka broker's host:port.
    #[arg(long, env = "BENCH_KAFKA_BOOTSTRAP")]
    pub(crate) bootstrap: String,
    /// Also write the results, as a section of `cargo xtask bench`'s report, into this
    /// directory: `latency.md` (the markdown below) and `latency.json` (every figure,
    /// with the targets and the chart).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Short runs (0.5 s warm-up and 2 s per run, shorter NOTIFY rounds) and no search
    /// for the maximum rate: about two minutes.
    #[arg(long)]
    pub(crate) quick: bool,
    /// The target rate, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,
    /// The low rate, at which the relay goes idle between messages.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) low_rate: f64,
    /// The high rate [default: 80% of the measured maximum sustainable rate; 1.5 ×
    /// --rate with --quick, which skips the search].
    #[arg(long)]
    pub(crate) high_rate: Option<f64>,
    /// Partition keys the messages are spread over.
    #[arg(long, default_value_t = 100)]
    pub(crate) keys: u64,
    /// Measured runs per cell.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Length of a run, seconds [default: 10; 2 with --quick].
    #[arg(long)]
    pub(crate) run_secs: Option<f64>,
    /// Warm-up before each run (with a fresh relay), seconds [default: 2; 0.5 with
    /// --quick].
    #[arg(long)]
    pub(crate) warmup_secs: Option<f64>,
    /// Writer tasks sharing the paced schedule (and the full-speed probe).
    #[arg(long, default_value_t = 8)]
    pub(crate) writers: usize,
    /// The PgNotifier window, milliseconds: at most one NOTIFY per window.
    #[arg(long, default_value_t = 10)]
    pub(crate) notify_window_ms: u64,
    /// Concurrent writers in the NOTIFY cost measurement.
    #[arg(long, default_value_t = 8)]
    pub(crate) notify_writers: usize,
    /// Rounds of the NOTIFY cost measurement (each runs every variant once).
    #[arg(long, default_value_t = 3)]
    pub(crate) notify_rounds: usize,
    /// Length of one NOTIFY cost round per variant, seconds [default: 5; 1.5 with
    /// --quick].
    #[arg(long)]
    pub(crate) notify_secs: Option<f64>,
    /// Published rows each outbox table holds before its first cell (retained history,
    /// over the same keys), after which it is `VACUUM ANALYZE`d as autovacuum would have
    /// in steady state.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) history: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub(crate) partitions: u32,
    /// What the broker is, for the report (e.g. "tansu 0.6.0").
    #[arg(long, default_value = "unknown")]
    pub(crate) broker: String,
    /// The relay's `pipeline_depth` [default: `RelayConfig`'s] (the depth-1 row keeps 1).
    #[arg(long)]
    pub(crate) pipeline_depth: Option<usize>,
    /// The broker's process id, to report the CPU time it uses (`cargo xtask bench`
    /// passes it for the tansu it starts).
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
    /// Keep the database (its name is printed).
    #[arg(long)]
    pub(crate) keep: bool,
    /// Print the plan of the claim's candidate query (`EXPLAIN ANALYZE`) in the middle of
    /// the first run of each cell at the target rate.
    #[arg(long)]
    pub(crate) explain: bool,
}

impl Args {
    /// The relay's configuration: `RelayConfig` defaults, with `--pipeline-depth`.
    pub(crate) fn relay_config(&self) -> RelayConfig {
        let mut config = RelayConfig::default();
        if let Some(depth) = self.pipeline_depth {
            config.pipeline_depth = depth;
        }
        config
    }

    pub(crate) fn run_len(&self) -> Duration {
        secs(self.run_secs.unwrap_or(if self.quick { 2.0 } else { 10.0 }))
    }

    pub(crate) fn warmup_len(&self) -> Duration {
        secs(
            self.warmup_secs
                .unwrap_or(if self.quick { 0.5 } else { 2.0 }),
        )
    }

    pub(crate) fn notify_len(&self) -> Duration {
        secs(
            self.notify_secs
                .unwrap_or(if self.quick { 1.5 } else { 5.0 }),
        )
    }

    fn check(&self) -> Result<()> {
        if !(self.rate > 0.0 && self.low_rate > 0.0 && self.high_rate.is_none_or(|r| r > 0.0)) {
            bail!("rates must be positive");
        }
        if self.keys == 0 || self.runs == 0 || self.writers == 0 || self.notify_writers == 0 {
            bail!("--keys, --runs, --writers and --notify-writers must be at least 1");
        }
        if self.notify_rounds == 0 || self.partitions == 0 {
            bail!("--notify-rounds and --partitions must be at least 1");
        }
        Ok(())
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    args.check()?;
    let admin = outbox_sea_orm::connect(&args.database_url).await?;
    let base_url = args
        .database_url
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .context("the database URL has no path")?;
    let name = format!("bench_latency_{}", std::process::id());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let outcome = bench(&args, &format!("{base_url}/{name}")).await;
    if args.keep {
        println!("kept database {name}");
    } else if let Err(e) = admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
    {
        eprintln!("warning: could not drop database {name}: {e}");
    }
    admin.close().await?;
    outcome
}

async fn bench(args: &Args, url: &str) -> Result<()> {
    let started = Instant::now();
    let setup = Setup::describe(args, url).await?;
    print!("{}", setup.markdown());

    let topic = format!("bench.latency.{}", std::process::id());
    let kafka = KafkaConfig::new(&args.bootstrap);
    ensure_topics(
        &kafka,
        &[TopicSpec::new(&topic).with_partitions(args.partitions)],
        Provisioning::CreateMissing,
    )
    .await
    .context("creating the benchmark topic")?;

    // The high rate: given, 1.5 × the target with --quick, or 80% of the maximum
    // sustainable rate (none when no rate was sustainable).
    let (probe, high) = match (args.high_rate, args.quick) {
        (Some(rate), _) => (None, Some(("high", rate))),
        (None, true) => (None, Some(("1.5 × target", (args.rate * 1.5).floor()))),
        (None, false) => {
            eprintln!("[bench_latency] probing the maximum sustainable rate");
            let probe = probe_max_rate(args, url, &kafka, &topic).await?;
            let high = (probe.max > 0.0).then(|| ("80% of max", (probe.max * 0.8).floor()));
            (Some(probe), high)
        }
    };

    let mut modes = Vec::new();
    for mode in Mode::ALL {
        let table = format!("bench_{}", mode.key());
        let history = (topic.as_str(), args.keys, args.history);
        modes.push(ModeSetup::new(mode, &table, url, &kafka, history).await?);
    }
    let mut rates = vec![("low", args.low_rate), ("target", args.rate)];
    rates.extend(high);
    // Per rate, the runs go round the modes (run 1 of every mode, then run 2, …), so
    // that noise on the machine hits the modes alike.
    let mut cells = Vec::new();
    for (label, rate) in rates {
        let active: Vec<&ModeSetup> = modes
            .iter()
            .filter(|m| !m.mode.diagnostic() || label == "target")
            .collect();
        let mut outcomes: Vec<Vec<RunOutcome>> = active.iter().map(|_| Vec::new()).collect();
        for run in 0..args.runs {
            for (setup, outcomes) in active.iter().zip(&mut outcomes) {
                eprintln!(
                    "[bench_latency] {} at {rate:.0}/s ({label}), run {}/{}",
                    setup.mode.name(),
                    run + 1,
                    args.runs
                );
                let explain = args.explain && label == "target" && run == 0;
                outcomes.push(run_once(args, setup, rate, &topic, explain).await?);
            }
        }
        for (setup, outcomes) in active.iter().zip(outcomes) {
            cells.push(Cell::new(setup.mode, label, rate, outcomes));
        }
    }
    for setup in modes {
        setup.close().await;
    }

    eprintln!("[bench_latency] NOTIFY cost");
    let notify = notify_cost(args, url, &topic).await?;
    eprintln!("[bench_latency] producer baseline");
    let mut baseline = Vec::new();
    for rate in [Some(args.rate), None] {
        for linger in [None, Some(0)] {
            baseline.push(producer_baseline(args, &topic, rate, linger, None).await?);
        }
    }
    let load = writer_load(args, url, &topic).await?;
    for linger in [None, Some(0)] {
        let under_load = Some(load.clone());
        baseline.push(producer_baseline(args, &topic, Some(args.rate), linger, under_load).await?);
    }

    let report = Report {
        setup,
        probe,
        high,
        cells,
        notify,
        baseline,
        took: started.elapsed(),
    };
    let markdown = report.markdown(args);
    print!("{markdown}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let body = format!("{}{markdown}", report.setup.markdown());
        let md = dir.join("latency.md");
        std::fs::write(&md, body).with_context(|| format!("could not write {}", md.display()))?;
        let json = dir.join("latency.json");
        std::fs::write(
            &json,
            serde_json::to_string_pretty(&report.section(args))? + "\n",
        )
        .with_context(|| format!("could not write {}", json.display()))?;
        println!(
            "\nsection written to {} and {}",
            md.display(),
            json.display()
        );
    }
    Ok(())
}

/// Writers into a table of their own that no relay reads, for the baseline under load.
async fn writer_load(args: &Args, url: &str, topic: &str) -> Result<Arc<Writer>> {
    let table = Identifier::parse("table", "bench_load")?;
    let store = SeaOrmStore::new(outbox_sea_orm::connect(url).await?, store_config(&table))?;
    store.create_tables().await?;
    Ok(Arc::new(Writer {
        store,
        commit: Commit::Store,
        topic: topic.to_owned(),
        keys: args.keys,
        tracker: Arc::default(),
    }))
}
