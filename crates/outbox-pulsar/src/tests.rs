//! The publisher against the scripted broker: deduplication, lost receipts, a
//! producer the broker closes, token authentication.

use chrono::Utc;
use outbox_domain::{Lease, LeaseToken, OutboxMessage, Payload};
use outbox_ports::{ClaimedMessage, PublishErrorKind, Publisher};

use crate::test_broker::{State, TestBroker};
use crate::{Deduplication, PulsarConfig, PulsarPublisher};

fn claimed(seq: u64, key: &str, body: &str) -> ClaimedMessage {
    ClaimedMessage {
        seq,
        message: OutboxMessage::new(
            "orders",
            "order.changed",
            "orders",
            key,
            Payload::Bytes {
                content_type: "text/plain".into(),
                data: body.as_bytes().to_vec(),
            },
            Utc::now(),
        ),
        lease: Lease {
            owner: "relay".into(),
            token: LeaseToken::from_uuid(uuid::Uuid::new_v4()),
            expires_at: Utc::now(),
        },
        attempts: 1,
        max_attempts: 5,
    }
}

fn config(broker: &TestBroker, deduplication: Deduplication) -> PulsarConfig {
    let mut config = PulsarConfig::new(&broker.url).unwrap();
    config.deduplication = deduplication;
    config.send_timeout = std::time::Duration::from_secs(5);
    config
}

fn per_key() -> Deduplication {
    Deduplication::PerKey {
        prefix: "shop".into(),
    }
}

async fn publish_one(
    publisher: &PulsarPublisher,
    c: &ClaimedMessage,
) -> Result<(), PublishErrorKind> {
    let mut outcomes = publisher.publish_claimed(std::slice::from_ref(c)).await;
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).map_err(|e| e.kind)
}

/// The crash case: the broker stored the message but its receipt was lost, so the
/// relay sends it again. With per-key sequence ids the broker holds one copy.
#[tokio::test]
async fn per_key_sequence_ids_keep_a_resend_after_a_lost_receipt_out() {
    let broker = TestBroker::start(State {
        deduplication: true,
        lose_receipts: 1,
        ..State::default()
    })
    .await;
    let publisher = PulsarPublisher::new(config(&broker, per_key())).unwrap();
    let message = claimed(7, "order-1", "first");
    assert_eq!(
        publish_one(&publisher, &message).await,
        Err(PublishErrorKind::Transient),
        "a lost receipt is a transient failure"
    );
    assert_eq!(publish_one(&publisher, &message).await, Ok(()));
    let stored = broker.state().stored.clone();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].producer, "shop/orders/order-1");
    assert_eq!(stored[0].sequence_id, 7);
    assert_eq!(stored[0].key.as_deref(), Some("order-1"));

    // The key's next message goes through.
    assert_eq!(
        publish_one(&publisher, &claimed(9, "order-1", "second")).await,
        Ok(())
    );
    assert_eq!(broker.state().stored.len(), 2);
}

/// Without per-key sequence ids, the same resend is stored twice (the consumers'
/// inbox absorbs it): the reason `Deduplication::PerKey` exists.
#[tokio::test]
async fn session_sequence_ids_store_a_resend_twice() {
    let broker = TestBroker::start(State {
        deduplication: true,
        lose_receipts: 1,
        ..State::default()
    })
    .await;
    let publisher = PulsarPublisher::new(config(&broker, Deduplication::Off)).unwrap();
    let message = claimed(7, "order-1", "first");
    assert!(publish_one(&publisher, &message).await.is_err());
    assert_eq!(publish_one(&publisher, &message).await, Ok(()));
    assert_eq!(broker.state().stored.len(), 2);
}

/// A position below the key's last one (a replayed dead message, a recreated table)
/// would be dropped by the broker; it is sent without deduplication instead.
#[tokio::test]
async fn a_lower_position_than_the_keys_last_is_still_delivered() {
    let broker = TestBroker::start(State {
        deduplication: true,
        ..State::default()
    })
    .await;
    let publisher = PulsarPublisher::new(config(&broker, per_key())).unwrap();
    assert_eq!(
        publish_one(&publisher, &claimed(9, "k", "later")).await,
        Ok(())
    );
    assert_eq!(
        publish_one(&publisher, &claimed(5, "k", "replayed")).await,
        Ok(())
    );
    let stored = broker.state().stored.clone();
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].payload, b"replayed");
    assert_ne!(
        stored[1].producer, "shop/orders/k",
        "sent by the session producer"
    );
}

