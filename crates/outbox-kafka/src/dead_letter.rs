//! [`KafkaDeadLetterTopic`]: parks a consumer group's failed messages on a topic.

use crate::config::{KafkaConfig, KafkaConfigError};
use crate::publisher::{build_producer, kafka_headers};
use async_trait::async_trait;
use outbox_ports::{ConsumeError, DeadLetter, DeadLetterSink};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// A [`DeadLetterSink`] that publishes parked messages to a dead-letter topic with the
/// idempotent producer: same key and payload, the original headers, plus the
/// `outbox-dead-letter-*` headers (reason, group, attempts, source position, time).
///
/// Parking twice (after a crash between parking and the offset commit) publishes
/// twice; the copies carry the same `outbox-message-id`, so a consumer of the
/// dead-letter topic with an inbox sees one.
pub struct KafkaDeadLetterTopic {
    producer: FutureProducer,
    topic: String,
    config: KafkaConfig,
}

impl std::fmt::Debug for KafkaDeadLetterTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetterTopic")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaDeadLetterTopic {
    /// Parks on `topic` (which must exist; provision it with the others).
    pub fn new(config: &KafkaConfig, topic: impl Into<String>) -> Result<Self, KafkaConfigError> {
        let producer = build_producer(config)?;
        Ok(Self {
            producer,
            topic: topic.into(),
            config: config.clone(),
        })
    }
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetterTopic {
    async fn park(&self, letter: &DeadLetter) -> Result<(), ConsumeError> {
        let m = &letter.message;
        let mut record = FutureRecord::to(&self.topic)
            .payload(&m.payload[..])
            .headers(kafka_headers(letter.wire_headers()));
        if let Some(key) = &m.key {
            record = record.key(key.as_str());
        }
        self.producer
            .send(record, Timeout::After(self.config.delivery_timeout))
            .await
            .map(|_| ())
            .map_err(|(e, _)| ConsumeError::new("park", format!("kafka: {e}")))
    }
}
