//! A scripted Pulsar broker for the unit tests: the parts of the protocol this crate
//! uses, with Apache Pulsar's deduplication rule (a sequence id at or below the
//! producer name's last one is acknowledged and dropped), token checks and injected
//! faults. pulsar-lite, the real broker the integration tests use, implements no
//! deduplication and cannot be made to drop a connection on cue, so these behaviours
//! are tested here. Consumers get every stored entry of their topic that is neither
//! acknowledged nor out with another consumer, as far as their permits reach; what a
//! lost connection had unacknowledged goes out again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

use crate::frame::{Codec, DEFAULT_MAX_FRAME, Frame};
use crate::proto::{
    self, BaseCommand, CommandConnected, CommandError, CommandLookupTopicResponse, CommandMessage,
    CommandPartitionedTopicMetadataResponse, CommandPong, CommandProducerSuccess,
    CommandSendReceipt, CommandSuccess, MessageIdData, MessageMetadata, ServerError,
    base_command::Type, command_lookup_topic_response::LookupType,
    command_partitioned_topic_metadata_response::LookupType as MetadataResult,
};

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) topic: String,
    pub(crate) producer: String,
    pub(crate) sequence_id: u64,
    pub(crate) key: Option<String>,
    pub(crate) payload: Vec<u8>,
    pub(crate) metadata: MessageMetadata,
}

impl Stored {
    /// An entry as a producer would have sent it (tests add batch or compressed ones).
    pub(crate) fn entry(topic: &str, metadata: MessageMetadata, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.to_owned(),
            producer: metadata.producer_name.clone(),
            sequence_id: metadata.sequence_id,
            key: metadata.partition_key.clone(),
            payload,
            metadata,
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) deduplication: bool,
    /// The `pulsar+ssl://` URL lookups answer with (a TLS proxy in front).
    pub(crate) tls_url: Option<String>,
    /// Required token, if any.
    pub(crate) token: Option<String>,
    pub(crate) stored: Vec<Stored>,
    /// (topic, producer name) → last persisted sequence id.
    pub(crate) last_sequence: HashMap<(String, String), i64>,
    /// Names of connected producers, per topic.
    pub(crate) connected: HashSet<(String, String)>,
    /// Store the next N messages, then drop the connection without a receipt.
    pub(crate) lose_receipts: u32,
    /// Ignore SEND frames (no store, no receipt) while set: a hung broker.
    pub(crate) swallow_sends: bool,
    /// After the next stored message, tell its producer the broker closed it.
    pub(crate) close_producer_after_store: bool,
    pub(crate) producers_created: u32,
    pub(crate) next_name: u32,
    /// Entries (by index into `stored`) acknowledged, per subscription.
    pub(crate) acked: HashSet<(String, usize)>,
    /// Entries out with a consumer: (subscription, entry) → connection.
    pub(crate) out: HashMap<(String, usize), u64>,
    /// Drop a consumer's connection once it has been sent this many messages.
    pub(crate) drop_consumer_after: Option<u32>,
    pub(crate) next_connection: u64,
}

/// A running test broker.
pub(crate) struct TestBroker {
    pub(crate) url: String,
    pub(crate) state: Arc<Mutex<State>>,
}

impl TestBroker {
    pub(crate) async fn start(state: State) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("pulsar://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let own_url = url.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, shared.clone(), own_url.clone()));
            }
        });
        Self { url, state }
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

fn command(r#type: Type, fill: impl FnOnce(&mut BaseCommand)) -> Frame {
    let mut command = BaseCommand {
        r#type: r#type as i32,
        ..Default::default()
    };
    fill(&mut command);
    Frame::command(command)
}

/// A consumer on one connection.
struct Consumer {
    topic: String,
    subscription: String,
    permits: u32,
    sent: u32,
}

