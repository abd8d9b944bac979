//! Topic provisioning against the test broker, and the configuration checks.

use crate::{broker, unique_topic};
use outbox_domain::{Identifier, PersistenceStrategy, RouteRegistry, ServiceRoute, TopicName};
use outbox_kafka::{KafkaConfig, ProvisionError, Provisioning, TopicSpec, ensure_topics};
use std::num::NonZeroU32;

#[tokio::test]
async fn creates_missing_topics_and_verifies_existing_ones() {
    let config = broker();
    let (a, b) = (unique_topic("provision.a"), unique_topic("provision.b"));
    let specs = [
        TopicSpec::new(&a).with_partitions(4).with_replication(1),
        TopicSpec::new(&b).with_partitions(2),
    ];

    let missing = ensure_topics(&config, &specs, Provisioning::VerifyOnly).await;
    let Err(ProvisionError::Missing(names)) = missing else {
        panic!("expected Missing, got {missing:?}");
    };
    assert_eq!(names, [a.clone(), b.clone()]);
    assert!(
        ProvisionError::Missing(names)
            .to_string()
            .contains("enable topic provisioning")
    );

    let created = ensure_topics(&config, &specs, Provisioning::CreateMissing)
        .await
        .unwrap();
    assert_eq!(
        created
            .iter()
            .map(|t| (t.name.as_str(), t.partitions, t.replication, t.created))
            .collect::<Vec<_>>(),
        [(a.as_str(), 4, 1, true), (b.as_str(), 2, 1, true)]
    );

    // Again: both exist now, nothing is created, and verification alone passes.
    let again = ensure_topics(&config, &specs, Provisioning::CreateMissing)
        .await
        .unwrap();
    assert!(again.iter().all(|t| !t.created));
    ensure_topics(&config, &specs, Provisioning::VerifyOnly)
        .await
        .unwrap();

    let wrong = [TopicSpec::new(&a).with_partitions(8)];
    let err = ensure_topics(&config, &wrong, Provisioning::CreateMissing)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProvisionError::Mismatch {
            topic: a.clone(),
            setting: "partitions",
            expected: 8,
            actual: 4
        }
    );
}

#[tokio::test]
async fn bad_specs_and_an_unreachable_broker_are_clear_errors() {
    let config = broker();
    for bad in [
        TopicSpec::new("has space"),
        TopicSpec::new("ok.topic").with_partitions(0),
    ] {
        let err = ensure_topics(&config, &[bad], Provisioning::CreateMissing)
            .await
            .unwrap_err();
        assert!(matches!(err, ProvisionError::InvalidSpec { .. }), "{err:?}");
    }
    let mut down = KafkaConfig::new("127.0.0.1:1");
    down.request_timeout = std::time::Duration::from_secs(2);
    let err = ensure_topics(&down, &[TopicSpec::new("t")], Provisioning::VerifyOnly)
        .await
        .unwrap_err();
    assert!(matches!(err, ProvisionError::Broker(_)), "{err:?}");
    assert!(matches!(
        ensure_topics(&KafkaConfig::new(" "), &[], Provisioning::VerifyOnly).await,
        Err(ProvisionError::Config(_))
    ));
}

fn service(name: &str, topic: &str, partitions: Option<u32>) -> ServiceRoute {
    ServiceRoute {
        name: Identifier::parse("service", name).unwrap(),
        table: Identifier::parse("table", "outbox_messages").unwrap(),
        topic: TopicName::parse("topic", topic).unwrap(),
        consumer_group: TopicName::parse("group", name).unwrap(),
        strategy: PersistenceStrategy::DbAndPublish,
        topic_partitions: partitions.and_then(NonZeroU32::new),
        topic_replication: None,
    }
}

#[test]
fn specs_come_from_the_routes_and_conflicts_are_refused() {
    let routes = RouteRegistry::default()
        .with_service(service("orders", "orders.events", Some(6)))
        .unwrap()
        .with_service(service("billing", "orders.events", Some(6)))
        .unwrap()
        .with_service(service("audit", "audit.events", None))
        .unwrap();
    assert_eq!(
        TopicSpec::from_routes(&routes).unwrap(),
        [
            TopicSpec::new("audit.events"),
            TopicSpec::new("orders.events").with_partitions(6)
        ]
    );
    let conflicting = routes
        .with_service(service("refunds", "orders.events", Some(3)))
        .unwrap();
    assert!(matches!(
        TopicSpec::from_routes(&conflicting),
        Err(ProvisionError::ConflictingLayout { .. })
    ));
}

#[tokio::test]
async fn a_missing_topic_is_a_permanent_failure_of_its_messages_only() {
    use outbox_ports::Publisher;
    let mut config = broker();
    config.delivery_timeout = std::time::Duration::from_secs(3);
    let publisher = outbox_kafka::KafkaPublisher::new(config).unwrap();
    let missing = unique_topic("missing");
    let existing = unique_topic("existing");
    crate::create_topic(&broker(), &existing, 1).await;
    let message = |topic: &str| {
        outbox_domain::OutboxMessage::new(
            "orders",
            "order.created",
            topic,
            "k",
            outbox_domain::Payload::Json(serde_json::json!({})),
            chrono::Utc::now(),
        )
    };
    let outcomes = publisher
        .publish(&[message(&missing), message(&existing)])
        .await;
    let err = outcomes[0].clone().unwrap_err();
    assert_eq!(
        err.kind,
        outbox_ports::PublishErrorKind::Permanent,
        "{err:?}"
    );
    assert!(err.message.contains("UnknownTopic"), "{err:?}");
    assert!(outcomes[1].is_ok(), "the other message is unaffected");
}
