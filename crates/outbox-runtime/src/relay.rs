use crate::{ConfigError, RelayConfig};
use chrono::{DateTime, Utc};
use outbox_domain::ErrorText;
use outbox_ports::{
    ClaimRequest, ClaimedMessage, Clock, Disposition, MessageStore, PublishError, Publisher,
    Settlement, StoreError, SystemClock,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, error, info, info_span, warn};

/// Why one relay step failed. The relay loop logs it and tries again after a pause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The store failed; see [`StoreError::is_retryable`].
    #[error("outbox store: {0}")]
    Store(#[from] StoreError),
}

/// What one [`Relay::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport {
    /// Messages claimed.
    pub claimed: usize,
    /// Messages the broker acknowledged.
    pub published: usize,
    /// Messages scheduled for another attempt.
    pub retried: usize,
    /// Messages that became dead.
    pub dead: usize,
    /// Settlements refused because the lease had been lost meanwhile.
    pub lease_lost: usize,
}

/// Running totals of a relay, shared by its workers. Cheap to read at any time.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Batches that claimed at least one message.
    pub batches: AtomicU64,
    /// Messages claimed.
    pub claimed: AtomicU64,
    /// Messages published.
    pub published: AtomicU64,
    /// Messages scheduled for retry.
    pub retried: AtomicU64,
    /// Messages made dead.
    pub dead: AtomicU64,
    /// Settlements refused for a lost lease.
    pub lease_lost: AtomicU64,
    /// Expired leases returned to the pool by the sweeper.
    pub leases_released: AtomicU64,
    /// Finished messages deleted by the retention policy.
    pub purged: AtomicU64,
    /// Failed relay steps (store outages and the like).
    pub errors: AtomicU64,
}

impl RelayCounters {
    fn add(&self, r: &BatchReport) {
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
        if r.claimed > 0 {
            self.batches.fetch_add(1, Ordering::Relaxed);
        }
        add(&self.claimed, r.claimed);
        add(&self.published, r.published);
        add(&self.retried, r.retried);
        add(&self.dead, r.dead);
        add(&self.lease_lost, r.lease_lost);
    }
}

/// Wakes an idle relay at once, for example right after an enqueue commits, instead of
/// letting it wait for the next poll. Cheap to clone; waking a busy relay is harmless.
#[derive(Debug, Clone, Default)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    /// Wakes one idle worker (or the next one to go idle).
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

/// Give it to a store (`SeaOrmStore::with_waker`) and every commit the store makes or
/// is told of wakes the relay.
impl outbox_ports::Wake for RelayWaker {
    fn wake(&self) {
        self.notify();
    }
}

