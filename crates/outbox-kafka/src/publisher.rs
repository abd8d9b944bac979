//! [`KafkaPublisher`]: the idempotent producer behind the relay.

use crate::config::{KafkaConfig, KafkaConfigError, millis};
use crate::outcome::publish_error;
use async_trait::async_trait;
use futures::future::join_all;
use outbox_domain::OutboxMessage;
use outbox_ports::{PublishError, PublishOutcome, Publisher, wire_headers};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tracing::{error, warn};

/// Settings the publisher derives from [`KafkaConfig`]'s typed fields.
const MANAGED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set KafkaConfig::bootstrap_servers"),
    ("message.timeout.ms", "set KafkaConfig::delivery_timeout"),
    ("delivery.timeout.ms", "set KafkaConfig::delivery_timeout"),
    (
        "queue.buffering.max.kbytes",
        "set KafkaConfig::max_buffered_kbytes",
    ),
];

/// Extra time, beyond the delivery timeout, that `publish` waits for librdkafka's own
/// delivery report before it gives up on a message itself.
const REPORT_GRACE: Duration = Duration::from_secs(1);

/// Publishes outbox messages to Kafka with an idempotent producer.
///
/// - `enable.idempotence=true` and `acks=all` by default: the broker drops the
///   duplicates of librdkafka's internal retries and keeps each partition in send
///   order.
/// - `linger.ms=0` by default: the relay batches by claim, and each batch goes out at
///   once instead of after librdkafka's 5 ms batching delay.
/// - The partition key is the Kafka message key (so one key stays on one partition),
///   and [`wire_headers`] become Kafka headers.
/// - Per-key order through retries: the relay never hands over a message while an
///   earlier one of its key is unsettled (the claim's per-key rule), so at most one
///   message per key is ever in flight and a failed message is retried before its
///   successors are even claimed.
/// - Each message gets its own outcome from its delivery report; see the crate docs
///   for which errors are transient and which permanent.
/// - librdkafka buffers at most [`max_buffered_kbytes`](KafkaConfig::max_buffered_kbytes);
///   a full buffer makes `publish` wait for room (a quarter of the delivery timeout),
///   then report `QueueFull` (transient). A call never takes longer than
///   [`max_publish_time`](Self::max_publish_time).
/// - After a fatal producer error (the idempotence guarantee could not be kept), or a
///   batch of which no message got through, the producer is replaced, and the messages
///   of that batch are retried. (librdkafka's idempotent producer can wedge without a
///   fatal error: see `needs_new_producer` in the source.)
pub struct KafkaPublisher {
    config: KafkaConfig,
    producer: RwLock<Arc<FutureProducer>>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// A publisher for `config`. Connects lazily: a broker that is down shows up as
    /// transient outcomes, not here.
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaConfigError> {
        let producer = build_producer(&config)?;
        Ok(Self {
            config,
            producer: RwLock::new(Arc::new(producer)),
        })
    }

    /// The longest one `publish` call can take: waiting for buffer room (a quarter of
    /// the delivery timeout), the delivery timeout itself, and a second of grace for
    /// the report. Keep it below the relay's `publish_timeout`, or a slow batch is
    /// failed as a whole by the relay instead of message by message.
    pub fn max_publish_time(&self) -> Duration {
        self.queue_wait() + self.config.delivery_timeout + REPORT_GRACE
    }

    fn queue_wait(&self) -> Duration {
        self.config.delivery_timeout / 4
    }

