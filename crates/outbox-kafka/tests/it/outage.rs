//! Two failure scenarios of issue 8 ("delivery guarantees"), each on a private server
//! that the test stops or restarts itself (see [`crate::private_servers`]). The
//! relay runs in-process: `Relay` over `SeaOrmStore` (PostgreSQL) and `KafkaPublisher`.
//!
//! - Broker outage: the broker is stopped for 20 seconds in the middle of a run and
//!   then restarted. Everything gets through, and the retries follow the backoff
//!   schedule.
//! - Database restart: PostgreSQL restarts (`pg_ctl restart -m fast`) in the middle of
//!   a run. The relay reconnects, nothing is lost, and no lease is left stuck.

use crate::private_servers::{
    POSTGRES_BIN_VAR, POSTGRES_USER_VAR, PrivatePostgres, PrivateTansu, TANSU_VAR, program_var,
};
use crate::{assert_per_key_order, broker, create_topic, read_topic, unique_topic};
use async_trait::async_trait;
use chrono::Utc;
use outbox_domain::{BackoffPolicy, Jitter, MessageId, OutboxMessage, Payload};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_ports::{
    ClaimedMessage, IncomingMessage, MessageStore, PublishError, PublishOutcome, Publisher, header,
};
use outbox_runtime::{CancellationToken, Relay, RelayConfig};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use outbox_test_support::{fresh_postgres, scalar};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

/// One publish attempt of one message, as the relay made it.
#[derive(Debug, Clone)]
struct Attempt {
    id: MessageId,
    /// The message's attempt count after its claim (1 for the first attempt).
    attempt: u32,
    /// When the publish call of its batch started and returned.
    start: Instant,
    end: Instant,
    error: Option<PublishError>,
}

/// A [`Publisher`] that passes everything to the real one and records every attempt.
struct Recording<P> {
    inner: P,
    attempts: Mutex<Vec<Attempt>>,
    /// `(start, end)` of every publish call: the relay's busy periods.
    calls: Mutex<Vec<(Instant, Instant)>>,
}

impl<P> Recording<P> {
    fn new(inner: P) -> Self {
        Self {
            inner,
            attempts: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn calls(&self) -> Vec<(Instant, Instant)> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl<P: Publisher> Publisher for Recording<P> {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        self.inner.publish(batch).await
    }

    async fn publish_claimed(&self, batch: &[ClaimedMessage]) -> Vec<PublishOutcome> {
        let start = Instant::now();
        let outcomes = self.inner.publish_claimed(batch).await;
        let end = Instant::now();
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((start, end));
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        for (claimed, outcome) in batch.iter().zip(&outcomes) {
            attempts.push(Attempt {
                id: claimed.message.id,
                attempt: claimed.attempts,
                start,
                end,
                error: outcome.clone().err(),
            });
        }
        outcomes
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.inner.flush(timeout).await
    }
}

/// How long [`Holding`] may hold a batch: the test's restart must fit.
const HOLD_LIMIT: Duration = Duration::from_secs(4);

/// A [`Publisher`] that, once armed, holds the next batch after publishing it and
/// before returning its outcomes, until released: the batch is on the broker, and
/// claimed but not settled in the store.
struct Holding<P> {
    inner: P,
    armed: std::sync::atomic::AtomicBool,
    held: tokio::sync::Notify,
    released: tokio::sync::Notify,
    ids: Mutex<Vec<MessageId>>,
}

impl<P> Holding<P> {
    fn new(inner: P) -> Self {
        Self {
            inner,
            armed: false.into(),
            held: tokio::sync::Notify::new(),
            released: tokio::sync::Notify::new(),
            ids: Mutex::default(),
        }
    }

    /// Arms the hold and waits until a batch is held; returns its message ids.
    async fn hold_next(&self) -> Vec<MessageId> {
        self.armed.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), self.held.notified())
            .await
            .expect("the relay publishes a batch");
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn release(&self) {
        self.released.notify_one();
    }
}

#[async_trait]
impl<P: Publisher> Publisher for Holding<P> {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        self.inner.publish(batch).await
    }

