//! [`PulsarPublisher`]: one producer per topic partition, one outcome per message
//! from its own send receipt.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outbox_domain::OutboxMessage;
use outbox_ports::{PublishError, PublishOutcome, Publisher, wire_headers};
use prost::Message as _;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::debug;

use crate::client::{Client, partition_for, unexpected};
use crate::config::{PulsarConfig, PulsarConfigError};
use crate::connection::Connection;
use crate::error::PulsarError;
use crate::proto::{
    BaseCommand, CommandCloseProducer, CommandProducer, KeyValue, MessageMetadata,
    base_command::Type,
};

/// A producer on one topic partition (or non-partitioned topic).
struct Producer {
    conn: Connection,
    id: u64,
    name: String,
    /// The next sequence id: strictly increasing per producer, starting after the
    /// broker's last one for this name.
    next_sequence: AtomicU64,
}

/// Publishes outbox messages to Pulsar.
///
/// - The partition key is the message key (`partition_key`), so Key_Shared
///   subscriptions keep per-key order and a partitioned topic gets each key on one
///   partition (Murmur3-32, like Pulsar's clients).
/// - [`wire_headers`] become the message properties (the message id among them);
///   `occurred_at` is the event time.
/// - Each message is its own entry: no client-side batching. A batch entry is
///   dispatched to Key_Shared consumers by its *first* key, so a multi-key batch
///   would hand some keys to the wrong consumer and break their order; and the relay
///   never has two messages of one key in flight, so key-based batches would hold
///   one message each. Messages of a publish call are pipelined on the connection
///   instead.
/// - One outcome per message from its own receipt; broker errors map to transient
///   or permanent as in [`PulsarError::is_retryable`]; a message the broker has not
///   acknowledged within `send_timeout` is a transient failure.
pub struct PulsarPublisher {
    client: Arc<Client>,
    partitions: Mutex<HashMap<String, u32>>,
    producers: Mutex<HashMap<String, Arc<Producer>>>,
}

impl std::fmt::Debug for PulsarPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarPublisher")
            .field("config", self.client.config())
            .finish_non_exhaustive()
    }
}

impl PulsarPublisher {
    /// A publisher for the cluster in `config`. Connects lazily, on the first publish.
    pub fn new(config: PulsarConfig) -> Result<Self, PulsarConfigError> {
        config.validate()?;
        Ok(Self {
            client: Client::new(config),
            partitions: Mutex::new(HashMap::new()),
            producers: Mutex::new(HashMap::new()),
        })
    }

    /// The longest a [`publish`](Publisher::publish) call takes: `send_timeout`.
    pub fn max_publish_time(&self) -> Duration {
        self.client.config().send_timeout
    }

    /// Closes the producers and connections (after [`flush`](Publisher::flush)).
    pub async fn close(&self) {
        let producers: Vec<_> = self.producers.lock().await.drain().collect();
        for (_, producer) in producers {
            close_producer(&producer);
        }
        self.client.shutdown().await;
    }

    async fn publish_one(&self, message: &OutboxMessage) -> PublishOutcome {
        self.send(Outgoing {
            topic: &message.topic,
            key: Some(&message.partition_key),
            properties: wire_headers(message),
            payload: Bytes::from(message.payload.to_bytes().into_owned()),
            event_time: u64::try_from(message.occurred_at.timestamp_millis()).ok(),
        })
        .await
    }

