//! The publisher conformance suite against the test broker.

use crate::{KafkaReader, broker, create_topic, unique_topic};
use outbox_kafka::KafkaPublisher;

outbox_test_support::publisher_conformance_tests!(|case: &'static str| async move {
    let config = broker();
    let topic = unique_topic(case);
    create_topic(&config, &topic, 3).await;
    (
        KafkaPublisher::new(config.clone()).unwrap(),
        KafkaReader(config),
        topic,
    )
});
