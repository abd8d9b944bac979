//! [`PulsarPublisher`]: one producer per topic partition, one outcome per message
//! from its own send receipt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use outbox_domain::OutboxMessage;
use outbox_ports::{ClaimedMessage, PublishError, PublishOutcome, Publisher, wire_headers};
use prost::Message as _;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::client::{Client, partition_for, unexpected};
use crate::config::{Deduplication, PulsarConfig, PulsarConfigError};
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
    /// The broker's last persisted sequence id for this name when it was created
    /// (-1: none, or deduplication is off).
    last_sequence_id: i64,
    /// The next sequence id of a session producer. Held while the message is queued,
    /// so messages reach the socket in sequence order: a broker with deduplication
    /// drops a sequence id lower than one it has already seen.
    next_sequence: std::sync::Mutex<u64>,
}

impl Producer {
    /// Queues `message` with the next sequence id of this session producer.
    fn send_next(&self, message: &Outgoing<'_>) -> Result<Receipt, PulsarError> {
        let mut next = self.next_sequence.lock().unwrap_or_else(|e| e.into_inner());
        let receipt = self.send(*next, message)?;
        *next += 1;
        Ok(receipt)
    }

    /// Queues `message` with `sequence_id`.
    fn send(&self, sequence_id: u64, message: &Outgoing<'_>) -> Result<Receipt, PulsarError> {
        let metadata = message.metadata(&self.name, sequence_id);
        let size = metadata.encoded_len() + message.payload.len();
        if size > self.conn.max_message_size() {
            return Err(PulsarError::TooLarge {
                size,
                limit: self.conn.max_message_size(),
            });
        }
        let receipt = self
            .conn
            .send_message(self.id, metadata, message.payload.clone())?;
        Ok(Receipt {
            receipt,
            conn: self.conn.clone(),
        })
    }
}

/// A queued message's receipt.
struct Receipt {
    receipt: tokio::sync::oneshot::Receiver<
        Result<crate::proto::CommandSendReceipt, crate::proto::CommandSendError>,
    >,
    conn: Connection,
}

