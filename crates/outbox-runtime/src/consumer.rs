//! The consumer runner: broker → handler + inbox in one transaction → offset.

use crate::ConfigError;
use futures::FutureExt;
use outbox_domain::{BackoffPolicy, ErrorText, MessageId, TopicName};
use outbox_ports::{
    Clock, ConsumeError, DeadLetter, DeadLetterSink, HandlerError, InboxOutcome, IncomingMessage,
    MessageHandler, MessageSource, StoreError, SystemClock, TransactionalInbox,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

/// How a [`ConsumerRunner`] works. Start from [`ConsumerConfig::new`] and change fields;
/// [`ConsumerRunner::new`] validates the result.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The consumer group: the inbox records ids per group, and parked messages name it.
    pub consumer_group: String,
    /// How many partitions are handled concurrently. Each partition maps to one lane, so
    /// its messages (and every key's) are handled in order.
    pub lanes: usize,
    /// Messages buffered per lane ahead of the handler.
    pub lane_capacity: usize,
    /// Handler retries: delays between attempts and the attempt limit after which a
    /// message is parked. Keep the total delay well below the broker's session limits
    /// (Kafka's `max.poll.interval.ms`, 5 minutes by default).
    pub handler_backoff: BackoffPolicy,
    /// Delays while the database or broker is unavailable (begin, commit, park and
    /// receive failures). These are retried for as long as they last: skipping would
    /// lose the message. Only the delays are used, not the attempt limit.
    pub outage_backoff: BackoffPolicy,
    /// Longest failure reason stored with a parked message, in bytes.
    pub max_error_len: usize,
}