/// What `consumer`'s permits allow it to be sent, and whether its connection must be
/// dropped after that (`drop_consumer_after`).
fn dispatch(
    s: &mut State,
    connection: u64,
    id: u64,
    consumer: &mut Consumer,
) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    for index in 0..s.stored.len() {
        if consumer.permits == 0 {
            break;
        }
        let position = (consumer.subscription.clone(), index);
        if s.stored[index].topic != consumer.topic
            || s.acked.contains(&position)
            || s.out.contains_key(&position)
        {
            continue;
        }
        if s.drop_consumer_after.is_some_and(|n| consumer.sent >= n) {
            s.drop_consumer_after = None;
            return (frames, true);
        }
        s.out.insert(position, connection);
        consumer.permits -= 1;
        consumer.sent += 1;
        let stored = &s.stored[index];
        let mut frame = command(Type::Message, |c| {
            c.message = Some(CommandMessage {
                consumer_id: id,
                message_id: MessageIdData {
                    ledger_id: 1,
                    entry_id: index as u64,
                    ..Default::default()
                },
                ..Default::default()
            })
        });
        frame.message = Some((stored.metadata.clone(), stored.payload.clone().into()));
        frames.push(frame);
    }
    (frames, false)
}

async fn serve(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>, url: String) {
    let mut framed = Framed::new(socket, Codec::new(DEFAULT_MAX_FRAME));
    // producer id → (topic, name), for this connection.
    let mut producers: HashMap<u64, (String, String)> = HashMap::new();
    let mut consumers: HashMap<u64, Consumer> = HashMap::new();
    let connection = {
        let mut s = state.lock().unwrap();
        s.next_connection += 1;
        s.next_connection
    };
    while let Some(Ok(frame)) = framed.next().await {
        let Frame {
            command: cmd,
            message,
        } = frame;
        let replies: (Vec<Frame>, bool) = {
            let mut s = state.lock().unwrap();
            let mut return_all = Vec::new();
            let mut drop_after = false;
            let reply = match cmd.r#type() {
                Type::Connect => {
                    let connect = cmd.connect.unwrap();
                    let token = connect.auth_data.map(|d| String::from_utf8(d).unwrap());
                    if s.token.is_some() && s.token != token {
                        Some(command(Type::Error, |c| {
                            c.error = Some(CommandError {
                                request_id: 0,
                                error: ServerError::AuthenticationError as i32,
                                message: "bad token".into(),
                            })
                        }))
                    } else {
                        Some(command(Type::Connected, |c| {
                            c.connected = Some(CommandConnected {
                                server_version: "test-broker".into(),
                                protocol_version: Some(15),
                                max_message_size: Some(1024 * 1024),
                            })
                        }))
                    }
                }
                Type::PartitionedMetadata => {
                    let request_id = cmd.partition_metadata.unwrap().request_id;
                    Some(command(Type::PartitionedMetadataResponse, |c| {
                        c.partition_metadata_response =
                            Some(CommandPartitionedTopicMetadataResponse {
                                partitions: Some(0),
                                request_id,
                                response: Some(MetadataResult::Success as i32),
                                ..Default::default()
                            })
                    }))
                }
                Type::Lookup => {
                    let request_id = cmd.lookup_topic.unwrap().request_id;
                    let url = url.clone();
                    Some(command(Type::LookupResponse, |c| {
                        c.lookup_topic_response = Some(CommandLookupTopicResponse {
                            broker_service_url: Some(url),
                            broker_service_url_tls: s.tls_url.clone(),
                            response: Some(LookupType::Connect as i32),
                            request_id,
                            authoritative: Some(true),
                            ..Default::default()
                        })
                    }))
                }
                Type::Producer => {
                    let p = cmd.producer.unwrap();
                    let name = p.producer_name.clone().unwrap_or_else(|| {
                        s.next_name += 1;
                        format!("generated-{}", s.next_name)
                    });
                    let key = (p.topic.clone(), name.clone());
                    if !s.connected.insert(key.clone()) {
                        Some(command(Type::Error, |c| {
                            c.error = Some(CommandError {
                                request_id: p.request_id,
                                error: ServerError::ProducerBusy as i32,
                                message: format!("producer {name} is already connected"),
                            })
                        }))
                    } else {
                        s.producers_created += 1;
                        producers.insert(p.producer_id, key.clone());
                        let last = if s.deduplication {
                            s.last_sequence.get(&key).copied().unwrap_or(-1)
                        } else {
                            -1
                        };
                        Some(command(Type::ProducerSuccess, |c| {
                            c.producer_success = Some(CommandProducerSuccess {
                                request_id: p.request_id,
                                producer_name: name,
                                last_sequence_id: Some(last),
                                ..Default::default()
                            })
                        }))
                    }
                }
                Type::Send if s.swallow_sends => None,
                Type::Send => {
                    let send = cmd.send.unwrap();
                    let (metadata, payload) = message.unwrap();
                    let key = producers[&send.producer_id].clone();
                    let last = s.last_sequence.get(&key).copied().unwrap_or(-1);
                    let duplicate =
                        s.deduplication && i64::try_from(send.sequence_id).unwrap() <= last;
                    let (ledger, entry) = if duplicate {
                        (u64::MAX, u64::MAX)
                    } else {
                        s.last_sequence
                            .insert(key.clone(), i64::try_from(send.sequence_id).unwrap());
                        s.stored
                            .push(Stored::entry(&key.0, metadata, payload.to_vec()));
                        (1, s.stored.len() as u64)
                    };
                    if s.lose_receipts > 0 && !duplicate {
                        s.lose_receipts -= 1;
                        break; // drop the connection: the receipt is lost
                    }
                    if s.close_producer_after_store && !duplicate {
                        s.close_producer_after_store = false;
                        s.connected.remove(&key);
                        producers.remove(&send.producer_id);
                        Some(command(Type::CloseProducer, |c| {
                            c.close_producer = Some(proto::CommandCloseProducer {
                                producer_id: send.producer_id,
                                request_id: 0,
                            })
                        }))
                    } else {
                        Some(command(Type::SendReceipt, |c| {
                            c.send_receipt = Some(CommandSendReceipt {
                                producer_id: send.producer_id,
                                sequence_id: send.sequence_id,
                                message_id: Some(MessageIdData {
                                    ledger_id: ledger,
                                    entry_id: entry,
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                        }))
                    }
                }
                Type::CloseProducer => {
                    let close = cmd.close_producer.unwrap();
                    if let Some(key) = producers.remove(&close.producer_id) {
                        s.connected.remove(&key);
                    }
                    Some(command(Type::Success, |c| {
                        c.success = Some(CommandSuccess {
                            request_id: close.request_id,
                            ..Default::default()
                        })
                    }))
                }
                Type::Subscribe => {
                    let sub = cmd.subscribe.unwrap();
                    consumers.insert(
                        sub.consumer_id,
                        Consumer {
                            topic: sub.topic,
                            subscription: sub.subscription,
                            permits: 0,
                            sent: 0,
                        },
                    );
                    Some(command(Type::Success, |c| {
                        c.success = Some(CommandSuccess {
                            request_id: sub.request_id,
                            schema: None,
                        })
                    }))
                }
                Type::Flow => {
                    let flow = cmd.flow.unwrap();
                    let Some(consumer) = consumers.get_mut(&flow.consumer_id) else {
                        continue;
                    };
                    consumer.permits += flow.message_permits;
                    let (frames, hang_up) =
                        dispatch(&mut s, connection, flow.consumer_id, consumer);
                    return_all = frames;
                    drop_after = hang_up;
                    None
                }
                Type::Ack => {
                    let ack = cmd.ack.unwrap();
                    if let Some(consumer) = consumers.get(&ack.consumer_id) {
                        for id in ack.message_id {
                            let position = (consumer.subscription.clone(), id.entry_id as usize);
                            s.out.remove(&position);
                            s.acked.insert(position);
                        }
                    }
                    None
                }
                Type::CloseConsumer => {
                    let close = cmd.close_consumer.unwrap();
                    consumers.remove(&close.consumer_id);
                    s.out.retain(|_, c| *c != connection);
                    Some(command(Type::Success, |c| {
                        c.success = Some(CommandSuccess {
                            request_id: close.request_id,
                            schema: None,
                        })
                    }))
                }
                Type::Ping => Some(command(Type::Pong, |c| c.pong = Some(CommandPong {}))),
                _ => None,
            };
            return_all.extend(reply);
            (return_all, drop_after)
        };
        let (replies, hang_up) = replies;
        let mut failed = false;
        for reply in replies {
            failed |= framed.send(reply).await.is_err();
        }
        if failed || hang_up {
            break;
        }
    }
    let mut s = state.lock().unwrap();
    for key in producers.values() {
        s.connected.remove(key);
    }
    // What this connection's consumers had unacknowledged goes out again.
    s.out.retain(|_, c| *c != connection);
}
