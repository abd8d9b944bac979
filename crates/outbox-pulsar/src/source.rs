//! [`PulsarSource`]: a subscription as a [`MessageSource`] for the consumer runner.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf as _, Bytes};
use outbox_ports::{ConsumeError, IncomingMessage, MessageSource, header};
use prost::Message as _;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::client::{Client, murmur3_32};
use crate::config::{PulsarConfig, PulsarConfigError};
use crate::connection::{Connection, ConsumerEvent, Delivery};
use crate::error::PulsarError;
use crate::proto::{
    BaseCommand, CommandAck, CommandCloseConsumer, CommandFlow, CommandSubscribe, KeySharedMeta,
    KeySharedMode, MessageIdData, MessageMetadata, SingleMessageMetadata, base_command::Type,
    command_ack::AckType, command_subscribe::InitialPosition, command_subscribe::SubType,
};

/// How the subscription shares the topic among the group's instances. Both keep
/// per-key order; `Shared` (round robin) would not, so it is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Subscription {
    /// Keys are spread over all connected instances; each key goes to one instance at
    /// a time. The runner's lanes are per key, so one instance handles several keys
    /// of a partition in parallel.
    KeyShared,
    /// Each partition goes to one active instance; the others stand by. The runner's
    /// lanes are per partition.
    Failover,
}

/// Where a subscription that does not exist yet starts.
const INITIAL_POSITION: InitialPosition = InitialPosition::Earliest;

/// A consumer on one partition (or a non-partitioned topic).
struct Consumer {
    conn: Connection,
    id: u64,
    /// Messages received since the last FLOW.
    since_flow: u32,
}

/// An entry delivered and not yet fully acknowledged; a batch entry is acknowledged
/// once all its messages are.
struct Entry {
    slot: usize,
    consumer_id: u64,
    id: MessageIdData,
    unacked: u32,
}

#[derive(Default)]
struct State {
    /// One per partition: its topic and current consumer.
    slots: Vec<(String, Option<Consumer>)>,
    /// Delivered messages by offset → index into `entries`.
    delivered: HashMap<i64, u64>,
    entries: HashMap<u64, Entry>,
    next_offset: i64,
    next_entry: u64,
    /// Messages decoded from a batch entry and not yet handed out.
    ready: std::collections::VecDeque<IncomingMessage>,
}

/// A Pulsar subscription for the consumer runner (`outbox_runtime::ConsumerRunner`).
///
/// - Subscribes to every partition of the topic (a new subscription starts at the
///   earliest message) with `Key_Shared` or `Failover`, and lets the broker push up
///   to [`PulsarConfig::receiver_queue`] messages ahead per partition.
/// - [`IncomingMessage::partition`] is the runner's lane key: with `KeyShared` a hash
///   of the message key (so one key stays in one lane), with `Failover` the partition
///   index. [`IncomingMessage::offset`] numbers deliveries; `ack` maps it back to
///   the Pulsar message id and sends an individual acknowledgement.
/// - A consumer the broker closes, or whose connection is lost, is subscribed again
///   on the next `recv`; what it had delivered and not acknowledged comes again, and
///   the inbox absorbs what was already handled.
/// - Batch entries (from producers that batch) are split into their messages; the
///   entry is acknowledged when all of them are. Compressed entries cannot be read
///   (this client has no codecs): they are delivered without their outbox message
///   id, so the runner parks them, with the header `outbox-pulsar-error` saying why.
pub struct PulsarSource {
    client: Arc<Client>,
    topic: String,
    subscription: String,
    kind: Subscription,
    consumer_name: String,
    receiver_queue: u32,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<ConsumerEvent>>,
    events_tx: mpsc::UnboundedSender<ConsumerEvent>,
    state: std::sync::Mutex<State>,
}

impl std::fmt::Debug for PulsarSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarSource")
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The header that says why a delivered entry could not be read.
pub const ERROR_HEADER: &str = "outbox-pulsar-error";