    async fn publish_claimed(&self, batch: &[ClaimedMessage]) -> Vec<PublishOutcome> {
        let outcomes = self.inner.publish_claimed(batch).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            *self.ids.lock().unwrap_or_else(PoisonError::into_inner) =
                batch.iter().map(|c| c.message.id).collect();
            self.held.notify_one();
            // Bounded, so that a failing test cannot hang the relay.
            let _ = tokio::time::timeout(HOLD_LIMIT, self.released.notified()).await;
        }
        outcomes
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.inner.flush(timeout).await
    }
}

/// Message `n` of key `key`, numbered in `{"n": …}` for [`assert_per_key_order`].
fn message(topic: &str, key: usize, n: usize) -> OutboxMessage {
    OutboxMessage::new(
        "orders",
        "order.changed",
        topic,
        format!("order-{key}"),
        Payload::Json(serde_json::json!({ "n": n })),
        Utc::now(),
    )
}

/// Enqueues one message in its own transaction; panics on any failure.
async fn enqueue(db: &DatabaseConnection, store: &SeaOrmStore, m: OutboxMessage) -> MessageId {
    let id = m.id;
    let txn = db.begin().await.unwrap();
    store.enqueue_in(&txn, vec![m]).await.unwrap();
    txn.commit().await.unwrap();
    id
}

/// Waits until `store` has `total` messages published and none left to do; panics
/// after `timeout`, or at once if a message is dead, with what `describe` says.
async fn until_drained(
    store: &SeaOrmStore,
    total: u64,
    timeout: Duration,
    describe: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = store.stats().await;
        if let Ok(s) = &stats {
            assert_eq!(s.dead, 0, "no message may die: {s:?}\n{}", describe());
            if s.published == total && s.pending + s.retrying + s.in_flight == 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not drained within {timeout:?}: {stats:?} (expected {total} published)\n{}",
            describe()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The distinct message ids of `received`.
fn ids(received: &[IncomingMessage]) -> BTreeSet<String> {
    received
        .iter()
        .map(|m| m.headers[header::MESSAGE_ID].clone())
        .collect()
}

/// The `n` of every message of each key in `received`.
fn numbers_by_key(received: &[IncomingMessage]) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for m in received {
        let n = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["n"]
            .as_i64()
            .unwrap();
        out.entry(m.key.clone().unwrap()).or_default().push(n);
    }
    out
}

/// Counts failed attempts by the first words of their error, for the test's output.
fn error_summary(attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in attempts {
        if let Some(e) = &a.error {
            let words: String = e.message.chars().take(60).collect();
            *out.entry(format!("{:?}: {words}", e.kind)).or_default() += 1;
        }
    }
    out
}

/// The slack allowed beyond the schedule: the claim and settle round trips to
/// PostgreSQL and the scheduling delays of a loaded 2-core machine.
const SCHEDULE_SLACK: Duration = Duration::from_millis(1000);

/// Checks that every retry of a message came when the backoff `policy` says it should.
/// After a failed attempt `a` that ended at `end`, the relay schedules the next
/// attempt `policy.delay(a)` later, that is, within `[nominal × (1 - jitter),
/// nominal]` of `nominal = policy.nominal_delay(a)` (or later, if the broker asked for
/// it with retry-after). The next attempt may start no earlier than that. It must
/// start no later than:
/// - the nominal time;
/// - or the end of a batch the relay was busy with when the message became due
///   (one claim loop publishes one batch at a time);
/// - plus one idle poll and [`SCHEDULE_SLACK`].
///
/// Attempts of one message must also be numbered without gaps. Returns the number of
/// retries checked and the smallest margins left to the earliest and latest bounds;
/// panics listing every violation.
fn check_schedule(
    attempts: &[Attempt],
    calls: &[(Instant, Instant)],
    policy: &BackoffPolicy,
    jitter: f64,
    poll: Duration,
) -> (usize, Duration, Duration) {
    let mut by_message: HashMap<MessageId, Vec<&Attempt>> = HashMap::new();
    for a in attempts {
        by_message.entry(a.id).or_default().push(a);
    }
    let mut violations = Vec::new();
    let mut checked = 0;
    let (mut early_margin, mut late_margin) = (Duration::MAX, Duration::MAX);
    for (id, tries) in &by_message {
        for pair in tries.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let Some(error) = &prev.error else {
                violations.push(format!("{id}: attempt {} after a success", next.attempt));
                continue;
            };
            if next.attempt != prev.attempt + 1 {
                violations.push(format!(
                    "{id}: attempt {} followed attempt {}",
                    next.attempt, prev.attempt
                ));
            }
            let nominal = policy
                .nominal_delay(prev.attempt)
                .max(error.retry_after.unwrap_or_default());
            let gap = next.start.duration_since(prev.end);
            let earliest = nominal
                .mul_f64(1.0 - jitter)
                .saturating_sub(Duration::from_millis(2));
            let due = prev.end + nominal;
            // A batch claimed before the message was due holds the claim loop until
            // it ends; a claim takes well under the slack, so any call starting within
            // it may have been claimed before `due`.
            let busy_until = calls
                .iter()
                .filter(|(start, end)| *start <= due + SCHEDULE_SLACK && *end > due)
                .map(|(_, end)| *end)
                .max()
                .unwrap_or(due)
                .max(due);
            let latest = busy_until + poll + SCHEDULE_SLACK;
            if gap < earliest {
                violations.push(format!(
                    "{id}: attempt {} came {gap:?} after attempt {} failed, before the \
                     earliest {earliest:?} (nominal {nominal:?})",
                    next.attempt, prev.attempt
                ));
            }
            if next.start > latest {
                violations.push(format!(
                    "{id}: attempt {} came {gap:?} after attempt {} failed, {:?} later than \
                     the latest allowed (nominal {nominal:?})",
                    next.attempt,
                    prev.attempt,
                    next.start.duration_since(latest)
                ));
            }
            early_margin = early_margin.min(gap.saturating_sub(earliest));
            late_margin = late_margin.min(latest.saturating_duration_since(next.start));
            checked += 1;
        }
    }
    assert!(
        violations.is_empty(),
        "{} retries off the backoff schedule:\n{}",
        violations.len(),
        violations.join("\n")
    );
    (checked, early_margin, late_margin)
}

