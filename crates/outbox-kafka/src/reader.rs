//! [`read_topic`]: everything a topic holds, for checks such as `outbox verify`.

use std::collections::HashMap;
use std::time::Duration;

use outbox_ports::IncomingMessage;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, KafkaConfigError};
use crate::source::incoming;

/// How long reading waits for stragglers after every partition reached its watermark.
const QUIET: Duration = Duration::from_millis(500);

/// Reads every record of `topic`, from the beginning of each partition up to its end
/// when the call started, without a consumer group (nothing is committed, no group is
/// disturbed). Records in each partition come in offset order. Fails when the topic
/// does not exist or the broker does not answer within `timeout`.
pub async fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<IncomingMessage>, KafkaConfigError> {
    let client = config.client_config(&[
        ("group.id", "outbox-verify".into()),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
    ]);
    let consumer: StreamConsumer = client
        .create()
        .map_err(|e| KafkaConfigError::Client(e.to_string()))?;
    let client_error = |e: rdkafka::error::KafkaError| KafkaConfigError::Client(e.to_string());
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(client_error)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaConfigError::Client(format!(
            "topic {topic} does not exist or has no partitions"
        )));
    }
    // Where each partition ends now; reading stops there.
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(client_error)?;
        if high > low {
            remaining.insert(partition, high);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(client_error)?;
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment).map_err(client_error)?;
    let deadline = tokio::time::Instant::now() + timeout;
    while !remaining.is_empty() {
        let record = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                KafkaConfigError::Client(format!("reading {topic} took longer than {timeout:?}"))
            })?
            .map_err(client_error)?;
        let message = incoming(&record);
        if remaining
            .get(&message.partition)
            .is_some_and(|end| message.offset + 1 >= *end)
        {
            remaining.remove(&message.partition);
        }
        out.push(message);
    }
    // A broker may report a high watermark short of the log end (tansu 0.6 did so in
    // our tests, one record short on some partitions):
    // whatever else arrives within a short quiet spell is part of the topic too.
    while let Ok(Ok(record)) = tokio::time::timeout(QUIET, consumer.recv()).await {
        out.push(incoming(&record));
    }
    Ok(out)
}
