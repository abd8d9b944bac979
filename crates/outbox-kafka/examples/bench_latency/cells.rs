//! The latency cells: the modes, one run of a relay under a paced writer, and a
//! cell's statistics over its runs.

use crate::Args;
use crate::cpu::{CpuMeter, CpuUse};
use crate::instrument::{AckClock, TimedStore, Tracker, lock};
use crate::stats::{Dist, median};
use crate::writer::{Commit, Stream, Writer};
use crate::{TARGET_P50, TARGET_P99};
use anyhow::{Result, bail};
use outbox_domain::Identifier;
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_ports::Publisher;
use outbox_runtime::{CancellationToken, Relay, RelayConfig, RelayHandle};
use outbox_sea_orm::{PgNotifier, PgWakeListener, SeaOrmStore, StoreConfig};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a cell waits for the last messages to be acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    InProcess,
    CrossProcess,
    PollOnly,
    /// `InProcess` with a claim loop that claims, publishes and settles in turn
    /// (`pipeline_depth` 1): a diagnostic row at the target rate, what the pipeline buys.
    Unpipelined,
    /// `InProcess` with librdkafka's default `linger.ms` of 5 ms instead of the 0
    /// `KafkaPublisher` sets: the other diagnostic row, what the producer's batching
    /// delay costs or saves.
    Linger5,
}

impl Mode {
    pub(crate) const ALL: [Self; 5] = [
        Self::InProcess,
        Self::CrossProcess,
        Self::PollOnly,
        Self::Unpipelined,
        Self::Linger5,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::InProcess => "in-process wake",
            Self::CrossProcess => "cross-process wake (NOTIFY)",
            Self::PollOnly => "poll only (control)",
            Self::Unpipelined => "in-process wake, pipeline depth 1",
            Self::Linger5 => "in-process wake, linger.ms=5",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::InProcess => "in_process",
            Self::CrossProcess => "cross_process",
            Self::PollOnly => "poll_only",
            Self::Unpipelined => "in_process_depth1",
            Self::Linger5 => "in_process_linger5",
        }
    }

    /// Whether the issue-8 targets apply to this mode (at the target rate).
    pub(crate) fn has_target(self) -> bool {
        matches!(self, Self::InProcess | Self::CrossProcess)
    }

    /// Whether this is a diagnostic row, run at the target rate only.
    pub(crate) fn diagnostic(self) -> bool {
        matches!(self, Self::Unpipelined | Self::Linger5)
    }

    /// Whether the writers wake the relay in-process.
    pub(crate) fn in_process(self) -> bool {
        matches!(self, Self::InProcess | Self::Unpipelined | Self::Linger5)
    }

    /// The relay's configuration: `base`, but for the unpipelined row.
    pub(crate) fn relay_config(self, mut config: RelayConfig) -> RelayConfig {
        if self == Self::Unpipelined {
            config.pipeline_depth = 1;
        }
        config
    }

    /// The publisher's configuration: the defaults, but for the `linger.ms=5` row.
    pub(crate) fn kafka_config(self, kafka: &KafkaConfig) -> KafkaConfig {
        match self {
            Self::Linger5 => kafka.clone().with_property("linger.ms", "5"),
            _ => kafka.clone(),
        }
    }
}

/// A mode's table, pools and publisher, shared by its cells.
pub(crate) struct ModeSetup {
    pub(crate) mode: Mode,
    pub(crate) table: Identifier,
    /// The writer's pool.
    pub(crate) writer_db: DatabaseConnection,
    /// The relay's pool: the writer's in-process, its own otherwise.
    pub(crate) relay_db: DatabaseConnection,
    pub(crate) publisher: Arc<KafkaPublisher>,
}

impl ModeSetup {
    /// `mode` on its own outbox table `table`, with `history` published rows of
    /// `topic` over `keys` keys, vacuumed and analyzed.
    pub(crate) async fn new(
        mode: Mode,
        table: &str,
        url: &str,
        kafka: &KafkaConfig,
        (topic, keys, history): (&str, u64, u64),
    ) -> Result<Self> {
        let table = Identifier::parse("table", table)?;
        let writer_db = outbox_sea_orm::connect(url).await?;
        // In-process the relay shares the writers' pool.
        let relay_db = if mode.in_process() {
            writer_db.clone()
        } else {
            outbox_sea_orm::connect(url).await?
        };
        SeaOrmStore::new(writer_db.clone(), store_config(&table))?
            .create_tables()
            .await?;
        load_history(&writer_db, &table, topic, keys, history).await?;
        Ok(Self {
            mode,
            table,
            writer_db,
            relay_db,
            publisher: Arc::new(KafkaPublisher::new(mode.kafka_config(kafka))?),
        })
    }

