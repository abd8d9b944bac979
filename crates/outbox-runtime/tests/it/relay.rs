use super::{msg, order_by_key};
use outbox_domain::{BackoffPolicy, MessageStatus};
use outbox_ports::{ClaimRequest, Clock, ListFilter, MessageStore, PublishErrorKind};
use outbox_runtime::{CancellationToken, ConfigError, Relay, RelayConfig, RelayHandle};
use outbox_test_support::{
    FaultyPublisher, FaultyStore, InMemoryPublisher, InMemoryStore, ManualClock, StoreOp,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn config(batch_size: usize) -> RelayConfig {
    let mut c = RelayConfig::default();
    c.relay_id = "test-relay".into();
    c.batch_size = batch_size;
    c.poll_interval = Duration::from_millis(10);
    c.sweep_interval = Duration::from_millis(20);
    c.backoff = BackoffPolicy::new(Duration::from_secs(1), 2.0, Duration::from_secs(8), 5).unwrap();
    c
}

struct Harness {
    clock: ManualClock,
    store: InMemoryStore,
    broker: InMemoryPublisher,
    publisher: FaultyPublisher<InMemoryPublisher>,
    relay: Relay,
}

fn harness(batch_size: usize, max_attempts: u32) -> Harness {
    let clock = ManualClock::fixed();
    let store = InMemoryStore::with_max_attempts(max_attempts);
    let broker = InMemoryPublisher::new();
    let publisher = FaultyPublisher::new(broker.clone());
    let relay = Relay::new(
        Arc::new(store.clone()),
        Arc::new(publisher.clone()),
        config(batch_size),
    )
    .unwrap()
    .with_clock(Arc::new(clock.clone()))
    .with_seed(7);
    Harness {
        clock,
        store,
        broker,
        publisher,
        relay,
    }
}

async fn status(store: &InMemoryStore, m: &outbox_domain::OutboxMessage) -> MessageStatus {
    store.get(m.id).await.unwrap().unwrap().delivery.status
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_until_published() {
    let h = harness(10, 5);
    let m = msg("k", 0, h.clock.now());
    h.store.enqueue(vec![m.clone()]).await.unwrap();
    h.publisher.fail_times(2, PublishErrorKind::Transient);

    let r = h.relay.run_once().await.unwrap();
    assert_eq!((r.claimed, r.retried), (1, 1));
    let stored = h.store.get(m.id).await.unwrap().unwrap();
    assert_eq!(
        stored.delivery.next_attempt_at,
        h.clock.now() + chrono::Duration::seconds(1),
        "1 s after attempt 1"
    );

    assert_eq!(
        h.relay.run_once().await.unwrap().claimed,
        0,
        "backoff not over"
    );
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(h.relay.run_once().await.unwrap().retried, 1);
    let stored = h.store.get(m.id).await.unwrap().unwrap();
    assert_eq!(
        stored.delivery.next_attempt_at,
        h.clock.now() + chrono::Duration::seconds(2),
        "2 s after attempt 2"
    );

    h.clock.advance(Duration::from_secs(2));
    assert_eq!(h.relay.run_once().await.unwrap().published, 1);
    assert_eq!(status(&h.store, &m).await, MessageStatus::Published);
    assert_eq!(h.broker.messages(), vec![m]);
}

#[tokio::test]
async fn permanent_failure_is_dead_at_once_and_exhausted_retries_die_too() {
    let h = harness(10, 2);
    let poison = msg("poison", 0, h.clock.now());
    let flaky = msg("flaky", 0, h.clock.now());
    h.store
        .enqueue(vec![poison.clone(), flaky.clone()])
        .await
        .unwrap();
    h.publisher
        .fail_key("poison", PublishErrorKind::Permanent, None);
    h.publisher
        .fail_key("flaky", PublishErrorKind::Transient, None);

    let r = h.relay.run_once().await.unwrap();
    assert_eq!((r.dead, r.retried), (1, 1));
    assert_eq!(status(&h.store, &poison).await, MessageStatus::Dead);
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(
        h.relay.run_once().await.unwrap().dead,
        1,
        "second of two attempts fails for good"
    );
    let dead = h.store.get(flaky.id).await.unwrap().unwrap();
    assert_eq!(dead.delivery.status, MessageStatus::Dead);
    assert!(
        dead.delivery
            .last_error
            .unwrap()
            .as_str()
            .contains("attempts exhausted")
    );
    assert!(h.broker.is_empty());

    // An operator replays the dead letters once the cause is fixed.
    h.publisher.heal();
    assert_eq!(
        h.store
            .replay_dead(&[poison.id, flaky.id], h.clock.now())
            .await
            .unwrap(),
        2
    );
    assert_eq!(h.relay.run_once().await.unwrap().published, 2);
}

#[tokio::test]
async fn per_key_order_survives_retries_of_a_head() {
    let h = harness(4, 10);
    let now = h.clock.now();
    let mut written = Vec::new();
    for n in 0..6 {
        for key in ["a", "b", "c"] {
            written.push(msg(key, n, now));
        }
    }
    h.store.enqueue(written.clone()).await.unwrap();
    // Key a's head fails three times; b fails every other time.
    h.publisher
        .fail_key("a", PublishErrorKind::Transient, Some(3));
    h.publisher.fail_every(2);

    for _ in 0..200 {
        let r = h.relay.run_once().await.unwrap();
        if r.claimed == 0 {
            if h.store.stats().await.unwrap().unfinished() == 0 {
                break;
            }
            h.clock.advance(Duration::from_secs(10));
        }
    }
    assert_eq!(
        h.store.stats().await.unwrap().published,
        written.len() as u64
    );
    let got = order_by_key(&h.broker.messages());
    assert_eq!(
        got,
        order_by_key(&written),
        "each key arrives in write order, exactly once"
    );
}

#[tokio::test]
async fn a_parked_key_does_not_hold_back_other_keys() {
    let h = harness(10, 10);
    let now = h.clock.now();
    let stuck: Vec<_> = (0..3).map(|n| msg("stuck", n, now)).collect();
    let free: Vec<_> = (0..3).map(|n| msg("free", n, now)).collect();
    h.store
        .enqueue(stuck.iter().chain(&free).cloned().collect())
        .await
        .unwrap();
    h.publisher
        .fail_key("stuck", PublishErrorKind::Transient, None);

    for _ in 0..3 {
        h.relay.run_once().await.unwrap();
    }
    let published: Vec<_> = h.broker.messages().iter().map(|m| m.id).collect();
    assert_eq!(published, free.iter().map(|m| m.id).collect::<Vec<_>>());
    assert_eq!(
        status(&h.store, &stuck[1]).await,
        MessageStatus::Pending,
        "behind the parked head"
    );
}

#[tokio::test]
async fn a_crashed_relays_lease_expires_and_the_message_is_delivered() {
    let h = harness(10, 5);
    let m = msg("k", 0, h.clock.now());
    h.store.enqueue(vec![m.clone()]).await.unwrap();
    // Another relay claims the message and dies without settling.
    let req = ClaimRequest {
        owner: "crashed".into(),
        limit: 10,
        lease_for: Duration::from_secs(30),
        now: h.clock.now(),
    };
    assert_eq!(h.store.claim(&req).await.unwrap().len(), 1);

    assert_eq!(h.relay.sweep_once().await.unwrap(), 0);
    assert_eq!(h.relay.run_once().await.unwrap().claimed, 0);
    h.clock.advance(Duration::from_secs(30));
    assert_eq!(h.relay.sweep_once().await.unwrap(), 1);
    assert_eq!(h.relay.run_once().await.unwrap().published, 1);
    assert_eq!(h.broker.messages(), vec![m]);
}

#[tokio::test]
async fn store_outages_are_ridden_out() {
    let clock = ManualClock::fixed();
    let store = FaultyStore::new(InMemoryStore::new());
    let broker = InMemoryPublisher::new();
    let relay = Relay::new(
        Arc::new(store.clone()),
        Arc::new(broker.clone()),
        config(10),
    )
    .unwrap()
    .with_clock(Arc::new(clock.clone()));
    let m = msg("k", 0, clock.now());
    store.enqueue(vec![m.clone()]).await.unwrap();

    store.fail_next(StoreOp::Claim, 1);
    assert!(
        relay.run_once().await.is_err(),
        "a failed claim is reported"
    );
    // Settlement fails twice, then is retried and recorded: the outcome is not lost.
    store.fail_next(StoreOp::Settle, 2);
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(status(store.inner(), &m).await, MessageStatus::Published);
    assert_eq!(broker.len(), 1, "published exactly once");
}

#[tokio::test]
async fn notify_wakes_an_idle_relay_at_once() {
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();
    let mut cfg = config(10);
    cfg.poll_interval = Duration::from_secs(3600);
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(broker.clone()), cfg).unwrap();
    let handle = relay.spawn(CancellationToken::new());
    tokio::time::sleep(Duration::from_millis(50)).await; // let it go idle

    store
        .enqueue(vec![msg("k", 0, chrono::Utc::now())])
        .await
        .unwrap();
    handle.notify();
    let got = broker.read_from(0, 10, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "woken long before the hour-long poll");
    assert!(handle.shutdown().await);
}

/// A running relay whose poll backs off from 5 ms to an hour: only its adaptive poll,
/// not the poll interval, can find work in a test's lifetime.
fn adaptive_relay() -> (InMemoryStore, InMemoryPublisher, RelayHandle) {
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();
    let mut cfg = config(10);
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.min_poll_interval = Duration::from_millis(5);
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(broker.clone()), cfg).unwrap();
    let handle = relay.spawn(CancellationToken::new());
    (store, broker, handle)
}