/// Two relays take turns on one key: each closes its producer before settling, so
/// the name is free for the next (no ProducerBusy), and other keys use other names.
#[tokio::test]
async fn relays_taking_turns_on_a_key_and_keys_in_parallel() {
    let broker = TestBroker::start(State {
        deduplication: true,
        ..State::default()
    })
    .await;
    let first = PulsarPublisher::new(config(&broker, per_key())).unwrap();
    let second = PulsarPublisher::new(config(&broker, per_key())).unwrap();
    assert_eq!(publish_one(&first, &claimed(1, "k", "1")).await, Ok(()));
    assert_eq!(publish_one(&second, &claimed(2, "k", "2")).await, Ok(()));
    let batch: Vec<_> = (0..20)
        .map(|n| claimed(10 + n, &format!("key-{n}"), "x"))
        .collect();
    let outcomes = first.publish_claimed(&batch).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(broker.state().stored.len(), 22);
}

/// The send timeout cuts a keyed send short (the broker hangs): the key's producer is
/// still closed, so the retry can take its name instead of meeting ProducerBusy.
#[tokio::test]
async fn a_timed_out_keyed_send_frees_the_keys_name() {
    let broker = TestBroker::start(State {
        deduplication: true,
        swallow_sends: true,
        ..State::default()
    })
    .await;
    let mut config = config(&broker, per_key());
    config.send_timeout = std::time::Duration::from_millis(300);
    let publisher = PulsarPublisher::new(config).unwrap();
    let message = claimed(3, "k", "x");
    assert_eq!(
        publish_one(&publisher, &message).await,
        Err(PublishErrorKind::Transient)
    );
    broker.state().swallow_sends = false;
    assert_eq!(publish_one(&publisher, &message).await, Ok(()));
    assert_eq!(broker.state().stored.len(), 1);
}

/// Plain `publish` (no claim, so no position) uses the session producer even with
/// `PerKey`; sequence ids count up from the broker's last one for it.
#[tokio::test]
async fn publish_without_claims_uses_the_session_producer() {
    let broker = TestBroker::start(State {
        deduplication: true,
        ..State::default()
    })
    .await;
    let publisher = PulsarPublisher::new(config(&broker, per_key())).unwrap();
    let batch: Vec<_> = (0..3)
        .map(|n| claimed(0, &format!("k{n}"), "x").message)
        .collect();
    let outcomes = publisher.publish(&batch).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let stored = broker.state().stored.clone();
    let mut ids: Vec<_> = stored.iter().map(|s| s.sequence_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![0, 1, 2]);
    assert!(stored.iter().all(|s| s.producer == stored[0].producer));
}

/// The broker closes the producer (a topic unload) with a message unacknowledged:
/// that message fails transiently and the next publish creates a new producer.
#[tokio::test]
async fn a_producer_the_broker_closes_is_replaced() {
    let broker = TestBroker::start(State {
        close_producer_after_store: true,
        ..State::default()
    })
    .await;
    let publisher = PulsarPublisher::new(config(&broker, Deduplication::Off)).unwrap();
    let message = claimed(1, "k", "x");
    assert_eq!(
        publish_one(&publisher, &message).await,
        Err(PublishErrorKind::Transient)
    );
    assert_eq!(publish_one(&publisher, &message).await, Ok(()));
    assert_eq!(broker.state().producers_created, 2);
}

#[tokio::test]
async fn token_authentication() {
    let broker = TestBroker::start(State {
        token: Some("s3cret".into()),
        ..State::default()
    })
    .await;
    let without = PulsarPublisher::new(config(&broker, Deduplication::Off)).unwrap();
    assert_eq!(
        publish_one(&without, &claimed(1, "k", "x")).await,
        Err(PublishErrorKind::Permanent),
        "a refused credential is permanent"
    );
    let with =
        PulsarPublisher::new(config(&broker, Deduplication::Off).with_token("s3cret")).unwrap();
    assert_eq!(publish_one(&with, &claimed(1, "k", "x")).await, Ok(()));
    assert_eq!(broker.state().stored.len(), 1);
}