impl PulsarSource {
    /// Subscribes `subscription` (the consumer group) to every partition of `topic`.
    /// Fails when the broker is unreachable or refuses (see
    /// [`PulsarError::is_retryable`]).
    pub async fn subscribe(
        config: PulsarConfig,
        topic: &str,
        subscription: &str,
        kind: Subscription,
    ) -> Result<Self, SubscribeError> {
        config.validate()?;
        if subscription.is_empty() {
            return Err(SubscribeError::EmptySubscription);
        }
        let topic = config.topic_name(topic);
        let receiver_queue = config.receiver_queue;
        let client = Client::new(config);
        let partitions = client.partitions(&topic).await?;
        let slots = if partitions == 0 {
            vec![(topic.clone(), None)]
        } else {
            (0..partitions)
                .map(|i| (format!("{topic}-partition-{i}"), None))
                .collect()
        };
        let (events_tx, events) = mpsc::unbounded_channel();
        let source = Self {
            client,
            topic,
            subscription: subscription.to_owned(),
            kind,
            consumer_name: format!("{subscription}-{}", std::process::id()),
            receiver_queue,
            events: tokio::sync::Mutex::new(events),
            events_tx,
            state: std::sync::Mutex::new(State {
                slots,
                ..State::default()
            }),
        };
        source.subscribe_missing().await?;
        Ok(source)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes every partition that has no live consumer.
    async fn subscribe_missing(&self) -> Result<(), PulsarError> {
        let missing: Vec<(usize, String)> = self
            .state()
            .slots
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| c.as_ref().is_none_or(|c| c.conn.is_closed()))
            .map(|(i, (topic, _))| (i, topic.clone()))
            .collect();
        for (slot, topic) in missing {
            let consumer = self.subscribe_one(&topic).await?;
            debug!(topic, consumer = consumer.id, "Pulsar consumer subscribed");
            self.state().slots[slot].1 = Some(consumer);
        }
        Ok(())
    }