    /// Sends one message and waits for its receipt.
    pub(crate) async fn send(&self, message: Outgoing<'_>) -> PublishOutcome {
        let topic = self.client.config().topic_name(message.topic);
        let partitions = self.partitions(&topic).await?;
        let target = match (partitions, message.key) {
            (0, _) => topic,
            (n, Some(key)) => format!("{topic}-partition-{}", partition_for(key, n)),
            (_, None) => format!("{topic}-partition-0"),
        };
        let producer = self.producer(&target).await?;
        let sequence_id = producer.next_sequence.fetch_add(1, Ordering::Relaxed);
        let payload = message.payload.clone();
        let metadata = message.metadata(&producer.name, sequence_id);
        let size = metadata.encoded_len() + payload.len();
        if size > producer.conn.max_message_size() {
            return Err(PublishError::permanent(format!(
                "the message is {size} bytes with its metadata; the broker accepts at most {}",
                producer.conn.max_message_size()
            )));
        }
        let receipt = producer
            .conn
            .send_message(producer.id, metadata, payload)
            .map_err(|e| self.forget(&target, &producer, &e))?;
        match receipt.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(refused)) => {
                let error = PulsarError::Server {
                    operation: "send",
                    code: refused.error(),
                    message: refused.message,
                };
                // After a send error the broker may have closed the producer, and
                // later sequence ids on it would be out of order: start afresh.
                Err(self.forget(&target, &producer, &error))
            }
            Err(_) => {
                let error = if producer.conn.is_closed() {
                    PulsarError::Connection {
                        url: producer.conn.url().to_owned(),
                        message: "the connection was lost before the broker acknowledged".into(),
                    }
                } else {
                    PulsarError::Connection {
                        url: producer.conn.url().to_owned(),
                        message: "the broker closed the producer before acknowledging".into(),
                    }
                };
                Err(self.forget(&target, &producer, &error))
            }
        }
    }

    async fn partitions(&self, topic: &str) -> Result<u32, PublishError> {
        if let Some(n) = self.partitions.lock().await.get(topic) {
            return Ok(*n);
        }
        let n = self
            .client
            .partitions(topic)
            .await
            .map_err(|e| e.to_publish_error())?;
        self.partitions.lock().await.insert(topic.to_owned(), n);
        Ok(n)
    }

    /// The producer for `topic`, created (and the old one dropped) when there is none
    /// or the broker closed it.
    async fn producer(&self, topic: &str) -> Result<Arc<Producer>, PublishError> {
        let mut producers = self.producers.lock().await;
        if let Some(producer) = producers.get(topic)
            && !producer.conn.producer_closed(producer.id)
        {
            return Ok(producer.clone());
        }
        let producer = Arc::new(
            create_producer(&self.client, topic)
                .await
                .map_err(|e| e.to_publish_error())?,
        );
        debug!(topic, producer = %producer.name, "Pulsar producer created");
        producers.insert(topic.to_owned(), producer.clone());
        Ok(producer)
    }

    /// Drops `producer` (if still current for `topic`) so the next send creates a new
    /// one, and returns `error`'s outcome. The partition count is looked up again too:
    /// a "topic not found" may be a deleted and recreated topic.
    fn forget(&self, topic: &str, producer: &Arc<Producer>, error: &PulsarError) -> PublishError {
        if let Ok(mut producers) = self.producers.try_lock()
            && producers
                .get(topic)
                .is_some_and(|current| Arc::ptr_eq(current, producer))
        {
            producers.remove(topic);
            close_producer(producer);
        }
        if let Ok(mut partitions) = self.partitions.try_lock() {
            partitions.clear();
        }
        error.to_publish_error()
    }
}

async fn create_producer(client: &Client, topic: &str) -> Result<Producer, PulsarError> {
    let conn = client.owner(topic).await?;
    let id = conn.next_handle_id();
    let answer = conn
        .request("create producer", |request_id| BaseCommand {
            r#type: Type::Producer as i32,
            producer: Some(CommandProducer {
                topic: topic.to_owned(),
                producer_id: id,
                request_id,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let kind = answer.r#type();
    let success = answer
        .producer_success
        .ok_or_else(|| unexpected("create producer", kind))?;
    let next_sequence = u64::try_from(success.last_sequence_id.unwrap_or(-1) + 1).unwrap_or(0);
    Ok(Producer {
        conn,
        id,
        name: success.producer_name,
        next_sequence: AtomicU64::new(next_sequence),
    })
}

fn close_producer(producer: &Producer) {
    let request_id = producer.conn.next_id();
    producer.conn.post(BaseCommand {
        r#type: Type::CloseProducer as i32,
        close_producer: Some(CommandCloseProducer {
            producer_id: producer.id,
            request_id,
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// One message on its way out: an outbox message, or a parked one.
pub(crate) struct Outgoing<'a> {
    /// The route's topic (short or full name).
    pub(crate) topic: &'a str,
    pub(crate) key: Option<&'a str>,
    pub(crate) properties: Vec<(String, String)>,
    pub(crate) payload: Bytes,
    /// Milliseconds since the epoch.
    pub(crate) event_time: Option<u64>,
}

impl Outgoing<'_> {
    fn metadata(&self, producer: &str, sequence_id: u64) -> MessageMetadata {
        let publish_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        MessageMetadata {
            producer_name: producer.to_owned(),
            sequence_id,
            publish_time,
            properties: self
                .properties
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            partition_key: self.key.map(str::to_owned),
            event_time: self.event_time,
            ..Default::default()
        }
    }
}

#[async_trait]
impl Publisher for PulsarPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let send_timeout = self.client.config().send_timeout;
        let deadline = Instant::now() + send_timeout;
        let sends = batch.iter().map(|message| async move {
            tokio::time::timeout_at(deadline, self.publish_one(message))
                .await
                .unwrap_or_else(|_| {
                    Err(PublishError::transient(format!(
                        "not acknowledged by the broker within the send timeout ({send_timeout:?})"
                    )))
                })
        });
        futures::future::join_all(sends).await
    }

    /// Every publish call waits for its own receipts, so nothing is left to flush.
    async fn flush(&self, _timeout: Duration) -> Result<(), PublishError> {
        Ok(())
    }
}