/// Delivers committed outbox messages to a broker: claim a batch, publish it outside
/// any transaction, settle every message with its own outcome.
///
/// Per-key order holds because the store's claim hands out at most one message per
/// key at a time (see [`MessageStore`]); the relay only has to settle a message before
/// the next of its key can be claimed, which it does.
pub struct Relay {
    store: Arc<dyn MessageStore>,
    publisher: Arc<dyn Publisher>,
    clock: Arc<dyn Clock>,
    config: RelayConfig,
    waker: RelayWaker,
    counters: Arc<RelayCounters>,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay over `store` and `publisher`, on the system clock.
    pub fn new(
        store: Arc<dyn MessageStore>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            store,
            publisher,
            clock: Arc::new(SystemClock),
            config,
            waker: RelayWaker::default(),
            counters: Arc::default(),
            rng: Mutex::new(StdRng::from_os_rng()),
        })
    }

    /// Uses `clock` for every timestamp (claims, backoff, leases).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Uses a seeded random source for backoff jitter (reproducible tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Mutex::new(StdRng::seed_from_u64(seed));
        self
    }

    /// A handle that wakes this relay's idle workers.
    pub fn waker(&self) -> RelayWaker {
        self.waker.clone()
    }

    /// The relay's running totals.
    pub fn counters(&self) -> Arc<RelayCounters> {
        Arc::clone(&self.counters)
    }

    /// The configuration in force.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Claims one batch, publishes it and settles every message. Returns what happened;
    /// an empty report means there was nothing due.
    pub async fn run_once(&self) -> Result<BatchReport, RelayError> {
        let owner = &self.config.relay_id;
        let claimed = self.claim(owner).await?;
        if claimed.is_empty() {
            return Ok(BatchReport::default());
        }
        Ok(self.deliver(owner, claimed).await)
    }

    /// Claims up to `batch_size` messages for `owner`.
    async fn claim(&self, owner: &str) -> Result<Vec<ClaimedMessage>, RelayError> {
        let request = ClaimRequest {
            owner: owner.to_owned(),
            limit: self.config.batch_size,
            lease_for: self.config.lease,
            now: self.clock.now(),
        };
        let claimed = self.store.claim(&request).await?;
        if !claimed.is_empty() {
            // Crash-point kit: the batch is leased and nothing is published yet.
            #[cfg(feature = "failpoints")]
            fail::fail_point!("relay.after_claim");
            metrics::histogram!(relay_metrics::CLAIM_BATCH_SIZE).record(claimed.len() as f64);
        }
        Ok(claimed)
    }

    /// Publishes and settles a claimed batch, and counts it.
    async fn deliver(&self, owner: &str, claimed: Vec<ClaimedMessage>) -> BatchReport {
        let span = info_span!("relay.batch", relay = owner, claimed = claimed.len());
        let report = self.publish_and_settle(claimed).instrument(span).await;
        self.counters.add(&report);
        report
    }

    async fn publish_and_settle(&self, claimed: Vec<ClaimedMessage>) -> BatchReport {
        let started = std::time::Instant::now();
        let outcomes = match tokio::time::timeout(
            self.config.publish_timeout,
            self.publisher.publish_claimed(&claimed),
        )
        .await
        {
            Ok(outcomes) => outcomes,
            Err(_) => {
                let timeout = PublishError::transient(format!(
                    "publish timed out after {:?}",
                    self.config.publish_timeout
                ));
                vec![Err(timeout); claimed.len()]
            }
        };
        let now = self.clock.now();
        let mut report = BatchReport {
            claimed: claimed.len(),
            ..BatchReport::default()
        };
        let mut outcomes = outcomes.into_iter();
        let settlements: Vec<Settlement> = claimed
            .iter()
            .map(|c| {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(PublishError::transient(
                        "publisher returned no outcome for this message",
                    ))
                });
                let disposition = self.disposition(c, outcome, now);
                message_span(c, &disposition).in_scope(|| {
                    debug!("message settled");
                });
                relay_metrics::record(c, &disposition, started.elapsed(), now);
                match disposition {
                    Disposition::Published => report.published += 1,
                    Disposition::Retry { .. } => report.retried += 1,
                    Disposition::Dead { .. } => report.dead += 1,
                }
                Settlement {
                    id: c.message.id,
                    token: c.lease.token,
                    disposition,
                }
            })
            .collect();
        if report.retried + report.dead > 0 {
            warn!(
                retried = report.retried,
                dead = report.dead,
                "some messages were not published"
            );
        }
        // Crash-point kit: the broker has acknowledged, the store does not know yet. A
        // crash here publishes the batch again (docs/guarantees.md: the duplicate window).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("relay.after_publish");
        match self.settle(settlements, now).await {
            Ok(lost) => report.lease_lost = lost,
            Err(e) => {
                // The outcomes are lost; the leases will expire and the messages will be
                // published again (at least once; the consumer's inbox absorbs it).
                warn!(error = %e, "could not record outcomes; leases will expire and messages be redelivered");
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        debug!(?report, "batch settled");
        report
    }

    fn disposition(
        &self,
        c: &ClaimedMessage,
        outcome: Result<(), PublishError>,
        now: DateTime<Utc>,
    ) -> Disposition {
        let error = match outcome {
            Ok(()) => return Disposition::Published,
            Err(e) => e,
        };
        let text = |s: String| ErrorText::with_max_len(s, self.config.max_error_len);
        if !error.is_transient() {
            return Disposition::Dead {
                error: text(error.message),
            };
        }
        let attempts_left = c.attempts < c.max_attempts;
        let retry_at = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            self.config.backoff.retry_at(c.attempts, now, &mut *rng)
        };
        match retry_at {
            Some(at) if attempts_left => {
                let floor = error
                    .retry_after
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .map_or(at, |d| now + d);
                Disposition::Retry {
                    error: text(error.message),
                    at: at.max(floor),
                }
            }
            _ => Disposition::Dead {
                error: text(format!(
                    "attempts exhausted ({}): {}",
                    c.attempts, error.message
                )),
            },
        }
    }

    /// Records outcomes, retrying store outages until the leases would expire.
    async fn settle(
        &self,
        settlements: Vec<Settlement>,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let deadline = tokio::time::Instant::now()
            + self
                .config
                .lease
                .saturating_sub(self.config.publish_timeout);
        let mut pause = Duration::from_millis(50);
        loop {
            match self.store.settle(settlements.clone(), now).await {
                Ok(report) => {
                    if !report.lease_lost.is_empty() {
                        warn!(
                            lost = report.lease_lost.len(),
                            "leases expired before settlement; newer claims own them"
                        );
                    }
                    return Ok(report.lease_lost.len());
                }
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + pause < deadline => {
                    warn!(error = %e, "settle failed, retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Returns expired leases to the pool once. Returns how many were released.
    pub async fn sweep_once(&self) -> Result<u64, RelayError> {
        let released = self
            .store
            .release_expired(self.clock.now(), self.config.batch_size.max(100))
            .await?;
        if released > 0 {
            info!(released, "returned expired leases to the pool");
            self.counters
                .leases_released
                .fetch_add(released, Ordering::Relaxed);
        }
        Ok(released)
    }

    /// Applies the retention policy once: deletes finished messages older than
    /// [`RelayConfig::retention`] in batches of [`RelayConfig::purge_batch`], at most
    /// 10 batches. Returns how many it deleted. The sweeper calls it every
    /// [`RelayConfig::retention_interval`], and at its next sweep when a call deleted
    /// all it may.
    pub async fn purge_once(&self) -> Result<u64, RelayError> {
        let Some(cutoff) = self
            .config
            .retention
            .and_then(|r| chrono::Duration::from_std(r).ok())
            .and_then(|r| self.clock.now().checked_sub_signed(r))
        else {
            return Ok(0);
        };
        let batch = self.config.purge_batch;
        let mut total = 0;
        for _ in 0..PURGE_BATCHES {
            let purged = self.store.purge_finished(cutoff, batch).await?;
            total += purged;
            if purged < batch as u64 {
                break;
            }
        }
        if total > 0 {
            info!(purged = total, "deleted finished messages past retention");
            self.counters.purged.fetch_add(total, Ordering::Relaxed);
        }
        Ok(total)
    }

    /// Runs the relay on the current tokio runtime until `shutdown` is cancelled or
    /// [`RelayHandle::shutdown`] is called: `concurrency` claim loops and a lease sweeper.
    pub fn spawn(self, shutdown: CancellationToken) -> RelayHandle {
        let relay = Arc::new(self);
        let mut tasks = JoinSet::new();
        for worker in 0..relay.config.concurrency {
            let owner = if relay.config.concurrency == 1 {
                relay.config.relay_id.clone()
            } else {
                format!("{}/{worker}", relay.config.relay_id)
            };
            tasks.spawn(Arc::clone(&relay).claim_loop(owner, shutdown.clone()));
        }
        tasks.spawn(Arc::clone(&relay).sweep_loop(shutdown.clone()));
        info!(relay = %relay.config.relay_id, workers = relay.config.concurrency, "relay started");
        RelayHandle {
            relay,
            tasks,
            shutdown,
        }
    }

    /// One claim loop: claims a batch, hands it to a task that publishes and settles
    /// it, and claims the next one while up to `pipeline_depth` batches are in flight.
    ///
    /// When it claims again:
    /// - at once after a full batch (there is a backlog), unless [`ClaimAhead`] says
    ///   such claims have been coming back short lately;
    /// - otherwise, with batches in flight, on the first of: a wake (something
    ///   committed since) or one of them finishing (its settlement may have unparked the
    ///   next message of each of its keys). Their settling paces the claims; the timer,
    ///   `poll_interval`, is only the backstop;
    /// - but after an empty claim with batches in flight, not on a wake: what is due
    ///   belongs to keys those batches hold, and a claim per commit would find nothing
    ///   again until one of them settles;
    /// - with nothing in flight, on a wake or after the idle pause, which starts at
    ///   `min_poll_interval` after work and doubles up to `poll_interval` (the adaptive
    ///   poll);
    /// - with `pipeline_depth` batches in flight, only when one of them finishes.
    ///
    /// On shutdown it claims no more and waits for the batches in flight.
    async fn claim_loop(self: Arc<Self>, owner: String, shutdown: CancellationToken) {
        let mut in_flight = JoinSet::new();
        let mut failures = 0u32;
        let ceiling = self.config.poll_interval;
        let min_pause = self.config.min_poll_interval.min(ceiling);
        // A relay that starts while writers are busy looks again soon, as after work,
        // rather than a whole `poll_interval` later.
        let mut idle = min_pause;
        let mut ahead = ClaimAhead::default();
        let mut claiming_ahead = false;
        while !shutdown.is_cancelled() {
            while let Some(done) = in_flight.try_join_next() {
                log_panic(Some(done));
            }
            if in_flight.len() >= self.config.pipeline_depth {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    done = in_flight.join_next() => {
                        log_panic(done);
                        continue;
                    }
                }
            }
            let mut heed_wakes = true;
            let was_ahead = std::mem::take(&mut claiming_ahead);
            let pause = match self.claim(&owner).await {
                Ok(claimed) => {
                    failures = 0;
                    let full = claimed.len() >= self.config.batch_size;
                    let found = !claimed.is_empty();
                    if was_ahead {
                        ahead.record(full);
                    }
                    heed_wakes = found || in_flight.is_empty();
                    if found {
                        idle = min_pause;
                        let relay = Arc::clone(&self);
                        let owner = owner.clone();
                        in_flight.spawn(async move { relay.deliver(&owner, claimed).await });
                    }
                    if full && ahead.now() {
                        claiming_ahead = true;
                        continue;
                    }
                    if in_flight.is_empty() {
                        let pause = idle;
                        idle = (idle * 2).min(ceiling);
                        pause
                    } else {
                        ceiling
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(relay = %owner, error = %e, failures, "relay step failed");
                    (ceiling * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(30))
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.waker.0.notified(), if heed_wakes => {}
                done = in_flight.join_next(), if !in_flight.is_empty() => log_panic(done),
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Stop claiming; let the batches in flight publish and settle. (`shutdown`
        // bounds this by the drain timeout, then aborts the loop and with it them.)
        while let Some(done) = in_flight.join_next().await {
            log_panic(Some(done));
        }
    }

    async fn sweep_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next_purge = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.config.sweep_interval) => {}
            }
            match self.sweep_once().await {
                Ok(n) if n > 0 => self.waker.notify(),
                Ok(_) => {}
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "lease sweep failed");
                }
            }
            if tokio::time::Instant::now() >= next_purge {
                let started = tokio::time::Instant::now();
                // A purge that deleted all it may has more to delete: the next one runs
                // at the next sweep, so that retention keeps up with up to
                // `PURGE_BATCHES * purge_batch` messages per `sweep_interval`.
                let behind = match self.purge_once().await {
                    Ok(purged) => purged >= (PURGE_BATCHES * self.config.purge_batch) as u64,
                    Err(e) => {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "retention purge failed");
                        false
                    }
                };
                if !behind {
                    next_purge = started + self.config.retention_interval;
                }
            }
        }
    }
}

/// The most statements of [`RelayConfig::purge_batch`] deletions that one
/// [`Relay::purge_once`] runs, so that a purge never keeps the sweeper from its lease
/// sweep for long.
const PURGE_BATCHES: usize = 10;

/// Whether a claim loop claims again at once after a full batch, before that batch
/// settles ("claiming ahead").
///
/// Claiming ahead pays while the backlog over keys not in flight lasts. When every key
/// with due messages is already in flight (few keys, or other relays holding the
/// rest), such a claim comes back short or empty, and on PostgreSQL it still walks its
/// bound of the due index: at two relays over 1,000 keys, most of them did, and the
/// drain slowed by a third. So after one comes back short the loop lets the next 1, 2,
/// 4, … up to [`Self::MAX_SKIP`] full batches go without, then tries again; one that
/// comes back full resets this.
#[derive(Debug, Default)]
struct ClaimAhead {
    /// Full batches still to go without claiming ahead.
    skip: u32,
    /// Short claims ahead in a row (the next skip is `2^misses`).
    misses: u32,
}

impl ClaimAhead {
    const MAX_SKIP: u32 = 64;

    /// After a full batch: whether to claim ahead now.
    fn now(&mut self) -> bool {
        if self.skip == 0 {
            return true;
        }
        self.skip -= 1;
        false
    }

    /// The outcome of a claim made ahead: whether it came back full.
    fn record(&mut self, full: bool) {
        if full {
            self.misses = 0;
        } else {
            self.skip = 2u32.saturating_pow(self.misses).min(Self::MAX_SKIP);
            self.misses = self.misses.saturating_add(1);
        }
    }
}

/// Logs a batch task that panicked (its messages are redelivered when their leases
/// expire); the claim loop goes on.
fn log_panic(done: Option<Result<BatchReport, tokio::task::JoinError>>) {
    if let Some(Err(e)) = done
        && e.is_panic()
    {
        error!(error = %e, "a batch task panicked; its leases will expire and its messages be redelivered");
    }
}

/// The span of one message of a batch (a child of `relay.batch`), at debug level: its
/// envelope fields and the outcome of its publish.
fn message_span(c: &ClaimedMessage, disposition: &Disposition) -> tracing::Span {
    let outcome = match disposition {
        Disposition::Published => "published",
        Disposition::Retry { .. } => "retry",
        Disposition::Dead { .. } => "dead",
    };
    debug_span!(
        "relay.message",
        id = %c.message.id,
        service = %c.message.service,
        topic = %c.message.topic,
        key = %c.message.partition_key,
        attempt = c.attempts,
        outcome,
    )
}

/// A running relay. Drop it and the workers keep running until the token passed to
/// [`Relay::spawn`] is cancelled; call [`shutdown`](Self::shutdown) to stop gracefully.
#[derive(Debug)]
pub struct RelayHandle {
    relay: Arc<Relay>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl RelayHandle {
    /// Wakes an idle worker.
    pub fn notify(&self) {
        self.relay.waker.notify();
    }

    /// A waker to hand to enqueuing code.
    pub fn waker(&self) -> RelayWaker {
        self.relay.waker()
    }

    /// The relay's running totals.
    pub fn counters(&self) -> Arc<RelayCounters> {
        self.relay.counters()
    }

    /// Stops claiming, lets the batches in flight publish and settle (up to the drain
    /// timeout), then flushes the publisher. Returns whether everything drained in time;
    /// if not, the cut-off messages are redelivered after their leases expire.
    pub async fn shutdown(mut self) -> bool {
        self.shutdown.cancel();
        let drain = self.relay.config.drain_timeout;
        let drained = tokio::time::timeout(drain, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            warn!(
                ?drain,
                "relay did not drain in time; aborting the batches in flight"
            );
            self.tasks.abort_all();
        }
        if let Err(e) = self.relay.publisher.flush(drain).await {
            warn!(error = %e, "publisher flush failed on shutdown");
        }
        info!(relay = %self.relay.config.relay_id, drained, "relay stopped");
        drained
    }
}

/// The relay's metrics on the [`metrics`] facade (the application or `outbox relay`
/// installs the recorder, for example a Prometheus exporter). Labels: `service` and
/// `topic` of the message.
pub mod relay_metrics {
    use chrono::{DateTime, Utc};
    use outbox_ports::{ClaimedMessage, Disposition};
    use std::time::Duration;

    /// Counter: messages the broker acknowledged (its rate is the publish rate).
    pub const PUBLISHED: &str = "outbox_published_total";
    /// Counter: failed publish attempts scheduled for a retry.
    pub const RETRIED: &str = "outbox_publish_retries_total";
    /// Counter: messages that became dead letters.
    pub const DEAD: &str = "outbox_dead_total";
    /// Histogram (seconds): how long the publish call of a message's batch took.
    pub const PUBLISH_LATENCY: &str = "outbox_publish_duration_seconds";
    /// Histogram (seconds): from the message's commit (its `created_at`) to the broker's
    /// acknowledgement.
    pub const COMMIT_TO_ACK: &str = "outbox_commit_to_ack_seconds";
    /// Histogram: messages per claimed batch (no labels).
    pub const CLAIM_BATCH_SIZE: &str = "outbox_claim_batch_size";

    pub(crate) fn record(
        c: &ClaimedMessage,
        disposition: &Disposition,
        publish_took: Duration,
        now: DateTime<Utc>,
    ) {
        let labels = [
            ("service", c.message.service.clone()),
            ("topic", c.message.topic.clone()),
        ];
        metrics::histogram!(PUBLISH_LATENCY, &labels).record(publish_took.as_secs_f64());
        match disposition {
            Disposition::Published => {
                metrics::counter!(PUBLISHED, &labels).increment(1);
                let since_commit = (now - c.message.created_at)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64();
                metrics::histogram!(COMMIT_TO_ACK, &labels).record(since_commit);
            }
            Disposition::Retry { .. } => metrics::counter!(RETRIED, &labels).increment(1),
            Disposition::Dead { .. } => metrics::counter!(DEAD, &labels).increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ClaimAhead;

    /// The full batches a loop lets go without claiming ahead after each of `misses`
    /// short claims ahead in a row.
    fn skips(ahead: &mut ClaimAhead, misses: usize) -> Vec<u32> {
        (0..misses)
            .map(|_| {
                assert!(ahead.now(), "claims ahead once the skips are used up");
                ahead.record(false);
                let mut skipped = 0;
                while !ahead.now() {
                    skipped += 1;
                }
                skipped
            })
            .collect()
    }

    #[test]
    fn claims_ahead_back_off_exponentially_and_a_full_one_resets_them() {
        let mut ahead = ClaimAhead::default();
        assert_eq!(skips(&mut ahead, 9), [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        ahead.record(true);
        assert_eq!(
            skips(&mut ahead, 2),
            [1, 2],
            "a full claim ahead starts over"
        );
    }
}