/// After work, a relay polls again within milliseconds, doubling up to its poll
/// interval: new work is noticed without a wake (the fallback where no cross-process
/// wake exists); an idle relay is back at the long interval.
#[tokio::test]
async fn a_busy_relay_polls_fast_without_a_wake() {
    let (store, broker, handle) = adaptive_relay();
    tokio::time::sleep(Duration::from_millis(50)).await; // idle, the poll backing off
    store
        .enqueue(vec![msg("k", 0, chrono::Utc::now())])
        .await
        .unwrap();
    handle.notify();
    assert_eq!(
        broker.read_from(0, 10, Duration::from_secs(10)).await.len(),
        1
    );
    // No wake this time: the adaptive poll finds it.
    store
        .enqueue(vec![msg("k", 1, chrono::Utc::now())])
        .await
        .unwrap();
    let got = broker.read_from(1, 10, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        1,
        "found by the short poll after work, not the hour-long one"
    );
    assert!(handle.shutdown().await);
}

/// A relay that starts with nothing to do backs off from `min_poll_interval`, not from
/// `poll_interval`: started while writers are busy (and without a wake), it does not
/// stay blind for a whole poll interval.
#[tokio::test]
async fn a_relay_started_idle_finds_new_work_without_a_wake() {
    let (store, broker, handle) = adaptive_relay();
    tokio::time::sleep(Duration::from_millis(2)).await; // the first claim found nothing
    store
        .enqueue(vec![msg("k", 0, chrono::Utc::now())])
        .await
        .unwrap();
    assert_eq!(
        broker.read_from(0, 10, Duration::from_secs(10)).await.len(),
        1,
        "found by the adaptive poll, not after the hour-long one"
    );
    assert!(handle.shutdown().await);
}