impl Receipt {
    /// Waits for the broker's answer.
    async fn wait(self) -> Result<(), PulsarError> {
        match self.receipt.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(refused)) => Err(PulsarError::Server {
                operation: "send",
                code: refused.error(),
                message: refused.message,
            }),
            Err(_) => Err(PulsarError::Connection {
                url: self.conn.url().to_owned(),
                message: if self.conn.is_closed() {
                    "the connection was lost before the broker acknowledged".into()
                } else {
                    "the broker closed the producer before acknowledging".into()
                },
            }),
        }
    }
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
/// - Sequence ids: see [`Deduplication`]. The relay calls
///   [`publish_claimed`](Publisher::publish_claimed), which `PerKey` needs.
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

    /// Runs `sends` concurrently, turning those still unanswered at `send_timeout`
    /// into transient failures.
    async fn within_send_timeout(
        &self,
        sends: impl Iterator<Item = impl Future<Output = PublishOutcome>>,
    ) -> Vec<PublishOutcome> {
        let send_timeout = self.client.config().send_timeout;
        let deadline = Instant::now() + send_timeout;
        let sends = sends.map(|send| async move {
            tokio::time::timeout_at(deadline, send)
                .await
                .unwrap_or_else(|_| {
                    Err(PublishError::transient(format!(
                        "not acknowledged by the broker within the send timeout ({send_timeout:?})"
                    )))
                })
        });
        futures::future::join_all(sends).await
    }

    /// The longest a [`publish`](Publisher::publish) call takes: `send_timeout`.
    pub fn max_publish_time(&self) -> Duration {
        self.client.config().send_timeout
    }

    /// Closes the producers and connections (after [`flush`](Publisher::flush)).
    pub async fn close(&self) {
        let producers: Vec<_> = self.producers.lock().await.drain().collect();
        for (_, producer) in producers {
            close_producer(&producer).await;
        }
        self.client.shutdown().await;
    }

    /// The topic partition `message` goes to.
    async fn target(&self, message: &Outgoing<'_>) -> Result<String, PublishError> {
        let topic = self.client.config().topic_name(message.topic);
        Ok(match (self.partitions(&topic).await?, message.key) {
            (0, _) => topic,
            (n, Some(key)) => format!("{topic}-partition-{}", partition_for(key, n)),
            (_, None) => format!("{topic}-partition-0"),
        })
    }

    /// Sends one message on the session producer of its partition and waits for its
    /// receipt.
    pub(crate) async fn send(&self, message: Outgoing<'_>) -> PublishOutcome {
        let target = self.target(&message).await?;
        let producer = self.producer(&target).await?;
        let sent = match producer.send_next(&message) {
            Ok(receipt) => receipt.wait().await,
            Err(err) => Err(err),
        };
        match sent {
            Ok(()) => Ok(()),
            // Not the producer's fault; it stays.
            Err(err @ PulsarError::TooLarge { .. }) => Err(err.to_publish_error()),
            Err(err) => {
                // After a failed send the broker may have closed the producer: start
                // afresh with a new one (and a fresh partition count, in case the topic
                // was deleted and recreated).
                self.forget(&target, &producer).await;
                Err(err.to_publish_error())
            }
        }
    }

    /// Sends one claimed message on a producer of its own key, with the claim's
    /// position as the sequence id ([`Deduplication::PerKey`]).
    async fn send_keyed(&self, claimed: &ClaimedMessage, prefix: &str) -> PublishOutcome {
        let message = &claimed.message;
        let outgoing = Outgoing::from_message(message);
        let target = self.target(&outgoing).await?;
        let name = format!("{prefix}/{}/{}", message.service, message.partition_key);
        let producer = create_producer(&self.client, &target, Some(&name))
            .await
            .map_err(|e| e.to_publish_error())?;
        // If the send timeout cancels this future, the guard still frees the key's
        // name; otherwise the next producer of the key would meet ProducerBusy for as
        // long as this connection lives.
        let mut guard = ClosesOnDrop {
            producer: &producer,
            armed: true,
        };
        let seq = i64::try_from(claimed.seq).unwrap_or(i64::MAX);
        let outcome = if seq > producer.last_sequence_id {
            match producer.send(claimed.seq, &outgoing) {
                Ok(receipt) => receipt.wait().await.map_err(|e| e.to_publish_error()),
                Err(err) => Err(err.to_publish_error()),
            }
        } else if seq == producer.last_sequence_id {
            // The broker stored this very message under this key's name: an earlier
            // attempt was published, and its outcome lost (a relay crash, a dropped
            // connection). Sending it again would be dropped anyway.
            debug!(id = %message.id, seq, "already on the topic; not sent again");
            Ok(())
        } else {
            // An older position than the key's last: the outbox table was recreated,
            // or a dead message is replayed after later ones. The broker would drop
            // it as a duplicate, so it goes out on the session producer instead.
            warn!(
                id = %message.id,
                seq,
                last = producer.last_sequence_id,
                "position below the key's last sequence id; sent without deduplication"
            );
            guard.armed = false;
            close_producer(&producer).await;
            return self.send(outgoing).await;
        };
        guard.armed = false;
        close_producer(&producer).await;
        outcome
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
            create_producer(&self.client, topic, None)
                .await
                .map_err(|e| e.to_publish_error())?,
        );
        debug!(topic, producer = %producer.name, "Pulsar producer created");
        producers.insert(topic.to_owned(), producer.clone());
        Ok(producer)
    }

    /// Drops `producer` if it is still the one for `topic`, so the next send creates
    /// a new one, and forgets the partition counts.
    async fn forget(&self, topic: &str, producer: &Arc<Producer>) {
        let removed = {
            let mut producers = self.producers.lock().await;
            let current = producers
                .get(topic)
                .is_some_and(|current| Arc::ptr_eq(current, producer));
            current.then(|| producers.remove(topic)).flatten()
        };
        if let Some(producer) = removed {
            close_producer(&producer).await;
        }
        self.partitions.lock().await.clear();
    }
}