#[tokio::test]
async fn an_unreachable_broker_is_a_transient_failure_for_each_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("pulsar://{}", listener.local_addr().unwrap());
    drop(listener);
    let publisher = PulsarPublisher::new(PulsarConfig::new(&url).unwrap()).unwrap();
    let batch: Vec<_> = (0..3).map(|n| claimed(n, "k", "x").message).collect();
    let outcomes = publisher.publish(&batch).await;
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes
            .iter()
            .all(|o| o.as_ref().is_err_and(|e| e.is_transient()))
    );
}

mod source {
    use std::time::Duration;

    use outbox_ports::{IncomingMessage, MessageSource, Publisher, header};
    use prost::Message as _;

    use super::{claimed, config};
    use crate::proto::{CompressionType, KeyValue, MessageMetadata, SingleMessageMetadata};
    use crate::test_broker::{State, Stored, TestBroker};
    use crate::{Deduplication, ERROR_HEADER, PulsarPublisher, PulsarSource, Subscription};

    const TOPIC: &str = "persistent://public/default/orders";

    async fn recv(source: &PulsarSource) -> IncomingMessage {
        tokio::time::timeout(Duration::from_secs(5), source.recv())
            .await
            .expect("a message arrives")
            .unwrap()
    }

    fn body(m: &IncomingMessage) -> String {
        String::from_utf8_lossy(&m.payload).into_owned()
    }

    /// The connection drops after three deliveries, none acknowledged: the source
    /// subscribes again and the broker sends them again, in order; acknowledging a
    /// delivery of the lost consumer fails (the broker redelivers it anyway).
    #[tokio::test]
    async fn a_lost_connection_resubscribes_and_gets_the_unacknowledged_again() {
        let broker = TestBroker::start(State::default()).await;
        let publisher = PulsarPublisher::new(config(&broker, Deduplication::Off)).unwrap();
        let batch: Vec<_> = (0..4)
            .map(|n| claimed(n, "k", &format!("m{n}")).message)
            .collect();
        for m in &batch {
            // One by one, so the entries are stored in this order.
            assert!(publisher.publish(std::slice::from_ref(m)).await[0].is_ok());
        }
        broker.state().drop_consumer_after = Some(3);

        let source = PulsarSource::subscribe(
            config(&broker, Deduplication::Off),
            "orders",
            "group",
            Subscription::Failover,
        )
        .await
        .unwrap();
        let mut got = vec![recv(&source).await];
        while body(got.last().unwrap()) != "m3" {
            got.push(recv(&source).await);
        }
        let bodies: Vec<_> = got.iter().map(body).collect();
        // Before the loss: a prefix of the topic. (Deliveries of the lost consumer
        // still queued are dropped, not handed out.) After it: everything again.
        let again = bodies.iter().rposition(|b| b == "m0").unwrap();
        assert!(again > 0, "the messages came again: {bodies:?}");
        assert_eq!(bodies[again..], ["m0", "m1", "m2", "m3"], "{bodies:?}");
        assert!(
            bodies[..again]
                .iter()
                .zip(["m0", "m1", "m2"])
                .all(|(b, w)| b == w),
            "{bodies:?}"
        );
        assert!(source.ack(&got[0]).await.is_err(), "its consumer is gone");
        for m in &got[again..] {
            source.ack(m).await.unwrap();
        }
        source.close().await.unwrap();
        assert_eq!(broker.state().acked.len(), 4);
    }

    fn single(key: &str, id: &str, payload: &[u8]) -> Vec<u8> {
        let metadata = SingleMessageMetadata {
            properties: vec![KeyValue {
                key: header::MESSAGE_ID.into(),
                value: id.into(),
            }],
            partition_key: Some(key.into()),
            payload_size: payload.len() as i32,
            ..Default::default()
        };
        let mut out = (metadata.encoded_len() as u32).to_be_bytes().to_vec();
        out.extend(metadata.encode_to_vec());
        out.extend_from_slice(payload);
        out
    }