    fn producer(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces `failed` after a fatal error or a batch that got nothing through; a no-op
    /// if another batch already did.
    fn replace_producer(&self, failed: &Arc<FutureProducer>) {
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        match build_producer(&self.config) {
            Ok(fresh) => *current = Arc::new(fresh),
            Err(e) => error!(error = %e, "could not rebuild the Kafka producer"),
        }
    }
}

/// The idempotent producer of `config`, after checking it.
pub(crate) fn build_producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaConfigError> {
    config.validate(MANAGED)?;
    producer_config(config)
        .create()
        .map_err(|e| KafkaConfigError::Client(e.to_string()))
}

/// The librdkafka configuration of the publisher's producer.
fn producer_config(config: &KafkaConfig) -> ClientConfig {
    config.client_config(&[
        ("enable.idempotence", "true".into()),
        ("acks", "all".into()),
        ("message.timeout.ms", millis(config.delivery_timeout)),
        (
            "queue.buffering.max.kbytes",
            config.max_buffered_kbytes.to_string(),
        ),
        // No batching delay: the relay hands over each claimed batch at once, so
        // librdkafka's default `linger.ms` (5 ms) would only hold it back. Messages
        // that arrive while requests are in flight are still sent together. At
        // 1,000 messages/s this takes commit-to-ack p50 from 9.2 ms to 2.6 ms
        // (docs/benchmarks.md, the latency scenario's `linger.ms=5` row).
        // Overridable with `KafkaConfig::with_property`.
        ("linger.ms", "0".into()),
        // Keys map to partitions the way the Java client does, so other producers
        // of the same topic agree on where a key lives.
        ("partitioner", "murmur2_random".into()),
        // A topic missing from the metadata fails its messages with UnknownTopic
        // (permanent) after this long. librdkafka's default, 30 s, outlasts the
        // delivery timeout, so a missing topic would only ever time out (transient).
        (
            "topic.metadata.propagation.max.ms",
            millis(config.delivery_timeout / 2),
        ),
    ])
}

/// Whether a batch failed in a way a fresh producer may fix: not one of its messages
/// got through, and every failure is transient.
///
/// librdkafka's idempotent producer can wedge without raising a fatal error. A broker
/// that lost its producer state (tansu after a restart, whose state is in memory)
/// answers `UNKNOWN_PRODUCER_ID`. librdkafka then bumps its epoch locally and retries
/// under the same producer id, which that broker rejects again, for ever: every
/// message times out, transiently, and nothing ever gets through. A new producer asks
/// the broker for a new producer id. During a plain outage, replacing the producer
/// after each failed batch costs only a reconnect.
fn needs_new_producer(outcomes: &[PublishOutcome]) -> bool {
    !outcomes.is_empty()
        && outcomes
            .iter()
            .all(|o| o.as_ref().is_err_and(PublishError::is_transient))
}

pub(crate) fn kafka_headers(headers: Vec<(String, String)>) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        },
    )
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let producer = self.producer();
        let payloads: Vec<_> = batch.iter().map(|m| m.payload.to_bytes()).collect();
        let wait = self.max_publish_time();
        #[cfg(feature = "failpoints")]
        let first_ack = &std::sync::atomic::AtomicBool::new(false);
        let sends = batch.iter().zip(&payloads).map(|(m, payload)| {
            let record = FutureRecord::to(&m.topic)
                .key(&m.partition_key)
                .payload(payload.as_ref())
                .headers(kafka_headers(wire_headers(m)));
            let send = producer.send(record, Timeout::After(self.queue_wait()));
            async move {
                let outcome = match tokio::time::timeout(wait, send).await {
                    Ok(Ok(_delivery)) => Ok(()),
                    Ok(Err((e, _))) => Err(publish_error(&e)),
                    Err(_) => Err(PublishError::transient(format!(
                        "kafka: no delivery report within {wait:?}"
                    ))),
                };
                // Crash-point kit: the first message of a batch is on the broker, the
                // others may or may not be.
                #[cfg(feature = "failpoints")]
                if batch.len() > 1
                    && outcome.is_ok()
                    && !first_ack.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    fail::fail_point!("kafka.mid_batch");
                }
                outcome
            }
        });
        let outcomes = join_all(sends).await;
        if outcomes.iter().any(Result::is_err)
            && let Some((code, reason)) = producer.client().fatal_error()
        {
            error!(?code, %reason, "fatal Kafka producer error; replacing the producer");
            self.replace_producer(&producer);
        } else if needs_new_producer(&outcomes) {
            warn!("no message of the batch got through; replacing the Kafka producer");
            self.replace_producer(&producer);
        }
        if !Arc::ptr_eq(&producer, &self.producer()) {
            // Dropping the last handle of a replaced producer blocks (purge, flush for
            // up to 500 ms, destroy): not on a runtime worker.
            tokio::task::spawn_blocking(move || drop(producer));
        }
        outcomes
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let producer = self.producer();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| PublishError::transient(format!("flush task failed: {e}")))?;
        flushed.map_err(|e| {
            warn!(error = %e, "Kafka producer flush incomplete");
            publish_error(&e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_batch_with_nothing_through_needs_a_new_producer() {
        let timeout = || Err(PublishError::transient("kafka: MessageTimedOut"));
        let too_large = || Err(PublishError::permanent("kafka: MessageSizeTooLarge"));
        assert!(needs_new_producer(&[timeout(), timeout()]));
        assert!(!needs_new_producer(&[timeout(), Ok(())]));
        assert!(!needs_new_producer(&[timeout(), too_large()]));
        assert!(!needs_new_producer(&[too_large()]));
        assert!(!needs_new_producer(&[]));
    }

    #[test]
    fn the_producer_sends_without_a_batching_delay_unless_told_otherwise() {
        let config = KafkaConfig::new("k:9092");
        assert_eq!(producer_config(&config).get("linger.ms"), Some("0"));
        let tuned = config.with_property("linger.ms", "20");
        assert_eq!(producer_config(&tuned).get("linger.ms"), Some("20"));
    }
}