    async fn subscribe_one(&self, topic: &str) -> Result<Consumer, PulsarError> {
        let conn = self.client.owner(topic).await?;
        let id = conn.next_handle_id();
        conn.register_consumer(id, self.events_tx.clone())?;
        let (sub_type, key_shared_meta) = match self.kind {
            Subscription::KeyShared => (
                SubType::KeyShared,
                Some(KeySharedMeta {
                    key_shared_mode: KeySharedMode::AutoSplit as i32,
                    ..Default::default()
                }),
            ),
            Subscription::Failover => (SubType::Failover, None),
        };
        let subscribed = conn
            .request("subscribe", |request_id| BaseCommand {
                r#type: Type::Subscribe as i32,
                subscribe: Some(CommandSubscribe {
                    topic: topic.to_owned(),
                    subscription: self.subscription.clone(),
                    sub_type: sub_type as i32,
                    consumer_id: id,
                    request_id,
                    consumer_name: Some(self.consumer_name.clone()),
                    durable: Some(true),
                    initial_position: Some(INITIAL_POSITION as i32),
                    key_shared_meta,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        if let Err(err) = subscribed {
            conn.forget_consumer(id);
            return Err(err);
        }
        conn.post(flow(id, self.receiver_queue));
        Ok(Consumer {
            conn,
            id,
            since_flow: 0,
        })
    }

    /// Turns one MESSAGE into deliveries (several for a batch entry) and queues them.
    fn accept(&self, delivery: Delivery) {
        let Delivery {
            consumer_id,
            command,
            metadata,
            payload,
        } = delivery;
        let mut state = self.state();
        let Some(slot) = state
            .slots
            .iter()
            .position(|(_, c)| c.as_ref().is_some_and(|c| c.id == consumer_id))
        else {
            // From a consumer we replaced: the broker delivers it again to the new one.
            return;
        };
        let topic = state.slots[slot].0.clone();
        {
            let Some(consumer) = state.slots[slot].1.as_mut() else {
                return;
            };
            consumer.since_flow += 1;
            if consumer.since_flow >= self.receiver_queue / 2 {
                consumer.conn.post(flow(consumer.id, consumer.since_flow));
                consumer.since_flow = 0;
            }
        }
        let messages = unpack(&metadata, payload);
        let entry = state.next_entry;
        state.next_entry += 1;
        state.entries.insert(
            entry,
            Entry {
                slot,
                consumer_id,
                id: command.message_id,
                unacked: messages.len() as u32,
            },
        );
        for (key, headers, payload) in messages {
            let offset = state.next_offset;
            state.next_offset += 1;
            state.delivered.insert(offset, entry);
            let lane = match (self.kind, &key) {
                (Subscription::KeyShared, Some(key)) => {
                    (murmur3_32(key.as_bytes()) & i32::MAX as u32) as i32
                }
                _ => slot as i32,
            };
            let mut message = IncomingMessage::new(topic.clone(), lane, offset, payload);
            message.key = key;
            message.headers = headers;
            state.ready.push_back(message);
        }
    }
}

/// A subscription could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] PulsarConfigError),
    /// The subscription (consumer group) name is empty.
    #[error("the subscription name is empty")]
    EmptySubscription,
    /// The broker refused or could not be reached.
    #[error(transparent)]
    Broker(#[from] PulsarError),
}

fn flow(consumer_id: u64, permits: u32) -> BaseCommand {
    BaseCommand {
        r#type: Type::Flow as i32,
        flow: Some(CommandFlow {
            consumer_id,
            message_permits: permits,
        }),
        ..Default::default()
    }
}

type Unpacked = (
    Option<String>,
    std::collections::BTreeMap<String, String>,
    Vec<u8>,
);

/// The messages of an entry: one, or each of a batch.
fn unpack(metadata: &MessageMetadata, payload: Bytes) -> Vec<Unpacked> {
    let properties = |kvs: &[crate::proto::KeyValue]| {
        kvs.iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let unreadable = |why: String| {
        let mut headers = properties(&metadata.properties);
        headers.remove(header::MESSAGE_ID);
        headers.insert(ERROR_HEADER.to_owned(), why);
        vec![(metadata.partition_key.clone(), headers, payload.to_vec())]
    };
    if metadata.compression.unwrap_or(0) != 0 {
        return unreadable(format!(
            "compressed with {:?}, which outbox-pulsar cannot read",
            metadata.compression()
        ));
    }
    let count = metadata.num_messages_in_batch.unwrap_or(1);
    if metadata.num_messages_in_batch.is_none() {
        return vec![(
            metadata.partition_key.clone(),
            properties(&metadata.properties),
            payload.to_vec(),
        )];
    }
    let mut rest = payload.clone();
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        if rest.len() < 4 {
            return unreadable("a batch entry ends early".into());
        }
        let len = rest.get_u32() as usize;
        if rest.len() < len {
            return unreadable("a batch entry ends early".into());
        }
        let Ok(single) = SingleMessageMetadata::decode(rest.split_to(len)) else {
            return unreadable("a batch entry holds malformed metadata".into());
        };
        let size = usize::try_from(single.payload_size).unwrap_or(usize::MAX);
        if rest.len() < size {
            return unreadable("a batch entry ends early".into());
        }
        let body = rest.split_to(size);
        out.push((
            single.partition_key.clone(),
            properties(&single.properties),
            body.to_vec(),
        ));
    }
    out
}

#[async_trait]
impl MessageSource for PulsarSource {
    async fn recv(&self) -> Result<IncomingMessage, ConsumeError> {
        let mut events = self.events.lock().await;
        loop {
            if let Some(message) = self.state().ready.pop_front() {
                return Ok(message);
            }
            self.subscribe_missing()
                .await
                .map_err(|e| ConsumeError::new("receive", e.to_string()))?;
            match events.recv().await {
                Some(ConsumerEvent::Message(delivery)) => self.accept(*delivery),
                Some(ConsumerEvent::Closed { consumer_id }) => {
                    let mut state = self.state();
                    for (topic, consumer) in &mut state.slots {
                        if consumer.as_ref().is_some_and(|c| c.id == consumer_id) {
                            warn!(topic, "Pulsar consumer closed; subscribing again");
                            *consumer = None;
                        }
                    }
                }
                None => return Err(ConsumeError::new("receive", "the source is closed")),
            }
        }
    }

    async fn ack(&self, delivery: &IncomingMessage) -> Result<(), ConsumeError> {
        let mut state = self.state();
        let entry_key = state.delivered.remove(&delivery.offset).ok_or_else(|| {
            ConsumeError::new(
                "ack",
                format!("offset {} was not delivered", delivery.offset),
            )
        })?;
        let Some(entry) = state.entries.get_mut(&entry_key) else {
            return Ok(());
        };
        entry.unacked = entry.unacked.saturating_sub(1);
        if entry.unacked > 0 {
            return Ok(());
        }
        let Some(entry) = state.entries.remove(&entry_key) else {
            return Ok(());
        };
        match &state.slots[entry.slot].1 {
            Some(consumer) if consumer.id == entry.consumer_id && !consumer.conn.is_closed() => {
                consumer.conn.post(BaseCommand {
                    r#type: Type::Ack as i32,
                    ack: Some(CommandAck {
                        consumer_id: entry.consumer_id,
                        ack_type: AckType::Individual as i32,
                        message_id: vec![MessageIdData {
                            ledger_id: entry.id.ledger_id,
                            entry_id: entry.id.entry_id,
                            partition: entry.id.partition,
                            ..MessageIdData::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                Ok(())
            }
            _ => Err(ConsumeError::new(
                "ack",
                "the consumer that received the message is gone; the broker delivers it again",
            )),
        }
    }

    async fn close(&self) -> Result<(), ConsumeError> {
        let consumers: Vec<Consumer> = self
            .state()
            .slots
            .iter_mut()
            .filter_map(|(_, c)| c.take())
            .collect();
        let mut failure = None;
        for consumer in consumers {
            let closed = consumer
                .conn
                .request("close consumer", |request_id| BaseCommand {
                    r#type: Type::CloseConsumer as i32,
                    close_consumer: Some(CommandCloseConsumer {
                        consumer_id: consumer.id,
                        request_id,
                    }),
                    ..Default::default()
                })
                .await;
            consumer.conn.forget_consumer(consumer.id);
            if let Err(err) = closed {
                failure = Some(err);
            }
        }
        self.client.shutdown().await;
        match failure {
            Some(err) => Err(ConsumeError::new("close", err.to_string())),
            None => Ok(()),
        }
    }
}