/// Creates a producer on `topic`, named `name` or by the broker.
async fn create_producer(
    client: &Client,
    topic: &str,
    name: Option<&str>,
) -> Result<Producer, PulsarError> {
    let conn = client.owner(topic).await?;
    let id = conn.next_handle_id();
    let answer = conn
        .request("create producer", |request_id| BaseCommand {
            r#type: Type::Producer as i32,
            producer: Some(CommandProducer {
                topic: topic.to_owned(),
                producer_id: id,
                request_id,
                producer_name: name.map(str::to_owned),
                user_provided_producer_name: Some(name.is_some()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let kind = answer.r#type();
    let success = answer
        .producer_success
        .ok_or_else(|| unexpected("create producer", kind))?;
    let last_sequence_id = success.last_sequence_id.unwrap_or(-1);
    Ok(Producer {
        conn,
        id,
        name: success.producer_name,
        last_sequence_id,
        next_sequence: std::sync::Mutex::new(u64::try_from(last_sequence_id + 1).unwrap_or(0)),
    })
}

/// Posts a CLOSE_PRODUCER for a keyed producer whose send was abandoned.
struct ClosesOnDrop<'a> {
    producer: &'a Producer,
    armed: bool,
}

impl Drop for ClosesOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let conn = &self.producer.conn;
            conn.post(close_command(self.producer.id, conn.next_id()));
        }
    }
}

fn close_command(producer_id: u64, request_id: u64) -> BaseCommand {
    BaseCommand {
        r#type: Type::CloseProducer as i32,
        close_producer: Some(CommandCloseProducer {
            producer_id,
            request_id,
        }),
        ..Default::default()
    }
}

/// Closes `producer` and waits for the broker to confirm (so its name is free for the
/// next producer of the key, on any relay); a failure only means the connection is
/// gone, which closes the producer too.
async fn close_producer(producer: &Producer) {
    let closed = producer
        .conn
        .request("close producer", |request_id| {
            close_command(producer.id, request_id)
        })
        .await;
    if let Err(err) = closed {
        debug!(producer = %producer.name, %err, "closing a Pulsar producer failed");
    }
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

impl<'a> Outgoing<'a> {
    fn from_message(message: &'a OutboxMessage) -> Self {
        Self {
            topic: &message.topic,
            key: Some(&message.partition_key),
            properties: wire_headers(message),
            payload: Bytes::from(message.payload.to_bytes().into_owned()),
            event_time: u64::try_from(message.occurred_at.timestamp_millis()).ok(),
        }
    }

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
    /// Sends on the session producers, whatever [`Deduplication`] says: without
    /// claims there are no positions to derive sequence ids from.
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let sends = batch
            .iter()
            .map(|message| self.send(Outgoing::from_message(message)));
        self.within_send_timeout(sends).await
    }

    async fn publish_claimed(&self, batch: &[ClaimedMessage]) -> Vec<PublishOutcome> {
        match &self.client.config().deduplication {
            Deduplication::Off => {
                let sends = batch
                    .iter()
                    .map(|c| self.send(Outgoing::from_message(&c.message)));
                self.within_send_timeout(sends).await
            }
            Deduplication::PerKey { prefix } => {
                let sends = batch.iter().map(|c| self.send_keyed(c, prefix));
                self.within_send_timeout(sends).await
            }
        }
    }

    /// Every publish call waits for its own receipts, so nothing is left to flush.
    async fn flush(&self, _timeout: Duration) -> Result<(), PublishError> {
        Ok(())
    }
}