    pub(crate) async fn close(self) {
        let _ = self.publisher.flush(Duration::from_secs(5)).await;
        let _ = self.writer_db.close().await;
        if !self.mode.in_process() {
            let _ = self.relay_db.close().await;
        }
    }
}

/// Writes `n` published rows with one server-side statement (as bench_claim does), then
/// `VACUUM ANALYZE`s the table: without statistics the planner takes the claim's
/// per-key probes for scans of a near-empty table (docs/benchmarks.md).
pub(crate) async fn load_history(
    db: &DatabaseConnection,
    table: &Identifier,
    topic: &str,
    keys: u64,
    n: u64,
) -> Result<()> {
    if n > 0 {
        db.execute_unprepared(&format!(
            "INSERT INTO {table} (id, service, event_type, topic, partition_key, content_type, \
             payload_json, headers, schema_version, occurred_at, created_at, status, attempts, \
             max_attempts, next_attempt_at, published_at) \
             SELECT gen_random_uuid(), 'bench', 'order.created', '{topic}', 'key-' || (g % {keys}), \
             'application/json', jsonb_build_object('n', g, 'amount', g % 1000), '{{}}'::jsonb, 1, \
             t, t, 'published', 1, 10, t, t + interval '5 milliseconds' \
             FROM (SELECT g, now() - interval '1 day' + g * interval '1 millisecond' AS t \
             FROM generate_series(1, {n}) AS g) s"
        ))
        .await?;
    }
    db.execute_unprepared(&format!("VACUUM ANALYZE {table}"))
        .await?;
    Ok(())
}

pub(crate) fn store_config(table: &Identifier) -> StoreConfig {
    StoreConfig::default().with_table(table.clone())
}

/// A running relay with its timed store and publisher, and the wake plumbing of the
/// mode.
/// A relay ready to spawn, with its writer and the mode's wake plumbing.
pub(crate) struct RelayUnderTest {
    pub(crate) relay: Relay,
    pub(crate) writer: Arc<Writer>,
    pub(crate) notifier: Option<Arc<PgNotifier>>,
    pub(crate) listener: Option<PgWakeListener>,
}

impl RelayUnderTest {
    pub(crate) fn spawn(self) -> RunningRelay {
        RunningRelay {
            handle: self.relay.spawn(CancellationToken::new()),
            notifier: self.notifier,
            _listener: self.listener,
        }
    }
}

pub(crate) struct RunningRelay {
    pub(crate) handle: RelayHandle,
    pub(crate) notifier: Option<Arc<PgNotifier>>,
    pub(crate) _listener: Option<PgWakeListener>,
}

pub(crate) async fn prepare_relay(
    args: &Args,
    setup: &ModeSetup,
    tracker: &Arc<Tracker>,
    topic: &str,
    notify_window: Duration,
) -> Result<RelayUnderTest> {
    let config = store_config(&setup.table);
    let store = TimedStore {
        inner: SeaOrmStore::new(setup.relay_db.clone(), config.clone())?,
        tracker: tracker.clone(),
    };
    let publisher = AckClock {
        inner: setup.publisher.clone(),
        tracker: tracker.clone(),
    };
    let relay = Relay::new(
        Arc::new(store),
        Arc::new(publisher),
        setup.mode.relay_config(args.relay_config()),
    )?;
    let waker = relay.waker();
    let mut writer_store = SeaOrmStore::new(setup.writer_db.clone(), config)?;
    let (mut notifier, mut listener) = (None, None);
    match setup.mode {
        mode if mode.in_process() => {
            writer_store = writer_store.with_waker(Arc::new(waker));
        }
        Mode::CrossProcess => {
            let n = Arc::new(PgNotifier::spawn(
                setup.writer_db.clone(),
                &setup.table,
                notify_window,
            ));
            writer_store = writer_store.with_waker(n.clone());
            notifier = Some(n);
            listener =
                Some(PgWakeListener::spawn(&setup.relay_db, &setup.table, Arc::new(waker)).await?);
        }
        _ => {}
    }
    let writer = Arc::new(Writer {
        store: writer_store,
        commit: Commit::Store,
        topic: topic.to_owned(),
        keys: args.keys,
        tracker: tracker.clone(),
    });
    Ok(RelayUnderTest {
        relay,
        writer,
        notifier,
        listener,
    })
}

