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
