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

/// With the defaults, a publish call ends (with an outcome per message) before the
/// relay's own publish timeout would fail the batch as a whole.
#[test]
fn default_publish_time_fits_the_relays_publish_timeout() {
    let publisher = KafkaPublisher::new(outbox_kafka::KafkaConfig::new("127.0.0.1:1")).unwrap();
    let relay = outbox_runtime::RelayConfig::default();
    assert!(
        publisher.max_publish_time() < relay.publish_timeout,
        "{:?} >= {:?}",
        publisher.max_publish_time(),
        relay.publish_timeout
    );
}