/// Shutdown with several batches in flight (16 keys, batches of 4, the default pipeline
/// depth of 4): every one of them is published and settled before the relay stops.
#[tokio::test]
async fn shutdown_drains_the_batches_in_flight_without_loss_or_double_publish() {
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();
    let slow = FaultyPublisher::new(broker.clone());
    slow.delay(Duration::from_millis(300));
    let now = chrono::Utc::now();
    let written: Vec<_> = (0..80)
        .map(|n| msg(&format!("k{}", n % 16), n / 16, now))
        .collect();
    store.enqueue(written.clone()).await.unwrap();

    let relay = Relay::new(Arc::new(store.clone()), Arc::new(slow.clone()), config(4)).unwrap();
    let handle = relay.spawn(CancellationToken::new());
    while slow.messages_seen() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(handle.shutdown().await, "drained within the timeout");

    let in_flight = store
        .list(&ListFilter::status(MessageStatus::InFlight, 100))
        .await
        .unwrap();
    assert!(
        in_flight.is_empty(),
        "every claimed message was settled before stopping"
    );
    let published = store.stats().await.unwrap().published;
    assert!(
        (16..written.len() as u64).contains(&published),
        "stopped part way, after every batch of the first four: {published}"
    );
    assert_eq!(
        broker.len() as u64,
        published,
        "the broker has exactly what the store marked"
    );

    // A new relay finishes the rest; nothing is lost and nothing is sent twice.
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(broker.clone()), config(8)).unwrap();
    let handle = relay.spawn(CancellationToken::new());
    broker
        .read_from(written.len() - 1, 1, Duration::from_secs(10))
        .await;
    assert!(handle.shutdown().await);
    let ids: Vec<_> = broker.messages().iter().map(|m| m.id).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no duplicates"
    );
    assert_eq!(ids.len(), written.len(), "no loss");
    assert_eq!(order_by_key(&broker.messages()), order_by_key(&written));
}

