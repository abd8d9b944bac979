//! [`KafkaSource`]: a consumer group subscription for the consumer runner.

use crate::config::{KafkaConfig, KafkaConfigError};
use async_trait::async_trait;
use outbox_ports::{ConsumeError, IncomingMessage, MessageSource};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;

/// Settings the source manages itself.
const MANAGED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set KafkaConfig::bootstrap_servers"),
    ("group.id", "pass the consumer group to KafkaSource::new"),
    (
        "enable.auto.offset.store",
        "offsets are stored only after the inbox transaction commits",
    ),
];

/// A Kafka consumer-group subscription implementing [`MessageSource`].
///
/// Offsets are stored only when the runner acknowledges a message (after its inbox
/// transaction committed) and committed in the background every
/// `auto.commit.interval.ms` (5 s by default), on rebalance and on
/// [`close`](MessageSource::close). A crash therefore redelivers at most the messages
/// processed since the last commit, and the inbox absorbs them. A group with no
/// committed offset starts from the earliest message (`auto.offset.reset=earliest`,
/// overridable).
pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins `consumer_group` and subscribes to `topics`.
    pub fn new(
        config: &KafkaConfig,
        consumer_group: &str,
        topics: &[&str],
    ) -> Result<Self, KafkaConfigError> {
        config.validate(MANAGED)?;
        if consumer_group.trim().is_empty() || topics.is_empty() {
            return Err(KafkaConfigError::Client(
                "a consumer group and at least one topic are required".into(),
            ));
        }
        let mut client = config.client_config(&[
            ("group.id", consumer_group.to_owned()),
            ("enable.auto.offset.store", "false".into()),
        ]);
        // Defaults a caller may override.
        for (key, value) in [
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "true"),
        ] {
            if !config.properties.contains_key(key) {
                client.set(key, value);
            }
        }
        let consumer: StreamConsumer = client
            .create()
            .map_err(|e| KafkaConfigError::Client(e.to_string()))?;
        consumer
            .subscribe(topics)
            .map_err(|e| KafkaConfigError::Client(e.to_string()))?;
        Ok(Self {
            consumer: Arc::new(consumer),
        })
    }
}

/// A received record as the consumer side's message type.
pub(crate) fn incoming(m: &impl Message) -> IncomingMessage {
    let mut incoming = IncomingMessage::new(
        m.topic(),
        m.partition(),
        m.offset(),
        m.payload().unwrap_or_default().to_vec(),
    );
    incoming.key = text(m.key());
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            incoming
                .headers
                .insert(h.key.to_owned(), text(h.value).unwrap_or_default());
        }
    }
    incoming
}

fn text(bytes: Option<&[u8]>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned())
}

#[async_trait]
impl MessageSource for KafkaSource {
    async fn recv(&self) -> Result<IncomingMessage, ConsumeError> {
        let m = self
            .consumer
            .recv()
            .await
            .map_err(|e| ConsumeError::new("receive", e.to_string()))?;
        Ok(incoming(&m))
    }

    async fn ack(&self, message: &IncomingMessage) -> Result<(), ConsumeError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &message.topic,
            message.partition,
            Offset::Offset(message.offset + 1),
        )
        .and_then(|()| self.consumer.store_offsets(&tpl))
        .map_err(|e| ConsumeError::new("ack", e.to_string()))
    }

    async fn close(&self) -> Result<(), ConsumeError> {
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || {
            let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last commit.
                Err(e)
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) =>
                {
                    Ok(())
                }
                other => other,
            };
            consumer.unsubscribe();
            committed
        })
        .await
        .map_err(|e| ConsumeError::new("close", e.to_string()))?
        .map_err(|e| ConsumeError::new("close", e.to_string()))
    }
}
