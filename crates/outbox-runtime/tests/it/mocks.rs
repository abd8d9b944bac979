use super::msg;
use outbox_domain::MessageStatus;
use outbox_ports::{Clock, MessageStore, MockPublisher};
use outbox_runtime::{Relay, RelayConfig};
use outbox_test_support::{InMemoryStore, ManualClock};
use std::sync::Arc;

/// A publisher that breaks its contract by returning fewer outcomes than messages must
/// not make the relay mark the unanswered messages published.
#[tokio::test]
async fn missing_outcomes_count_as_transient_failures() {
    let clock = ManualClock::fixed();
    let store = InMemoryStore::new();
    let (a, b) = (msg("a", 0, clock.now()), msg("b", 0, clock.now()));
    store.enqueue(vec![a.clone(), b.clone()]).await.unwrap();

    let mut publisher = MockPublisher::new();
    publisher
        .expect_publish_claimed()
        .times(1)
        .returning(|batch| {
            assert_eq!(batch.len(), 2);
            assert!(batch[0].seq < batch[1].seq, "claims carry the write order");
            vec![Ok(())]
        });
    let relay = Relay::new(
        Arc::new(store.clone()),
        Arc::new(publisher),
        RelayConfig::default(),
    )
    .unwrap()
    .with_clock(Arc::new(clock.clone()));
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.published, report.retried), (1, 1));
    assert_eq!(
        store.get(a.id).await.unwrap().unwrap().delivery.status,
        MessageStatus::Published
    );
    let b = store.get(b.id).await.unwrap().unwrap();
    assert_eq!(b.delivery.status, MessageStatus::Pending);
    assert!(
        b.delivery
            .last_error
            .unwrap()
            .as_str()
            .contains("no outcome")
    );
}
