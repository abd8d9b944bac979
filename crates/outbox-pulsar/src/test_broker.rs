//! A scripted Pulsar broker for the unit tests: the parts of the protocol this crate
//! uses, with Apache Pulsar's deduplication rule (a sequence id at or below the
//! producer name's last one is acknowledged and dropped), token checks and injected
//! faults. pulsar-lite, the real broker the integration tests use, implements no
//! deduplication, so these behaviours are tested here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

use crate::frame::{Codec, DEFAULT_MAX_FRAME, Frame};
use crate::proto::{
    self, BaseCommand, CommandConnected, CommandError, CommandLookupTopicResponse,
    CommandPartitionedTopicMetadataResponse, CommandPong, CommandProducerSuccess,
    CommandSendReceipt, CommandSuccess, MessageIdData, ServerError, base_command::Type,
    command_lookup_topic_response::LookupType,
    command_partitioned_topic_metadata_response::LookupType as MetadataResult,
};

/// One stored message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) topic: String,
    pub(crate) producer: String,
    pub(crate) sequence_id: u64,
    pub(crate) key: Option<String>,
    pub(crate) payload: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) deduplication: bool,
    /// Required token, if any.
    pub(crate) token: Option<String>,
    pub(crate) stored: Vec<Stored>,
    /// (topic, producer name) → last persisted sequence id.
    pub(crate) last_sequence: HashMap<(String, String), i64>,
    /// Names of connected producers, per topic.
    pub(crate) connected: HashSet<(String, String)>,
    /// Store the next N messages, then drop the connection without a receipt.
    pub(crate) lose_receipts: u32,
    /// After the next stored message, tell its producer the broker closed it.
    pub(crate) close_producer_after_store: bool,
    pub(crate) producers_created: u32,
    pub(crate) next_name: u32,
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

async fn serve(socket: tokio::net::TcpStream, state: Arc<Mutex<State>>, url: String) {
    let mut framed = Framed::new(socket, Codec::new(DEFAULT_MAX_FRAME));
    // producer id → (topic, name), for this connection.
    let mut producers: HashMap<u64, (String, String)> = HashMap::new();
    while let Some(Ok(frame)) = framed.next().await {
        let Frame {
            command: cmd,
            message,
        } = frame;
        let reply = {
            let mut s = state.lock().unwrap();
            match cmd.r#type() {
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
                        s.stored.push(Stored {
                            topic: key.0.clone(),
                            producer: metadata.producer_name,
                            sequence_id: send.sequence_id,
                            key: metadata.partition_key,
                            payload: payload.to_vec(),
                        });
                        (1, s.stored.len() as u64)
                    };
                    if s.lose_receipts > 0 && !duplicate {
                        s.lose_receipts -= 1;
                        for key in producers.values() {
                            s.connected.remove(key);
                        }
                        return; // drop the connection: the receipt is lost
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
                Type::Ping => Some(command(Type::Pong, |c| c.pong = Some(CommandPong {}))),
                _ => None,
            }
        };
        if let Some(reply) = reply
            && framed.send(reply).await.is_err()
        {
            break;
        }
    }
    let mut s = state.lock().unwrap();
    for key in producers.values() {
        s.connected.remove(key);
    }
}