/// Waits until every committed message of `tracker` has been acknowledged.
pub(crate) async fn drain(tracker: &Tracker) -> Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while tracker.acked() < tracker.committed() {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} messages acknowledged after {DRAIN_TIMEOUT:?}",
                tracker.acked(),
                tracker.committed()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// One measured run of a cell.
#[derive(Debug, Clone)]
pub(crate) struct RunStats {
    pub(crate) achieved_rate: f64,
    /// Commit to ack.
    pub(crate) latency: Dist,
    /// Commit to the start of the claim that took the message.
    pub(crate) wait: Dist,
    /// That claim's own duration.
    pub(crate) claim: Dist,
    /// End of that claim to the ack.
    pub(crate) publish: Dist,
    /// CPU use over the run, warm-up included.
    pub(crate) cpu: CpuUse,
}

impl RunStats {
    pub(crate) fn json(&self) -> Value {
        json!({
            "achieved_rate": self.achieved_rate,
            "latency": self.latency.json(),
            "split": {
                "wait_for_claim": self.wait.json(),
                "claim": self.claim.json(),
                "claim_end_to_ack": self.publish.json(),
            },
            "cpu": self.cpu.json(),
        })
    }
}

/// One (rate, mode) cell.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    pub(crate) mode: Mode,
    pub(crate) rate_label: &'static str,
    pub(crate) target_rate: f64,
    pub(crate) runs: Vec<RunStats>,
    /// Median over the runs.
    pub(crate) summary: RunStats,
    pub(crate) claims: Dist,
    pub(crate) empty_claims: u64,
    pub(crate) batches: usize,
    pub(crate) mean_batch: f64,
    pub(crate) publish_calls: Dist,
    pub(crate) settles: Dist,
    pub(crate) notifies: Option<u64>,
    pub(crate) retried: u64,
    pub(crate) dead: u64,
    pub(crate) errors: u64,
}

impl Cell {
    pub(crate) fn meets(&self) -> Option<(bool, bool)> {
        (self.mode.has_target() && self.rate_label == "target").then(|| {
            (
                self.summary.latency.p50 <= TARGET_P50,
                self.summary.latency.p99 <= TARGET_P99,
            )
        })
    }
}

/// One run of a cell: a fresh relay, a paced stream of the warm-up then one run, the
/// last messages drained, the relay shut down.
pub(crate) struct RunOutcome {
    pub(crate) stats: RunStats,
    pub(crate) claims: Vec<Duration>,
    pub(crate) empty_claims: u64,
    pub(crate) publishes: Vec<(usize, Duration)>,
    pub(crate) settles: Vec<Duration>,
    pub(crate) notifies: Option<u64>,
    pub(crate) retried: u64,
    pub(crate) dead: u64,
    pub(crate) errors: u64,
}

