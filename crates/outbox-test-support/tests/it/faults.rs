use outbox_domain::{OutboxMessage, Payload};
use outbox_ports::{ClaimRequest, MessageStore, PublishErrorKind, Publisher, StoreError};
use outbox_test_support::{
    FaultyPublisher, FaultyStore, InMemoryPublisher, InMemoryStore, StoreOp,
};
use std::time::Duration;

fn msg(key: &str) -> OutboxMessage {
    OutboxMessage::new(
        "s",
        "e",
        "t",
        key,
        Payload::Json(serde_json::json!({})),
        chrono::Utc::now(),
    )
}

#[tokio::test]
async fn faulty_publisher_fails_per_message_and_forwards_the_rest() {
    let broker = InMemoryPublisher::new();
    let p = FaultyPublisher::new(broker.clone());
    p.fail_key("bad", PublishErrorKind::Permanent, None)
        .fail_times(1, PublishErrorKind::Transient);
    let batch = [msg("bad"), msg("a"), msg("b"), msg("bad")];
    let out = p.publish(&batch).await;
    assert!(matches!(&out[0], Err(e) if !e.is_transient()));
    assert!(
        matches!(&out[1], Err(e) if e.is_transient()),
        "fail_times hits the next message"
    );
    assert!(out[2].is_ok());
    assert!(out[3].is_err());
    assert_eq!(
        broker.messages().iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![batch[2].id]
    );
    p.heal();
    assert!(p.publish(&batch).await.iter().all(Result::is_ok));
    assert_eq!(p.messages_seen(), 8);
}

#[tokio::test]
async fn faulty_publisher_key_rule_heals_after_n_times() {
    let p = FaultyPublisher::new(InMemoryPublisher::new());
    p.fail_key("k", PublishErrorKind::Transient, Some(2));
    let results: Vec<bool> = futures_results(&p, 3).await;
    assert_eq!(results, [false, false, true]);
}

async fn futures_results(p: &FaultyPublisher<InMemoryPublisher>, n: usize) -> Vec<bool> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(p.publish(&[msg("k")]).await[0].is_ok());
    }
    out
}

#[tokio::test]
async fn faulty_store_fails_the_chosen_operation_without_touching_the_inner_store() {
    let store = FaultyStore::new(InMemoryStore::new());
    store.fail_next(StoreOp::Enqueue, 1);
    let err = store.enqueue(vec![msg("k")]).await.expect_err("injected");
    assert!(matches!(err, StoreError::Unavailable(_)) && err.is_retryable());
    assert_eq!(store.inner().stats().await.unwrap().pending, 0);
    store.enqueue(vec![msg("k")]).await.unwrap();
    store.fail_next(StoreOp::Claim, 1);
    let req = ClaimRequest {
        owner: "r".into(),
        limit: 1,
        lease_for: Duration::from_secs(1),
        now: chrono::Utc::now(),
    };
    assert!(store.claim(&req).await.is_err());
    assert_eq!(store.claim(&req).await.unwrap().len(), 1);
}