/// A publisher that records the keys of every batch handed to it, then holds the batch
/// until [`open`](Self::open), then passes it on to the broker.
#[derive(Clone)]
struct Gate {
    broker: InMemoryPublisher,
    entered: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Gate {
    fn closed(broker: InMemoryPublisher) -> Self {
        Self {
            broker,
            entered: Arc::default(),
            open: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    /// The keys of each batch that reached the publisher, in arrival order.
    fn entered(&self) -> Vec<Vec<String>> {
        self.entered.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) until `n` batches have reached the publisher.
    async fn wait_for_batches(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.entered().len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {:?} reached the publisher",
                self.entered()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[async_trait::async_trait]
impl outbox_ports::Publisher for Gate {
    async fn publish(
        &self,
        batch: &[outbox_domain::OutboxMessage],
    ) -> Vec<outbox_ports::PublishOutcome> {
        let keys = batch.iter().map(|m| m.partition_key.clone()).collect();
        self.entered.lock().unwrap().push(keys);
        let mut open = self.open.subscribe();
        open.wait_for(|open| *open).await.unwrap();
        self.broker.publish(batch).await
    }

    async fn flush(&self, timeout: Duration) -> Result<(), outbox_ports::PublishError> {
        self.broker.flush(timeout).await
    }
}

fn gated_relay(store: &InMemoryStore, gate: &Gate, batch_size: usize, depth: usize) -> RelayHandle {
    let mut cfg = config(batch_size);
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.pipeline_depth = depth;
    // A held batch must not time out and free the pipeline within a test.
    cfg.publish_timeout = Duration::from_secs(600);
    cfg.lease = Duration::from_secs(1200);
    Relay::new(Arc::new(store.clone()), Arc::new(gate.clone()), cfg)
        .unwrap()
        .spawn(CancellationToken::new())
}

/// A claim loop claims the next batch while earlier ones are at the broker, up to
/// `pipeline_depth` batches, and no further until one of them settles.
#[tokio::test]
async fn a_claim_loop_keeps_up_to_its_pipeline_depth_of_batches_in_flight() {
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();
    let now = chrono::Utc::now();
    let written: Vec<_> = (0..12).map(|n| msg(&format!("k{n}"), 0, now)).collect();
    store.enqueue(written.clone()).await.unwrap();
    let gate = Gate::closed(broker.clone());
    let handle = gated_relay(&store, &gate, 4, 2);

    gate.wait_for_batches(2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gate.entered().iter().map(Vec::len).collect::<Vec<_>>(),
        [4, 4],
        "two full batches in flight, the third waits for one of them"
    );
    gate.open();
    broker.read_from(11, 1, Duration::from_secs(10)).await;
    assert!(handle.shutdown().await);
    assert_eq!(broker.len(), written.len(), "each message once");
}

/// The latency the pipeline exists for: a message committed while a batch is at the
/// broker is claimed and published at once, not after that batch settles. A message of
/// a key whose earlier message is still in flight waits for it (per-key order).
#[tokio::test]
async fn a_message_committed_while_a_batch_publishes_is_claimed_at_once() {
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();
    let gate = Gate::closed(broker.clone());
    let handle = gated_relay(&store, &gate, 10, 4);
    tokio::time::sleep(Duration::from_millis(20)).await; // idle

    let now = chrono::Utc::now();
    let first = msg("a", 0, now);
    store.enqueue(vec![first.clone()]).await.unwrap();
    handle.notify();
    gate.wait_for_batches(1).await;

    let other_key = msg("b", 0, now);
    let same_key = msg("a", 1, now);
    store
        .enqueue(vec![same_key.clone(), other_key.clone()])
        .await
        .unwrap();
    handle.notify();
    gate.wait_for_batches(2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gate.entered(),
        [vec!["a".to_owned()], vec!["b".to_owned()]],
        "b claimed while a's batch publishes; a's next message waits for it"
    );

    gate.open();
    broker.read_from(2, 1, Duration::from_secs(10)).await;
    assert!(handle.shutdown().await);
    let written = [first, same_key, other_key];
    assert_eq!(broker.len(), written.len());
    assert_eq!(order_by_key(&broker.messages()), order_by_key(&written));
}

/// After a claim that found nothing while batches are in flight, commits do not make
/// the loop claim again (what is due belongs to the keys those batches hold); the
/// batch settling does.
#[tokio::test]
async fn wakes_do_not_repeat_an_empty_claim_while_batches_are_in_flight() {
    let store = FaultyStore::new(InMemoryStore::new());
    let broker = InMemoryPublisher::new();
    let gate = Gate::closed(broker.clone());
    let mut cfg = config(10);
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.min_poll_interval = Duration::from_secs(3600);
    cfg.publish_timeout = Duration::from_secs(600);
    cfg.lease = Duration::from_secs(1200);
    let handle = Relay::new(Arc::new(store.clone()), Arc::new(gate.clone()), cfg)
        .unwrap()
        .spawn(CancellationToken::new());

    let now = chrono::Utc::now();
    let written = [msg("a", 0, now), msg("a", 1, now)];
    store.enqueue(vec![written[0].clone()]).await.unwrap();
    handle.notify();
    gate.wait_for_batches(1).await;
    // The second message waits behind the first, in flight.
    store.enqueue(vec![written[1].clone()]).await.unwrap();
    for _ in 0..20 {
        handle.notify();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let claims = store.calls(StoreOp::Claim);
    assert!(
        claims <= 4,
        "{claims} claims: one per wake would be over twenty"
    );

    gate.open();
    broker.read_from(1, 1, Duration::from_secs(10)).await;
    assert!(handle.shutdown().await);
    assert_eq!(order_by_key(&broker.messages()), order_by_key(&written));
}

#[tokio::test]
async fn with_a_batch_in_flight_its_settling_not_the_poll_paces_the_claims() {
    let store = FaultyStore::new(InMemoryStore::new());
    let broker = InMemoryPublisher::new();
    let gate = Gate::closed(broker.clone());
    let mut cfg = config(10);
    cfg.min_poll_interval = Duration::from_millis(1);
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.publish_timeout = Duration::from_secs(600);
    cfg.lease = Duration::from_secs(1200);
    let handle = Relay::new(Arc::new(store.clone()), Arc::new(gate.clone()), cfg)
        .unwrap()
        .spawn(CancellationToken::new());

    let written = msg("a", 0, chrono::Utc::now());
    store.enqueue(vec![written.clone()]).await.unwrap();
    handle.notify();
    gate.wait_for_batches(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let claims = store.calls(StoreOp::Claim);
    assert!(
        claims <= 2,
        "{claims} claims: polling from 1 ms up while the batch publishes would be about 8"
    );

    gate.open();
    broker.read_from(0, 1, Duration::from_secs(10)).await;
    assert!(handle.shutdown().await);
}

#[tokio::test]
async fn claims_ahead_that_come_back_short_back_off() {
    // One key and batches of one: every batch is full, and every claim made ahead of
    // the batch in flight finds the key busy.
    let store = FaultyStore::new(InMemoryStore::new());
    let broker = InMemoryPublisher::new();
    let slow = FaultyPublisher::new(broker.clone());
    slow.delay(Duration::from_millis(2));
    let now = chrono::Utc::now();
    let written: Vec<_> = (0..100).map(|n| msg("a", n, now)).collect();
    store.enqueue(written.clone()).await.unwrap();
    let mut cfg = config(1);
    cfg.poll_interval = Duration::from_secs(3600);
    cfg.min_poll_interval = Duration::from_secs(3600);
    let handle = Relay::new(Arc::new(store.clone()), Arc::new(slow), cfg)
        .unwrap()
        .spawn(CancellationToken::new());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.len() < written.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(handle.shutdown().await);
    assert_eq!(order_by_key(&broker.messages()), order_by_key(&written));
    let claims = store.calls(StoreOp::Claim);
    assert!(
        claims <= 120,
        "{claims} claims for 100 batches: one ahead of each would be about 200"
    );
}

#[tokio::test]
async fn concurrent_relays_publish_each_message_once_in_key_order() {
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();
    let now = chrono::Utc::now();
    let written: Vec<_> = (0..300)
        .map(|n| msg(&format!("k{}", n % 17), n, now))
        .collect();
    store.enqueue(written.clone()).await.unwrap();
    let flaky = FaultyPublisher::new(broker.clone());
    flaky.fail_every(7);

    let token = CancellationToken::new();
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let mut cfg = config(16);
            cfg.relay_id = format!("relay-{i}");
            cfg.concurrency = 2;
            cfg.backoff =
                BackoffPolicy::new(Duration::from_millis(5), 2.0, Duration::from_millis(20), 50)
                    .unwrap();
            Relay::new(Arc::new(store.clone()), Arc::new(flaky.clone()), cfg)
                .unwrap()
                .spawn(token.clone())
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.len() < written.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for h in handles {
        assert!(h.shutdown().await);
    }
    let ids: Vec<_> = broker.messages().iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), written.len(), "every message published once");
    assert_eq!(order_by_key(&broker.messages()), order_by_key(&written));
}

#[tokio::test]
async fn publish_timeout_counts_as_a_transient_failure() {
    let mut h = harness(10, 5);
    let mut cfg = config(10);
    cfg.publish_timeout = Duration::from_millis(50);
    h.publisher.delay(Duration::from_secs(5));
    h.relay = Relay::new(
        Arc::new(h.store.clone()),
        Arc::new(h.publisher.clone()),
        cfg,
    )
    .unwrap()
    .with_clock(Arc::new(h.clock.clone()));
    let m = msg("k", 0, h.clock.now());
    h.store.enqueue(vec![m.clone()]).await.unwrap();
    assert_eq!(h.relay.run_once().await.unwrap().retried, 1);
    let stored = h.store.get(m.id).await.unwrap().unwrap();
    assert!(
        stored
            .delivery
            .last_error
            .unwrap()
            .as_str()
            .contains("timed out")
    );
}

#[test]
fn invalid_configuration_is_rejected_up_front() {
    let mut cfg = RelayConfig::default();
    cfg.concurrency = 0;
    let err = Relay::new(
        Arc::new(InMemoryStore::new()),
        Arc::new(InMemoryPublisher::new()),
        cfg,
    )
    .unwrap_err();
    assert_eq!(err, ConfigError::Zero("concurrency"));
}

#[tokio::test]
async fn purge_deletes_finished_messages_after_the_retention_period() {
    let clock = ManualClock::fixed();
    let store = InMemoryStore::with_max_attempts(1);
    let broker = InMemoryPublisher::new();
    let publisher = FaultyPublisher::new(broker.clone());
    let mut cfg = config(10);
    cfg.retention = Some(Duration::from_secs(3600));
    cfg.purge_batch = 2;
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(publisher.clone()), cfg)
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    let published: Vec<_> = (0..5)
        .map(|i| msg(&format!("k{i}"), i, clock.now()))
        .collect();
    store.enqueue(published.clone()).await.unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 5);
    let dead = msg("dead", 0, clock.now());
    store.enqueue(vec![dead.clone()]).await.unwrap();
    publisher.fail_always(PublishErrorKind::Permanent);
    assert_eq!(relay.run_once().await.unwrap().dead, 1);

    assert_eq!(relay.purge_once().await.unwrap(), 0);
    assert_eq!(
        store.stats().await.unwrap().published,
        5,
        "kept within retention"
    );
    clock.advance(Duration::from_secs(3601));
    assert_eq!(relay.purge_once().await.unwrap(), 5, "in batches of 2");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.published, stats.dead), (0, 1), "dead letters stay");
    assert_eq!(
        relay
            .counters()
            .purged
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );

    let mut forever = config(10);
    forever.retention = Some(Duration::ZERO);
    assert_eq!(
        forever.validate(),
        Err(ConfigError::ZeroDuration("retention"))
    );
}

/// A purge that deleted all it may (10 statements of `purge_batch`) has more to delete:
/// the sweeper purges again at its next sweep, not a retention interval later, until
/// retention has caught up. Then it waits for the interval.
#[tokio::test]
async fn a_purge_that_is_behind_runs_again_at_the_next_sweep_until_caught_up() {
    let clock = ManualClock::fixed();
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();
    let mut cfg = config(100);
    cfg.retention = Some(Duration::from_secs(3600));
    cfg.purge_batch = 2;
    cfg.retention_interval = Duration::from_secs(3600);
    let relay = Relay::new(Arc::new(store.clone()), Arc::new(broker.clone()), cfg)
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
    let old: Vec<_> = (0..90)
        .map(|i| msg(&format!("k{i}"), i, clock.now()))
        .collect();
    store.enqueue(old).await.unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 90);
    clock.advance(Duration::from_secs(3601));