const KEYS: usize = 4;
const PARTITIONS: u32 = 3;
const OUTAGE: Duration = Duration::from_secs(20);
const JITTER: f64 = 0.5;

/// A writer enqueues messages on four keys before, during and after a 20 s stop of a
/// private tansu. The test checks that:
/// - the topic holds exactly every committed message (read before the stop, and
///   again after the restart), in per-key order within and across the two parts;
/// - nothing is dead or left pending;
/// - each retry came when the backoff schedule says (see [`check_schedule`]);
/// - the outage took some message through at least 5 attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_for_20_seconds_loses_nothing_and_retries_on_schedule() {
    let Some(tansu) = program_var(TANSU_VAR, "broker outage") else {
        return;
    };
    let db = fresh_postgres("kafka_outage").await;
    let store =
        SeaOrmStore::new(db.clone(), StoreConfig::default().with_max_attempts(100)).unwrap();
    store.create_tables().await.unwrap();
    let mut server = block_in_place(|| PrivateTansu::start(&tansu));
    let mut kafka = KafkaConfig::new(server.bootstrap());
    // A dead broker shows up as a transient failure after a second.
    kafka.delivery_timeout = Duration::from_secs(1);
    let topic = unique_topic("outage");
    create_topic(&kafka, &topic, PARTITIONS).await;

    let policy = BackoffPolicy::new(Duration::from_millis(200), 2.0, Duration::from_secs(4), 100)
        .unwrap()
        .with_jitter(Jitter::Proportional(JITTER))
        .unwrap();
    let mut config = RelayConfig::default();
    config.relay_id = "outage-relay".into();
    config.poll_interval = Duration::from_millis(100);
    config.publish_timeout = Duration::from_secs(4);
    config.lease = Duration::from_secs(10);
    config.backoff = policy.clone();
    let publisher = KafkaPublisher::new(kafka.clone()).unwrap();
    assert!(publisher.max_publish_time() < config.publish_timeout);
    let recording = Arc::new(Recording::new(publisher));
    let relay = Relay::new(Arc::new(store.clone()), recording.clone(), config.clone()).unwrap();
    let counters = relay.counters();
    let handle = relay.spawn(CancellationToken::new());
    let last_errors = || {
        let attempts = recording.attempts();
        let failed: Vec<_> = attempts.iter().filter(|a| a.error.is_some()).collect();
        format!(
            "{} attempts, {} failed; the last failures: {:#?}",
            attempts.len(),
            failed.len(),
            &failed[failed.len().saturating_sub(6)..]
        )
    };

    let mut next_n = [0usize; KEYS];
    let mut written = 0usize;
    let mut write = async |count: usize, every: Duration| {
        let mut out = Vec::new();
        for _ in 0..count {
            let key = written % KEYS;
            out.push(enqueue(&db, &store, message(&topic, key, next_n[key])).await);
            next_n[key] += 1;
            written += 1;
            tokio::time::sleep(every).await;
        }
        out
    };

    // Before: messages flow. The writer pauses and the relay catches up, so that the
    // topic can be read before the broker stops. tansu keeps messages in memory, so
    // a message acknowledged between that read and the stop would be lost with the
    // broker, through no fault of the relay.
    let before = write(24, Duration::from_millis(50)).await;
    until_drained(
        &store,
        before.len() as u64,
        Duration::from_secs(30),
        last_errors,
    )
    .await;
    let first_part = read_topic(&kafka, &topic, Duration::from_secs(30)).await;
    let before_ids: BTreeSet<String> = before.iter().map(ToString::to_string).collect();
    assert_eq!(
        ids(&first_part),
        before_ids,
        "the topic holds exactly what was published before the outage"
    );

    // The outage: the writer keeps going, and the relay keeps trying.
    block_in_place(|| server.stop());
    let stopped = Instant::now();
    let mut during = Vec::new();
    while stopped.elapsed() < OUTAGE {
        during.extend(write(1, Duration::from_millis(250)).await);
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats.published,
        before.len() as u64,
        "nothing is published while the broker is down: {stats:?}"
    );
    block_in_place(|| server.restart(&[(&topic, PARTITIONS)]));
    let restarted = Instant::now();

    // After: everything gets through.
    let after = write(20, Duration::from_millis(50)).await;
    let total = (before.len() + during.len() + after.len()) as u64;
    until_drained(&store, total, Duration::from_secs(90), last_errors).await;
    let recovered = restarted.elapsed();
    let second_part = read_topic(&kafka, &topic, Duration::from_secs(30)).await;
    assert!(handle.shutdown().await, "the relay drains");

    // Exactly every committed message, in per-key order within each part and across
    // the outage (every message of the second part was committed after the first's).
    let later_ids: BTreeSet<String> = during
        .iter()
        .chain(&after)
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        ids(&second_part),
        later_ids,
        "after the restart the topic holds exactly what was committed since the stop"
    );
    assert_per_key_order(&first_part);
    assert_per_key_order(&second_part);
    let (first_n, second_n) = (numbers_by_key(&first_part), numbers_by_key(&second_part));
    for (key, later) in &second_n {
        let last_before = first_n.get(key).and_then(|n| n.iter().max());
        let first_after = later.iter().min();
        assert!(
            last_before < first_after,
            "key {key}: {first_after:?} after the restart, but {last_before:?} before"
        );
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.published, stats.dead, stats.pending, stats.in_flight),
        (total, 0, 0, 0)
    );

    // The retries followed the schedule, and the outage made several of them.
    let attempts = recording.attempts();
    let (retries, early_margin, late_margin) = check_schedule(
        &attempts,
        &recording.calls(),
        &policy,
        JITTER,
        config.poll_interval,
    );
    let most = attempts.iter().map(|a| a.attempt).max().unwrap_or(0);
    assert!(
        most >= 5,
        "a 20 s outage must take a message through at least 5 attempts, took {most}"
    );
    println!(
        "broker outage: {total} messages, {retries} retries on schedule (closest: \
         {early_margin:?} after the earliest, {late_margin:?} before the latest), at most \
         {most} attempts of one message, all delivered {recovered:?} after the restart; \
         relay counters {counters:?}; failures {:#?}",
        error_summary(&attempts)
    );
}