    /// Another client's batch entry: split into its messages, each with its own key
    /// and properties; the entry is acknowledged once all of them are.
    #[tokio::test]
    async fn batch_entries_are_split_and_acknowledged_once_all_are() {
        let broker = TestBroker::start(State::default()).await;
        let mut payload = Vec::new();
        for (key, body) in [("a", "x"), ("b", "y"), ("c", "z")] {
            payload.extend(single(key, &format!("id-{key}"), body.as_bytes()));
        }
        let metadata = MessageMetadata {
            producer_name: "java".into(),
            num_messages_in_batch: Some(3),
            ..Default::default()
        };
        broker
            .state()
            .stored
            .push(Stored::entry(TOPIC, metadata, payload));

        let source = PulsarSource::subscribe(
            config(&broker, Deduplication::Off),
            "orders",
            "group",
            Subscription::KeyShared,
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(recv(&source).await);
        }
        let keys: Vec<_> = got.iter().map(|m| m.key.clone().unwrap()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["x", "y", "z"]);
        assert_eq!(got[1].headers[header::MESSAGE_ID], "id-b");
        assert_ne!(got[0].partition, got[1].partition, "lanes follow the keys");

        source.ack(&got[0]).await.unwrap();
        source.ack(&got[2]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            broker.state().acked.is_empty(),
            "one message still unhandled"
        );
        source.ack(&got[1]).await.unwrap();
        source.close().await.unwrap();
        assert_eq!(broker.state().acked.len(), 1);
    }

    /// A compressed entry cannot be read: it arrives without its outbox id (so the
    /// runner parks it) and says why.
    #[tokio::test]
    async fn compressed_entries_arrive_without_their_id() {
        let broker = TestBroker::start(State::default()).await;
        let metadata = MessageMetadata {
            producer_name: "java".into(),
            properties: vec![KeyValue {
                key: header::MESSAGE_ID.into(),
                value: "some-id".into(),
            }],
            partition_key: Some("k".into()),
            compression: Some(CompressionType::Lz4 as i32),
            ..Default::default()
        };
        broker
            .state()
            .stored
            .push(Stored::entry(TOPIC, metadata, b"\x04\x22".to_vec()));
        let source = PulsarSource::subscribe(
            config(&broker, Deduplication::Off),
            "orders",
            "group",
            Subscription::KeyShared,
        )
        .await
        .unwrap();
        let m = recv(&source).await;
        assert_eq!(m.message_id(), None);
        assert!(m.headers[ERROR_HEADER].contains("Lz4"), "{:?}", m.headers);
        source.close().await.unwrap();
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use outbox_ports::{PublishErrorKind, Publisher as _};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::{claimed, publish_one};
    use crate::test_broker::{State, TestBroker};
    use crate::{PulsarConfig, PulsarPublisher};

    /// A private CA, and a TLS proxy with its certificate for `localhost` in front of
    /// a scripted broker; returns the proxy's URL and the CA in PEM.
    async fn tls_broker() -> (TestBroker, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let server = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "pulsar+ssl://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let broker = TestBroker::start(State {
            tls_url: Some(url.clone()),
            ..State::default()
        })
        .await;
        let plain = broker.url.trim_start_matches("pulsar://").to_owned();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let plain = plain.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut upstream = TcpStream::connect(plain).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        (broker, url, ca.pem())
    }

    #[tokio::test]
    async fn tls_with_a_private_ca() {
        let (broker, url, ca) = tls_broker().await;
        let dir = std::env::temp_dir().join(format!("outbox-pulsar-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca).unwrap();

        let mut config = PulsarConfig::new(&url).unwrap();
        config.tls_ca_file = Some(ca_file.clone());
        let publisher = PulsarPublisher::new(config).unwrap();
        assert_eq!(publish_one(&publisher, &claimed(1, "k", "x")).await, Ok(()));
        assert_eq!(broker.state().stored.len(), 1);

        // Without the private CA, the certificate is not trusted.
        let untrusting = PulsarPublisher::new(PulsarConfig::new(&url).unwrap()).unwrap();
        let outcome = untrusting.publish_claimed(&[claimed(2, "k", "y")]).await;
        let error = outcome[0].as_ref().unwrap_err();
        assert!(error.message.contains("certificate"), "{error}");

        // A CA file that cannot be read says which.
        let mut config = PulsarConfig::new(&url).unwrap();
        config.tls_ca_file = Some(dir.join("missing.pem"));
        let misconfigured = PulsarPublisher::new(config).unwrap();
        let outcome = misconfigured.publish_claimed(&[claimed(3, "k", "z")]).await;
        let error = outcome[0].as_ref().unwrap_err();
        assert!(error.message.contains("missing.pem"), "{error}");
        assert_eq!(error.kind, PublishErrorKind::Transient);
        assert_eq!(broker.state().stored.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