    // 90 messages past retention and 20 per purge: five sweeps 20 ms apart, where one
    // purge an hour would have left 70 of them. The fifth deletes 10 and has caught up.
    let handle = relay.spawn(CancellationToken::new());
    // The published messages kept, once there are `want` or after 10 s.
    let published = |want: u64| {
        let store = store.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let kept = store.stats().await.unwrap().published;
                if kept == want || tokio::time::Instant::now() >= deadline {
                    return kept;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert_eq!(published(0).await, 0, "retention caught up sweep by sweep");

    // Caught up, the next purge waits for the retention interval.
    let young: Vec<_> = (0..3)
        .map(|i| msg(&format!("young{i}"), i, clock.now()))
        .collect();
    store.enqueue(young).await.unwrap();
    handle.notify();
    assert_eq!(published(3).await, 3);
    clock.advance(Duration::from_secs(3601));
    tokio::time::sleep(Duration::from_millis(300)).await; // 15 sweeps
    assert!(handle.shutdown().await);
    assert_eq!(
        store.stats().await.unwrap().published,
        3,
        "purged again only after the retention interval"
    );
}

/// The relay counts published, retried and dead messages per service and topic, and
/// records batch sizes and latencies, on a recorder local to this test's thread.
#[test]
fn the_relay_reports_on_the_metrics_facade() {
    use metrics_util::debugging::DebugValue;
    use outbox_runtime::relay_metrics;

    let snapshotter = super::with_debug_recorder(|_| async {
        let clock = ManualClock::fixed();
        let store = InMemoryStore::new();
        let batch: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| msg(k, 0, clock.now()))
            .collect();
        store.enqueue(batch).await.unwrap();
        let publisher = FaultyPublisher::new(InMemoryPublisher::new());
        publisher.fail_key("c", PublishErrorKind::Transient, Some(1));
        publisher.fail_key("d", PublishErrorKind::Permanent, None);
        let relay = Relay::new(
            Arc::new(store.clone()),
            Arc::new(publisher),
            RelayConfig::default(),
        )
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
        let report = relay.run_once().await.unwrap();
        assert_eq!((report.published, report.retried, report.dead), (2, 1, 1));
    });
    let mut counters = std::collections::HashMap::new();
    let mut histograms = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = key.key().name().to_owned();
        match value {
            DebugValue::Counter(n) => {
                counters.insert((name, labels), n);
            }
            DebugValue::Histogram(values) => {
                histograms.insert((name, labels), values.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    let labels = vec![
        "service=orders".to_owned(),
        "topic=orders.events".to_owned(),
    ];
    for (name, n) in [
        (relay_metrics::PUBLISHED, 2),
        (relay_metrics::RETRIED, 1),
        (relay_metrics::DEAD, 1),
    ] {
        assert_eq!(
            counters.get(&(name.to_owned(), labels.clone())),
            Some(&n),
            "{name}: {counters:?}"
        );
    }
    assert_eq!(
        histograms.get(&(relay_metrics::CLAIM_BATCH_SIZE.to_owned(), vec![])),
        Some(&1),
        "one batch: {histograms:?}"
    );
    assert_eq!(
        histograms.get(&(relay_metrics::PUBLISH_LATENCY.to_owned(), labels.clone())),
        Some(&4),
        "one latency per message"
    );
    assert_eq!(
        histograms.get(&(relay_metrics::COMMIT_TO_ACK.to_owned(), labels)),
        Some(&2),
        "one per published message"
    );
}

/// Records every span as "parent > name field=value …", for checking the spans a
/// relay opens.
#[derive(Clone, Default)]
struct SpanLog(Arc<std::sync::Mutex<Vec<String>>>);

impl<S> tracing_subscriber::Layer<S> for SpanLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map_or_else(String::new, |p| format!("{} > ", p.name()));
        self.0
            .lock()
            .unwrap()
            .push(format!("{parent}{}{}", attrs.metadata().name(), fields.0));
    }
}

#[test]
fn each_batch_and_each_message_gets_a_span() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry()
        .with(log.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let h = harness(10, 5);
            let ok = msg("a", 0, h.clock.now());
            let failing = msg("b", 0, h.clock.now());
            h.store
                .enqueue(vec![ok.clone(), failing.clone()])
                .await
                .unwrap();
            h.publisher.fail_key("b", PublishErrorKind::Transient, None);
            h.relay.run_once().await.unwrap();
        });
    });
    let spans = log.0.lock().unwrap().clone();
    let batches: Vec<_> = spans
        .iter()
        .filter(|s| s.starts_with("relay.batch relay="))
        .collect();
    assert_eq!(batches.len(), 1, "{spans:#?}");
    assert!(batches[0].contains("claimed=2"), "{spans:#?}");
    let messages: Vec<_> = spans
        .iter()
        .filter(|s| s.starts_with("relay.batch > relay.message"))
        .collect();
    assert_eq!(
        messages.len(),
        2,
        "one per message, inside the batch: {spans:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|s| s.contains("key=a") && s.contains("outcome=\"published\""))
    );
    assert!(
        messages
            .iter()
            .any(|s| s.contains("key=b") && s.contains("outcome=\"retry\""))
    );
}
