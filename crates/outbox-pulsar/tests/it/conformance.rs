//! The publisher conformance suite against the test broker, read back with the
//! official client.

use crate::{PythonReader, broker, unique_topic};
use outbox_pulsar::PulsarPublisher;

outbox_test_support::publisher_conformance_tests!(|case: &'static str| async move {
    (
        PulsarPublisher::new(broker()).unwrap(),
        PythonReader,
        unique_topic(case),
    )
});

/// With the defaults, a publish call ends (with an outcome per message) before the
/// relay's own publish timeout would fail the batch as a whole.
#[test]
fn default_publish_time_fits_the_relays_publish_timeout() {
    let config = outbox_pulsar::PulsarConfig::new("pulsar://127.0.0.1:1").unwrap();
    let publisher = PulsarPublisher::new(config).unwrap();
    let relay = outbox_runtime::RelayConfig::default();
    assert!(
        publisher.max_publish_time() < relay.publish_timeout,
        "{:?} >= {:?}",
        publisher.max_publish_time(),
        relay.publish_timeout
    );
}