pub(crate) async fn run_once(
    args: &Args,
    setup: &ModeSetup,
    rate: f64,
    topic: &str,
    explain: bool,
) -> Result<RunOutcome> {
    let tracker = Arc::new(Tracker::default());
    let prepared = prepare_relay(
        args,
        setup,
        &tracker,
        topic,
        Duration::from_millis(args.notify_window_ms),
    )
    .await?;
    let writer = prepared.writer.clone();
    let stream = Stream {
        rate: Some(rate),
        segments: vec![args.warmup_len(), args.run_len()],
        tasks: args.writers,
    };
    let explain = explain.then(|| {
        let store = SeaOrmStore::new(setup.relay_db.clone(), store_config(&setup.table));
        let at = args.warmup_len() + args.run_len() / 2;
        let name = setup.mode.name();
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let plan = match store {
                Ok(store) => store.explain_claim(100, true).await,
                Err(e) => Err(e),
            };
            match plan {
                Ok(plan) => eprintln!("[bench_latency] claim plan, {name}:\n{plan}"),
                Err(e) => eprintln!("[bench_latency] explain failed: {e}"),
            }
        })
    });
    // The relay starts with the first commit: a relay that finds nothing at start waits
    // a whole poll_interval before it looks again, which would make every poll-only
    // run begin with a one-second backlog that no production relay under steady load
    // has.
    let spawn = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while tracker.committed() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        prepared.spawn()
    };
    let cpu = CpuMeter::new(args.broker_pid).start();
    let (start, relay) = tokio::join!(stream.run(writer), spawn);
    let cpu = cpu.finish();
    let start = start?;
    if let Some(explain) = explain {
        explain.await?;
    }
    drain(&tracker).await?;
    let counters = relay.handle.counters();
    let notifies = relay.notifier.as_ref().map(|n| n.sent());
    if !relay.handle.shutdown().await {
        bail!("the relay did not drain on shutdown");
    }

    let commits = std::mem::take(&mut *lock(&tracker.commits));
    let claimed = std::mem::take(&mut *lock(&tracker.claimed));
    let acks = std::mem::take(&mut *lock(&tracker.acks));
    let (from, to) = stream.bounds(1);
    let mut latency = Vec::new();
    let (mut wait, mut claim, mut publish) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_window = 0usize;
    for (id, &(committed, segment)) in &commits {
        let offset = committed.saturating_duration_since(start);
        if offset >= from && offset < to {
            in_window += 1;
        }
        if segment != 1 {
            continue;
        }
        let Some(&acked) = acks.get(id) else { continue };
        latency.push(acked.saturating_duration_since(committed));
        if let Some(&(claim_start, claim_end)) = claimed.get(id) {
            wait.push(claim_start.saturating_duration_since(committed));
            claim.push(claim_end - claim_start);
            publish.push(acked.saturating_duration_since(claim_end));
        }
    }
    let take = |m: &Mutex<Vec<Duration>>| std::mem::take(&mut *lock(m));
    Ok(RunOutcome {
        stats: RunStats {
            achieved_rate: in_window as f64 / (to - from).as_secs_f64(),
            latency: Dist::of(latency),
            wait: Dist::of(wait),
            claim: Dist::of(claim),
            publish: Dist::of(publish),
            cpu,
        },
        claims: take(&tracker.claims),
        empty_claims: tracker.empty_claims.load(Ordering::Relaxed),
        publishes: std::mem::take(&mut *lock(&tracker.publishes)),
        settles: take(&tracker.settles),
        notifies,
        retried: counters.retried.load(Ordering::Relaxed),
        dead: counters.dead.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
    })
}

impl Cell {
    /// The cell of `mode` at `rate` from its runs; the relay's step timings are pooled
    /// over the runs (warm-ups included).
    pub(crate) fn new(
        mode: Mode,
        rate_label: &'static str,
        rate: f64,
        outcomes: Vec<RunOutcome>,
    ) -> Self {
        let runs: Vec<RunStats> = outcomes.iter().map(|o| o.stats.clone()).collect();
        let summary = summarise(&runs);
        let sum = |f: fn(&RunOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
        let publishes: Vec<(usize, Duration)> = outcomes
            .iter()
            .flat_map(|o| o.publishes.iter().copied())
            .collect();
        let batches = publishes.len();
        let messages: usize = publishes.iter().map(|(n, _)| n).sum();
        Self {
            mode,
            rate_label,
            target_rate: rate,
            summary,
            claims: Dist::of(
                outcomes
                    .iter()
                    .flat_map(|o| o.claims.iter().copied())
                    .collect(),
            ),
            empty_claims: sum(|o| o.empty_claims),
            batches,
            mean_batch: messages as f64 / batches.max(1) as f64,
            publish_calls: Dist::of(publishes.iter().map(|(_, d)| *d).collect()),
            settles: Dist::of(
                outcomes
                    .iter()
                    .flat_map(|o| o.settles.iter().copied())
                    .collect(),
            ),
            notifies: outcomes.iter().map(|o| o.notifies).sum::<Option<u64>>(),
            retried: sum(|o| o.retried),
            dead: sum(|o| o.dead),
            errors: sum(|o| o.errors),
            runs,
        }
    }
}

/// The median over the runs of every statistic.
pub(crate) fn summarise(runs: &[RunStats]) -> RunStats {
    let dist = |f: fn(&RunStats) -> Dist| Dist {
        count: runs.iter().map(|r| f(r).count).sum(),
        p50: median(runs.iter().map(|r| f(r).p50).collect()),
        p99: median(runs.iter().map(|r| f(r).p99).collect()),
        p999: median(runs.iter().map(|r| f(r).p999).collect()),
        max: median(runs.iter().map(|r| f(r).max).collect()),
    };
    RunStats {
        achieved_rate: median(runs.iter().map(|r| r.achieved_rate).collect()),
        latency: dist(|r| r.latency),
        wait: dist(|r| r.wait),
        claim: dist(|r| r.claim),
        publish: dist(|r| r.publish),
        cpu: CpuUse::median(&runs.iter().map(|r| r.cpu).collect::<Vec<_>>()),
    }
}
