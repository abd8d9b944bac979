//! One TCP (or TLS) connection to one broker, shared by the producers and consumers
//! on it.
//!
//! A single task owns the socket: it writes what the handles queue, answers pings,
//! pings after `keep_alive` of silence, and routes what arrives: responses by request
//! id, send receipts by (producer, sequence id), messages by consumer id. When the
//! connection ends, every waiter gets a [`PulsarError::Connection`] and every
//! consumer a [`ConsumerEvent::Closed`]; the owner then opens a new connection.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use crate::config::{PulsarConfig, ServiceUrl};
use crate::error::PulsarError;
use crate::frame::{Codec, DEFAULT_MAX_FRAME, Frame};
use crate::proto::{
    self, BaseCommand, CommandAuthResponse, CommandConnect, CommandPing, CommandPong,
    CommandSendError, CommandSendReceipt, FeatureFlags, MessageMetadata, base_command::Type,
};

/// The protocol version we speak: 15 has everything this client uses, and brokers
/// answer newer clients in the older dialect anyway.
const PROTOCOL_VERSION: i32 = 15;

/// A MESSAGE frame.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) consumer_id: u64,
    pub(crate) command: proto::CommandMessage,
    pub(crate) metadata: MessageMetadata,
    pub(crate) payload: Bytes,
}

/// What a consumer receives.
#[derive(Debug)]
pub(crate) enum ConsumerEvent {
    /// A MESSAGE frame for this consumer.
    Message(Box<Delivery>),
    /// The broker closed the consumer (topic moved, unloaded) or the connection ended:
    /// subscribe again.
    Closed { consumer_id: u64 },
}

type Receipt = Result<CommandSendReceipt, CommandSendError>;

/// What the handles queue for the connection task.
enum Outgoing {
    /// Boxed: a `BaseCommand` has a field for every command, some 5 KB.
    Frame(Box<Frame>),
    /// Close the socket.
    Shutdown,
}

#[derive(Default)]
struct Routes {
    requests: HashMap<u64, oneshot::Sender<BaseCommand>>,
    receipts: HashMap<(u64, u64), oneshot::Sender<Receipt>>,
    consumers: HashMap<u64, mpsc::UnboundedSender<ConsumerEvent>>,
    /// Producers the broker closed: their sends fail until they are recreated.
    closed_producers: HashSet<u64>,
}

struct Shared {
    url: String,
    ids: AtomicU64,
    routes: Mutex<Routes>,
    closed: AtomicBool,
    close_reason: Mutex<String>,
}

impl Shared {
    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost(&self) -> PulsarError {
        let reason = self
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        PulsarError::Connection {
            url: self.url.clone(),
            message: if reason.is_empty() {
                "the connection is closed".to_owned()
            } else {
                reason
            },
        }
    }
}