/// What the writer of the database-restart scenario did.
#[derive(Debug, Default)]
struct WriterLog {
    /// Committed.
    committed: Vec<MessageId>,
    /// Rolled back, on purpose or because a statement before the commit failed.
    rolled_back: Vec<MessageId>,
    /// The commit itself failed: committed or not, to be found out afterwards.
    unknown: Vec<MessageId>,
    /// The errors the writer saw.
    failures: Vec<String>,
}

/// Writes one message per transaction, round-robin over [`KEYS`] keys, until `stop`.
/// Every 7th transaction rolls back on purpose. A failed transaction is not counted
/// as committed, and the next transaction of its key writes the same `n` again.
async fn writer(
    db: DatabaseConnection,
    store: SeaOrmStore,
    topic: String,
    log: Arc<Mutex<WriterLog>>,
    stop: CancellationToken,
) {
    let mut next_n = [0usize; KEYS];
    let mut i = 0usize;
    while !stop.is_cancelled() {
        let key = i % KEYS;
        let m = message(&topic, key, next_n[key]);
        let id = m.id;
        let on_purpose = i % 7 == 3;
        let outcome = async {
            let txn = db.begin().await.map_err(|e| (false, e.to_string()))?;
            store
                .enqueue_in(&txn, vec![m])
                .await
                .map_err(|e| (false, e.to_string()))?;
            if on_purpose {
                txn.rollback().await.map_err(|e| (false, e.to_string()))?;
                return Ok(false);
            }
            txn.commit().await.map_err(|e| (true, e.to_string()))?;
            Ok(true)
        }
        .await;
        {
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            match outcome {
                Ok(true) => {
                    log.committed.push(id);
                    next_n[key] += 1;
                }
                Ok(false) => log.rolled_back.push(id),
                Err((false, e)) => {
                    log.rolled_back.push(id);
                    log.failures.push(e);
                }
                Err((true, e)) => {
                    log.unknown.push(id);
                    log.failures.push(e);
                }
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A writer enqueues messages (rolling some back on purpose) while a private
/// PostgreSQL cluster restarts under the relay. At the moment of the restart, one
/// batch is published but its settlement waits on a row lock held by an application
/// transaction. The test checks that:
/// - that transaction cannot commit, and the writer commits again after the restart;
/// - every committed message is published and delivered (at least once), and no
///   rolled-back one is;
/// - each key keeps its order;
/// - no row is left in flight or with a lease once the relay has drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_nothing_and_leaves_no_lease_behind() {
    let Some(bin) = program_var(POSTGRES_BIN_VAR, "database restart") else {
        return;
    };
    let user = std::env::var(POSTGRES_USER_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty());
    let pg = block_in_place(|| PrivatePostgres::start(&bin, user));
    let db = outbox_sea_orm::connect(&pg.url()).await.unwrap();
    let store =
        SeaOrmStore::new(db.clone(), StoreConfig::default().with_max_attempts(100)).unwrap();
    store.create_tables().await.unwrap();
    let mut kafka = broker();
    kafka.delivery_timeout = Duration::from_millis(1500);
    let topic = unique_topic("db-restart");
    create_topic(&kafka, &topic, PARTITIONS).await;

    let mut config = RelayConfig::default();
    config.relay_id = "db-restart-relay".into();
    config.batch_size = 20;
    config.poll_interval = Duration::from_millis(50);
    // Room for a batch held across the restart (below) within the publish timeout.
    // The lease is short enough that a claim the restart orphans comes back through
    // the lease sweeper well within the test's time.
    config.publish_timeout = Duration::from_secs(8);
    config.lease = Duration::from_secs(10);
    config.sweep_interval = Duration::from_millis(500);
    config.backoff =
        BackoffPolicy::new(Duration::from_millis(100), 2.0, Duration::from_secs(1), 100).unwrap();
    let publisher = KafkaPublisher::new(kafka.clone()).unwrap();
    assert!(publisher.max_publish_time() + HOLD_LIMIT < config.publish_timeout);
    let holding = Arc::new(Holding::new(publisher));
    let relay = Relay::new(Arc::new(store.clone()), holding.clone(), config).unwrap();
    let counters = relay.counters();
    let handle = relay.spawn(CancellationToken::new());

    let log = Arc::new(Mutex::new(WriterLog::default()));
    let stop_writing = CancellationToken::new();
    let writing = tokio::spawn(writer(
        db.clone(),
        store.clone(),
        topic.clone(),
        log.clone(),
        stop_writing.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The restart meets a batch the relay has published but not yet settled, and an
    // application transaction that has enqueued a message and locks the rows of that
    // batch, so that the relay's settlement is waiting on the database when it goes
    // down.
    let held = holding.hold_next().await;
    let open = db.begin().await.unwrap();
    let doomed = message(&topic, KEYS, 0);
    let doomed_id = doomed.id.to_string();
    store.enqueue_in(&open, vec![doomed]).await.unwrap();
    let quoted: Vec<String> = held.iter().map(|id| format!("'{id}'")).collect();
    open.execute_unprepared(&format!(
        "SELECT seq FROM outbox_messages WHERE id IN ({}) FOR UPDATE",
        quoted.join(", ")
    ))
    .await
    .unwrap();
    holding.release();
    let waiting = Instant::now();
    while scalar(
        &db,
        // A row lock: the settlement waits for our transaction.
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND wait_event IN ('transactionid', 'tuple')",
    )
    .await
        == 0
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the relay's settlement never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old_pid = pg.pid();
    let restarting = Instant::now();
    block_in_place(|| pg.restart());
    let restart_took = restarting.elapsed();
    assert_ne!(pg.pid(), old_pid, "the postmaster is a new one");
    assert!(
        open.commit().await.is_err(),
        "a transaction open across the restart cannot commit"
    );
    let committed_before_restart = log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .committed
        .len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_writing.cancel();
    writing.await.unwrap();

    // Commits whose outcome the restart hid: the table tells.
    let mut log = std::mem::take(&mut *log.lock().unwrap());
    for id in std::mem::take(&mut log.unknown) {
        let sql = format!("SELECT COUNT(*) FROM outbox_messages WHERE id = '{id}'");
        if scalar(&db, &sql).await == 1 {
            log.committed.push(id);
        } else {
            log.rolled_back.push(id);
        }
    }
    let committed: BTreeSet<String> = log.committed.iter().map(ToString::to_string).collect();
    let mut rolled_back: BTreeSet<String> =
        log.rolled_back.iter().map(ToString::to_string).collect();
    rolled_back.insert(doomed_id);
    assert!(
        log.committed.len() > committed_before_restart,
        "the writer commits again after the restart"
    );
    let held: BTreeSet<String> = held.iter().map(ToString::to_string).collect();
    assert!(held.is_subset(&committed));

    until_drained(
        &store,
        committed.len() as u64,
        Duration::from_secs(60),
        String::new,
    )
    .await;
    assert!(handle.shutdown().await, "the relay drains");

    // No lease is left behind.
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM outbox_messages WHERE status = 'in_flight' \
             OR lease_owner IS NOT NULL OR lease_token IS NOT NULL \
             OR lease_expires_at IS NOT NULL"
        )
        .await,
        0,
        "a row is still leased after the relay drained"
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM outbox_messages").await,
        committed.len() as i64,
        "the table holds exactly the committed messages"
    );

    // Every committed message was delivered (at least once), nothing else was, and
    // each key kept its order.
    let received = read_topic(&kafka, &topic, Duration::from_secs(30)).await;
    let delivered = ids(&received);
    let missing: Vec<_> = committed.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "committed but not delivered: {missing:?}"
    );
    let leaked: Vec<_> = delivered.intersection(&rolled_back).collect();
    assert!(leaked.is_empty(), "rolled back but delivered: {leaked:?}");
    assert_eq!(delivered, committed, "nothing but committed messages");
    assert_eq!(assert_per_key_order(&received), committed.len());
    println!(
        "database restart: pg_ctl restart took {restart_took:?} with a batch of {} in \
         flight; {} committed, {} rolled back, {} delivered ({} duplicates); writer \
         failures {}: {:?}; relay counters {counters:?}",
        held.len(),
        committed.len(),
        rolled_back.len(),
        received.len(),
        received.len() - delivered.len(),
        log.failures.len(),
        log.failures.iter().take(3).collect::<Vec<_>>()
    );
}