impl ConsumerConfig {
    /// Defaults for `consumer_group`: 4 lanes of 16, handler retries after 200 ms,
    /// doubling up to 5 s, parked after 5 attempts; outages retried every 100 ms doubling
    /// up to 5 s.
    pub fn new(consumer_group: impl Into<String>) -> Self {
        Self {
            consumer_group: consumer_group.into(),
            lanes: 4,
            lane_capacity: 16,
            handler_backoff: policy(Duration::from_millis(200), Duration::from_secs(5), 5),
            outage_backoff: policy(Duration::from_millis(100), Duration::from_secs(5), 1),
            max_error_len: outbox_domain::DEFAULT_MAX_ERROR_LEN,
        }
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.consumer_group.trim().is_empty() {
            return Err(ConfigError::Empty("consumer_group"));
        }
        // The inbox and the brokers take the same names as the routes' consumer groups.
        TopicName::parse("consumer group", &self.consumer_group)?;
        for (name, n) in [("lanes", self.lanes), ("lane_capacity", self.lane_capacity)] {
            if n == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

fn policy(base: Duration, cap: Duration, attempts: u32) -> BackoffPolicy {
    BackoffPolicy::new(base, 2.0, cap, attempts).expect("constant, valid backoff")
}

/// Running totals of a consumer runner. Cheap to read at any time.
#[derive(Debug, Default)]
pub struct ConsumerCounters {
    /// Messages received from the broker (redeliveries included).
    pub received: AtomicU64,
    /// Messages whose effect committed.
    pub processed: AtomicU64,
    /// Messages the inbox recognised as already processed; the handler did not run.
    pub duplicates: AtomicU64,
    /// Messages given up on and parked in the dead-letter sink.
    pub parked: AtomicU64,
    /// Handler failures that were retried.
    pub handler_retries: AtomicU64,
    /// Database failures (begin, record, commit) that were retried.
    pub store_errors: AtomicU64,
    /// Broker failures (receive, park) that were retried.
    pub broker_errors: AtomicU64,
    /// Acknowledgements the broker refused (a revoked partition): the new owner sees
    /// those messages again and the inbox absorbs them.
    pub ack_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Consumes a [`MessageSource`] for one consumer group with an exactly-once effect.
///
/// For each delivery: begin a transaction, record the message id in the
/// [`TransactionalInbox`] (a duplicate is rolled back and skipped without running the
/// handler), run the [`MessageHandler`] in the same transaction, commit, and only then
/// acknowledge the delivery to the broker. A crash anywhere before the acknowledgement
/// redelivers the message, and the inbox absorbs it if its transaction had committed.
///
/// A failing handler is retried with [`handler_backoff`](ConsumerConfig::handler_backoff);
/// after the attempt limit (or at once for a non-retryable
/// [`HandlerError`]) the message is parked in the [`DeadLetterSink`], acknowledged, and
/// the partition moves on. Database and broker outages are retried until they end.
///
/// Partitions are spread over [`lanes`](ConsumerConfig::lanes); each lane handles its
/// deliveries one at a time, so per-partition (and so per-key) order holds.
pub struct ConsumerRunner<I: TransactionalInbox> {
    inner: Inner<I>,
}

struct Inner<I: TransactionalInbox> {
    source: Arc<dyn MessageSource>,
    inbox: Arc<I>,
    handler: Arc<dyn MessageHandler<I::Tx>>,
    dead_letters: Arc<dyn DeadLetterSink>,
    clock: Arc<dyn Clock>,
    config: ConsumerConfig,
    counters: Arc<ConsumerCounters>,
    span: SpanFactory,
}

/// Makes the span a delivery is handled in (see [`ConsumerRunner::with_span`]).
pub type SpanFactory = fn(&IncomingMessage, &str) -> tracing::Span;

/// The default span of a delivery: `outbox.consume`, with the message id, the group, its
/// position, and the W3C `traceparent` it carries (if any) as a field.
pub fn consume_span(delivery: &IncomingMessage, group: &str) -> tracing::Span {
    tracing::info_span!(
        "outbox.consume",
        message_id = delivery.headers.get(outbox_ports::header::MESSAGE_ID).map(String::as_str),
        group,
        topic = %delivery.topic,
        partition = delivery.partition,
        offset = delivery.offset,
        traceparent = delivery.headers.get(outbox_ports::header::TRACEPARENT).map(String::as_str),
    )
}

/// How one attempt at a delivery ended, short of a handler failure.
enum Attempt {
    Processed,
    Duplicate,
}

/// Why one attempt at a delivery failed.
enum AttemptError {
    Store(StoreError),
    Handler(HandlerError),
}

/// A lane stopped because shutdown was requested; the delivery was not acknowledged.
struct Stopped;

impl<I> ConsumerRunner<I>
where
    I: TransactionalInbox + 'static,
{
    /// A runner, or the reason `config` cannot work.
    pub fn new(
        source: Arc<dyn MessageSource>,
        inbox: Arc<I>,
        handler: Arc<dyn MessageHandler<I::Tx>>,
        dead_letters: Arc<dyn DeadLetterSink>,
        config: ConsumerConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            inner: Inner {
                source,
                inbox,
                handler,
                dead_letters,
                clock: Arc::new(SystemClock),
                config,
                counters: Arc::default(),
                span: consume_span,
            },
        })
    }

    /// Handles each delivery inside the span `span` makes, instead of [`consume_span`]:
    /// for example one whose parent is the remote trace of the message's `traceparent`
    /// (`outbox-otel`'s `consume_span` does that with OpenTelemetry), so one trace runs
    /// from the request that wrote the message to the handler.
    pub fn with_span(mut self, span: SpanFactory) -> Self {
        self.inner.span = span;
        self
    }

    /// Uses `clock` for inbox and dead-letter timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.inner.clock = clock;
        self
    }

    /// The runner's running totals.
    pub fn counters(&self) -> Arc<ConsumerCounters> {
        Arc::clone(&self.inner.counters)
    }

    /// Consumes until `shutdown` is cancelled, then lets each lane finish the message it
    /// is on (a retry wait is cut short, leaving that message unacknowledged),
    /// closes the source (committing the acknowledged offsets) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        let inner = Arc::new(self.inner);
        let mut lanes = JoinSet::new();
        let senders: Vec<_> = (0..inner.config.lanes)
            .map(|_| {
                let (tx, rx) = mpsc::channel(inner.config.lane_capacity);
                lanes.spawn(Arc::clone(&inner).lane(rx, shutdown.clone()));
                tx
            })
            .collect();
        let mut outages = 0;
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                r = inner.source.recv() => r,
            };
            match received {
                Ok(delivery) => {
                    outages = 0;
                    bump(&inner.counters.received);
                    let lane = &senders[lane_of(&delivery, senders.len())];
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        sent = lane.send(delivery) => {
                            if sent.is_err() {
                                // A lane only ends early on shutdown.
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    outages += 1;
                    bump(&inner.counters.broker_errors);
                    warn!(error = %e, "receive failed; retrying");
                    if inner.outage_pause(outages, &shutdown).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(senders);
        while let Some(joined) = lanes.join_next().await {
            if let Err(e) = joined {
                warn!(error = %e, "consumer lane ended abnormally");
            }
        }
        let closed = inner.source.close().await;
        info!(group = %inner.config.consumer_group, "consumer stopped");
        closed
    }
}

/// The lane of a delivery: every delivery of one topic partition goes to the same lane.
fn lane_of(delivery: &IncomingMessage, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    (&delivery.topic, delivery.partition).hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

impl<I> Inner<I>
where
    I: TransactionalInbox + 'static,
{
    async fn lane(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<IncomingMessage>,
        shutdown: CancellationToken,
    ) {
        let mut rng = SmallRng::from_os_rng();
        while let Some(delivery) = rx.recv().await {
            let span = (self.span)(&delivery, &self.config.consumer_group);
            if shutdown.is_cancelled()
                || self
                    .deliver(&delivery, &shutdown, &mut rng)
                    .instrument(span)
                    .await
                    .is_err()
            {
                // Leave this and every later delivery of the lane unacknowledged, so
                // each partition's committed offset stays below its first gap.
                return;
            }
        }
    }

    /// Handles one delivery to the end: processed, duplicate or parked, then
    /// acknowledged. Returns `Err(Stopped)` if shutdown cut a retry short.
    async fn deliver(
        &self,
        delivery: &IncomingMessage,
        shutdown: &CancellationToken,
        rng: &mut SmallRng,
    ) -> Result<(), Stopped> {
        let group = &self.config.consumer_group;
        let Some(id) = delivery.message_id() else {
            let reason = "no valid outbox-message-id header: not an outbox message";
            self.park(
                DeadLetter::new(group, delivery.clone(), reason, 0, self.clock.now()),
                shutdown,
            )
            .await?;
            self.ack(delivery).await;
            return Ok(());
        };
        let (mut attempts, mut outages) = (0, 0);
        loop {
            match self.attempt(delivery, id).await {
                Ok(Attempt::Processed) => bump(&self.counters.processed),
                Ok(Attempt::Duplicate) => {
                    debug!(%id, "duplicate delivery skipped");
                    bump(&self.counters.duplicates);
                }
                Err(AttemptError::Store(e)) => {
                    outages += 1;
                    bump(&self.counters.store_errors);
                    warn!(%id, error = %e, "inbox transaction failed; retrying");
                    self.outage_pause(outages, shutdown).await?;
                    continue;
                }
                Err(AttemptError::Handler(e)) => {
                    attempts += 1;
                    let limit = self.config.handler_backoff.max_attempts();
                    if e.retryable && attempts < limit {
                        bump(&self.counters.handler_retries);
                        debug!(%id, attempts, error = %e, "handler failed; retrying");
                        let delay = self.config.handler_backoff.delay(attempts, rng);
                        pause(delay, shutdown).await?;
                        continue;
                    }
                    warn!(%id, attempts, error = %e, "handler gave up; parking the message");
                    let reason = ErrorText::with_max_len(e.message, self.config.max_error_len);
                    let letter = DeadLetter::new(
                        group,
                        delivery.clone(),
                        reason.into_string(),
                        attempts,
                        self.clock.now(),
                    );
                    self.park(letter, shutdown).await?;
                }
            }
            self.ack(delivery).await;
            return Ok(());
        }
    }

    /// One transaction: record the id, run the handler, commit.
    async fn attempt(
        &self,
        delivery: &IncomingMessage,
        id: MessageId,
    ) -> Result<Attempt, AttemptError> {
        let inbox = &self.inbox;
        let mut tx = inbox.begin().await.map_err(AttemptError::Store)?;
        let recorded = inbox
            .record_in(&mut tx, &self.config.consumer_group, id, self.clock.now())
            .await;
        match recorded {
            Ok(InboxOutcome::First) => {}
            Ok(InboxOutcome::Duplicate) => {
                self.rollback(tx).await;
                return Ok(Attempt::Duplicate);
            }
            Err(e) => {
                self.rollback(tx).await;
                return Err(AttemptError::Store(e));
            }
        }
        let handled = AssertUnwindSafe(self.handler.handle(&mut tx, delivery))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(HandlerError::retry(panic_message(&panic))));
        match handled {
            Ok(()) => inbox
                .commit(tx)
                .await
                .map(|()| Attempt::Processed)
                .map_err(AttemptError::Store),
            Err(e) => {
                self.rollback(tx).await;
                Err(AttemptError::Handler(e))
            }
        }
    }

    async fn rollback(&self, tx: I::Tx) {
        if let Err(e) = self.inbox.rollback(tx).await {
            // The transaction ends with its connection either way.
            debug!(error = %e, "rollback failed");
        }
    }

    /// Parks `letter`, retrying until the sink takes it: acknowledging an unparked
    /// message would lose it.
    async fn park(&self, letter: DeadLetter, shutdown: &CancellationToken) -> Result<(), Stopped> {
        let mut outages = 0;
        while let Err(e) = self.dead_letters.park(&letter).await {
            outages += 1;
            bump(&self.counters.broker_errors);
            warn!(error = %e, "parking a dead letter failed; retrying");
            self.outage_pause(outages, shutdown).await?;
        }
        bump(&self.counters.parked);
        Ok(())
    }

    async fn ack(&self, delivery: &IncomingMessage) {
        if let Err(e) = self.source.ack(delivery).await {
            bump(&self.counters.ack_failures);
            debug!(error = %e, topic = %delivery.topic, partition = delivery.partition,
                offset = delivery.offset, "acknowledgement refused");
        }
    }

    async fn outage_pause(
        &self,
        outages: u32,
        shutdown: &CancellationToken,
    ) -> Result<(), Stopped> {
        pause(self.config.outage_backoff.nominal_delay(outages), shutdown).await
    }
}

/// Sleeps `delay`, or returns `Err(Stopped)` as soon as shutdown is requested.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> Result<(), Stopped> {
    tokio::select! {
        () = shutdown.cancelled() => Err(Stopped),
        () = tokio::time::sleep(delay) => Ok(()),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("handler panicked: {text}")
}