/// A handle on a broker connection; cheap to clone.
#[derive(Clone)]
pub(crate) struct Connection {
    out: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    operation_timeout: Duration,
    /// The broker's `max_message_size`, from CONNECTED.
    max_message_size: usize,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Connection {
    /// Connects to `url` (the physical broker), or through the proxy at `url` to
    /// `proxy_to` (a broker URL from a lookup), and completes the handshake.
    pub(crate) async fn connect(
        config: &PulsarConfig,
        url: &ServiceUrl,
        proxy_to: Option<&str>,
    ) -> Result<Self, PulsarError> {
        let name = url.to_string();
        let lost = |message: String| PulsarError::Connection {
            url: name.clone(),
            message,
        };
        let timeout = config.operation_timeout;
        let setup = async {
            let tcp = TcpStream::connect((url.host.as_str(), url.port))
                .await
                .map_err(|e| lost(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if url.tls {
                tls::wrap(config, &url.host, tcp).await.map_err(lost)?
            } else {
                Box::new(tcp)
            };
            let mut framed = Framed::new(io, Codec::new(DEFAULT_MAX_FRAME));
            let connect = BaseCommand {
                r#type: Type::Connect as i32,
                connect: Some(CommandConnect {
                    client_version: concat!("outbox-pulsar/", env!("CARGO_PKG_VERSION")).into(),
                    auth_method_name: config.token.as_ref().map(|_| "token".to_owned()),
                    auth_data: config.token.as_ref().map(|t| t.as_bytes().to_vec()),
                    protocol_version: Some(PROTOCOL_VERSION),
                    proxy_to_broker_url: proxy_to.map(str::to_owned),
                    feature_flags: Some(FeatureFlags::default()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            framed
                .send(Frame::command(connect))
                .await
                .map_err(|e| lost(e.to_string()))?;
            loop {
                let frame = framed
                    .next()
                    .await
                    .ok_or_else(|| lost("closed during the handshake".into()))?
                    .map_err(|e| lost(e.to_string()))?;
                let command = frame.command;
                if let Some(connected) = command.connected {
                    let max = connected
                        .max_message_size
                        .and_then(|m| usize::try_from(m).ok())
                        .unwrap_or(5 * 1024 * 1024);
                    return Ok((framed, max));
                }
                if command.auth_challenge.is_some() {
                    // Token authentication: the same token answers every challenge.
                    let response = BaseCommand {
                        r#type: Type::AuthResponse as i32,
                        auth_response: Some(CommandAuthResponse {
                            client_version: Some("outbox-pulsar".into()),
                            response: Some(proto::AuthData {
                                auth_method_name: Some("token".into()),
                                auth_data: config.token.as_ref().map(|t| t.as_bytes().to_vec()),
                            }),
                            protocol_version: Some(PROTOCOL_VERSION),
                        }),
                        ..Default::default()
                    };
                    framed
                        .send(Frame::command(response))
                        .await
                        .map_err(|e| lost(e.to_string()))?;
                    continue;
                }
                if let Some(error) = command.error {
                    return Err(PulsarError::Server {
                        operation: "connect",
                        code: error.error(),
                        message: error.message,
                    });
                }
                return Err(PulsarError::Protocol {
                    operation: "connect",
                    message: format!("unexpected {:?} during the handshake", command.r#type()),
                });
            }
        };
        let (framed, max_message_size) =
            tokio::time::timeout(timeout, setup)
                .await
                .map_err(|_| PulsarError::Timeout {
                    operation: "connect",
                    after: timeout,
                })??;

        let (out, queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            url: name,
            ids: AtomicU64::new(0),
            routes: Mutex::new(Routes::default()),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(String::new()),
        });
        tokio::spawn(run(
            framed,
            queue,
            out.clone(),
            shared.clone(),
            config.keep_alive,
        ));
        Ok(Self {
            out,
            shared,
            operation_timeout: timeout,
            max_message_size,
        })
    }

    /// The broker's URL.
    pub(crate) fn url(&self) -> &str {
        &self.shared.url
    }

    /// Whether the connection ended; a closed connection is replaced, not reused.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// The largest message (metadata and payload) the broker accepts.
    pub(crate) fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// A fresh request id.
    pub(crate) fn next_id(&self) -> u64 {
        self.shared.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh producer or consumer id, unique in this process and random across
    /// processes.
    ///
    /// The protocol scopes these ids to a connection, so 0, 1, 2… on each would do;
    /// but pulsar-lite keys a subscription's consumers by id alone, and refuses (by
    /// closing the connection) a second consumer with an id already subscribed from
    /// *another* connection: "Consumer 0 already exists in key-shared dispatcher".
    /// That is the failure the `pulsar` crate meets when it reconnects. Ids that no
    /// other client uses keep clear of it (docs/pulsar.md).
    pub(crate) fn next_handle_id(&self) -> u64 {
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| {
            use std::hash::{BuildHasher as _, Hasher as _};
            // Randomly keyed per process; the high half makes the ids of two
            // processes differ.
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                & !u64::from(u32::MAX)
        });
        base | (NEXT.fetch_add(1, Ordering::Relaxed) & u64::from(u32::MAX))
    }

    /// Queues a frame that expects no answer (FLOW, ACK, CLOSE_*).
    pub(crate) fn post(&self, command: BaseCommand) {
        let _ = self
            .out
            .send(Outgoing::Frame(Box::new(Frame::command(command))));
    }

    /// Sends the request built by `build` (given a fresh request id) and waits for
    /// its answer; an ERROR answer becomes [`PulsarError::Server`].
    pub(crate) async fn request(
        &self,
        operation: &'static str,
        build: impl FnOnce(u64) -> BaseCommand,
    ) -> Result<BaseCommand, PulsarError> {
        let request_id = self.next_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = self.shared.routes();
            if self.is_closed() {
                return Err(self.shared.lost());
            }
            routes.requests.insert(request_id, tx);
        }
        let _ = self
            .out
            .send(Outgoing::Frame(Box::new(Frame::command(build(request_id)))));
        let answer = match tokio::time::timeout(self.operation_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(self.shared.lost()),
            Err(_) => {
                self.shared.routes().requests.remove(&request_id);
                return Err(PulsarError::Timeout {
                    operation,
                    after: self.operation_timeout,
                });
            }
        };
        if let Some(error) = answer.error {
            return Err(PulsarError::Server {
                operation,
                code: error.error(),
                message: error.message,
            });
        }
        Ok(answer)
    }

    /// Sends a message for `producer_id`; the receiver yields the broker's receipt or
    /// send error, or closes when the connection or the producer goes away.
    pub(crate) fn send_message(
        &self,
        producer_id: u64,
        metadata: MessageMetadata,
        payload: Bytes,
    ) -> Result<oneshot::Receiver<Receipt>, PulsarError> {
        let sequence_id = metadata.sequence_id;
        let (tx, rx) = oneshot::channel();
        {
            let mut routes = self.shared.routes();
            if self.is_closed() {
                return Err(self.shared.lost());
            }
            if routes.closed_producers.contains(&producer_id) {
                return Err(PulsarError::Connection {
                    url: self.shared.url.clone(),
                    message: "the broker closed the producer".into(),
                });
            }
            routes.receipts.insert((producer_id, sequence_id), tx);
        }
        let command = BaseCommand {
            r#type: Type::Send as i32,
            send: Some(proto::CommandSend {
                producer_id,
                sequence_id,
                num_messages: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        };
        let _ = self.out.send(Outgoing::Frame(Box::new(Frame {
            command,
            message: Some((metadata, payload)),
        })));
        Ok(rx)
    }

    /// Whether the broker closed this producer (it must be created again).
    pub(crate) fn producer_closed(&self, producer_id: u64) -> bool {
        self.is_closed() || self.shared.routes().closed_producers.contains(&producer_id)
    }

    /// Routes MESSAGE frames for `consumer_id` to `events`.
    pub(crate) fn register_consumer(
        &self,
        consumer_id: u64,
        events: mpsc::UnboundedSender<ConsumerEvent>,
    ) -> Result<(), PulsarError> {
        let mut routes = self.shared.routes();
        if self.is_closed() {
            return Err(self.shared.lost());
        }
        routes.consumers.insert(consumer_id, events);
        Ok(())
    }

    /// Stops routing to `consumer_id`.
    pub(crate) fn forget_consumer(&self, consumer_id: u64) {
        self.shared.routes().consumers.remove(&consumer_id);
    }

    /// Closes the socket; waiters fail with a connection error.
    pub(crate) fn shutdown(&self, reason: &str) {
        let mut current = self
            .shared
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if current.is_empty() {
            *current = reason.to_owned();
        }
        drop(current);
        let _ = self.out.send(Outgoing::Shutdown);
    }
}

/// The connection task. Ends when the socket does, on a protocol error, after
/// `2 * keep_alive` of silence, or on [`Connection::shutdown`].
async fn run(
    mut framed: Framed<Box<dyn Io>, Codec>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    out: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    keep_alive: Duration,
) {
    let mut ticker = tokio::time::interval(keep_alive);
    ticker.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            incoming = framed.next() => match incoming {
                Some(Ok(frame)) => {
                    last_heard = tokio::time::Instant::now();
                    dispatch(frame, &shared, &out);
                }
                Some(Err(err)) => break err.to_string(),
                None => break "the broker closed the connection".to_owned(),
            },
            outgoing = queue.recv() => match outgoing {
                Some(Outgoing::Frame(frame)) => {
                    if let Err(err) = write_queued(&mut framed, *frame, &mut queue).await {
                        break err;
                    }
                }
                Some(Outgoing::Shutdown) | None => break String::new(),
            },
            _ = ticker.tick() => {
                if last_heard.elapsed() >= keep_alive * 2 {
                    break format!("no answer from the broker for {:?}", keep_alive * 2);
                }
                let ping = BaseCommand {
                    r#type: Type::Ping as i32,
                    ping: Some(CommandPing {}),
                    ..Default::default()
                };
                if let Err(err) = framed.send(Frame::command(ping)).await {
                    break err.to_string();
                }
            }
        }
    };
    {
        let mut current = shared
            .close_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if current.is_empty() {
            *current = if reason.is_empty() {
                "the connection was shut down".to_owned()
            } else {
                reason.clone()
            };
        }
    }
    // Mark closed under the routes lock, so no waiter registers after the drain.
    let routes = {
        let mut routes = shared.routes();
        shared.closed.store(true, Ordering::Release);
        std::mem::take(&mut *routes)
    };
    if !reason.is_empty() {
        tracing::warn!(url = %shared.url, %reason, "Pulsar connection lost");
    }
    for (consumer_id, events) in routes.consumers {
        let _ = events.send(ConsumerEvent::Closed { consumer_id });
    }
    // Dropping the senders wakes every request and receipt waiter with an error.
}

/// Writes `first` and everything queued behind it, then flushes once. A shutdown
/// request in the queue is put back for the loop to see.
async fn write_queued(
    framed: &mut Framed<Box<dyn Io>, Codec>,
    first: Frame,
    queue: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> Result<(), String> {
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        framed.feed(frame).await.map_err(|e| e.to_string())?;
        match queue.try_recv() {
            Ok(Outgoing::Frame(frame)) => next = Some(*frame),
            Ok(Outgoing::Shutdown) => {
                framed.flush().await.map_err(|e| e.to_string())?;
                return Err(String::new());
            }
            Err(_) => {}
        }
    }
    framed.flush().await.map_err(|e| e.to_string())
}

fn dispatch(frame: Frame, shared: &Shared, out: &mpsc::UnboundedSender<Outgoing>) {
    let Frame { command, message } = frame;
    match command.r#type() {
        Type::Ping => {
            let pong = BaseCommand {
                r#type: Type::Pong as i32,
                pong: Some(CommandPong {}),
                ..Default::default()
            };
            let _ = out.send(Outgoing::Frame(Box::new(Frame::command(pong))));
        }
        Type::Pong => {}
        Type::SendReceipt => {
            if let Some(receipt) = command.send_receipt {
                let key = (receipt.producer_id, receipt.sequence_id);
                if let Some(waiter) = shared.routes().receipts.remove(&key) {
                    let _ = waiter.send(Ok(receipt));
                }
            }
        }
        Type::SendError => {
            if let Some(error) = command.send_error {
                let key = (error.producer_id, error.sequence_id);
                if let Some(waiter) = shared.routes().receipts.remove(&key) {
                    let _ = waiter.send(Err(error));
                }
            }
        }
        Type::Message => {
            let (Some(msg), Some((metadata, payload))) = (command.message, message) else {
                return;
            };
            let consumer_id = msg.consumer_id;
            if let Some(events) = shared.routes().consumers.get(&consumer_id) {
                let _ = events.send(ConsumerEvent::Message(Box::new(Delivery {
                    consumer_id,
                    command: msg,
                    metadata,
                    payload,
                })));
            }
        }
        Type::CloseProducer => {
            if let Some(close) = command.close_producer {
                let mut routes = shared.routes();
                routes.closed_producers.insert(close.producer_id);
                // Its unacknowledged sends will get no receipt: fail them now.
                routes
                    .receipts
                    .retain(|(producer, _), _| *producer != close.producer_id);
            }
        }
        Type::CloseConsumer => {
            if let Some(close) = command.close_consumer {
                let consumer_id = close.consumer_id;
                if let Some(events) = shared.routes().consumers.remove(&consumer_id) {
                    let _ = events.send(ConsumerEvent::Closed { consumer_id });
                }
            }
        }
        _ => {
            if let Some(request_id) = request_id(&command)
                && let Some(waiter) = shared.routes().requests.remove(&request_id)
            {
                let _ = waiter.send(command);
            }
        }
    }
}

/// The request id an answer refers to.
fn request_id(command: &BaseCommand) -> Option<u64> {
    command
        .success
        .as_ref()
        .map(|c| c.request_id)
        .or_else(|| command.error.as_ref().map(|c| c.request_id))
        .or_else(|| command.producer_success.as_ref().map(|c| c.request_id))
        .or_else(|| command.lookup_topic_response.as_ref().map(|c| c.request_id))
        .or_else(|| {
            command
                .partition_metadata_response
                .as_ref()
                .map(|c| c.request_id)
        })
        .or_else(|| command.ack_response.as_ref().and_then(|c| c.request_id))
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    use super::Io;
    use crate::config::PulsarConfig;

    /// TLS over `tcp`, trusting the Mozilla roots and `tls_ca_file`'s certificates,
    /// checking that the certificate names `host`.
    pub(super) async fn wrap(
        config: &PulsarConfig,
        host: &str,
        tcp: TcpStream,
    ) -> Result<Box<dyn Io>, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &config.tls_ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("could not read tls_ca_file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "tls_ca_file {} holds no certificate",
                    path.display()
                ));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
        let stream = TlsConnector::from(Arc::new(client))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Ok(Box::new(stream))
    }
}

#[cfg(not(feature = "tls"))]
mod tls {
    use tokio::net::TcpStream;

    use super::Io;
    use crate::config::PulsarConfig;

    pub(super) async fn wrap(
        _: &PulsarConfig,
        _: &str,
        _: TcpStream,
    ) -> Result<Box<dyn Io>, String> {
        Err("pulsar+ssl:// needs outbox-pulsar's `tls` feature".into())
    }
}
