//! The consumer runner against the in-memory source, inbox and dead-letter sink, with
//! injected broker and database failures.

use crate::msg;
use async_trait::async_trait;
use chrono::Utc;
use outbox_domain::{BackoffPolicy, MessageId};
use outbox_ports::{
    ConsumeError, HandlerError, IncomingMessage, MessageHandler, MessageSource, Publisher,
};
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerCounters, ConsumerRunner};
use outbox_test_support::{
    InMemoryDeadLetters, InMemoryInbox, InMemoryPublisher, InMemorySource, MemoryTx,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

const TOPIC: &str = "orders.events";
const GROUP: &str = "billing";

/// Decides, from an effect and its attempt number, whether the handler fails.
type FailWhen = Box<dyn Fn(&str, u32) -> Option<HandlerError> + Send + Sync>;

/// Stages `key:n` as the effect; fails as `fail` decides, per effect and attempt.
struct Recorder {
    attempts: Mutex<HashMap<String, u32>>,
    fail: FailWhen,
}

impl Recorder {
    fn new(fail: impl Fn(&str, u32) -> Option<HandlerError> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            attempts: Mutex::default(),
            fail: Box::new(fail),
        })
    }

    fn ok() -> Arc<Self> {
        Self::new(|_, _| None)
    }
}

#[async_trait]
impl MessageHandler<MemoryTx> for Recorder {
    async fn handle(&self, tx: &mut MemoryTx, m: &IncomingMessage) -> Result<(), HandlerError> {
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let effect = format!("{}:{}", m.key.as_deref().unwrap(), body["n"]);
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let a = attempts.entry(effect.clone()).or_default();
            *a += 1;
            *a
        };
        if effect == "panic:0" && attempt == 1 {
            panic!("boom");
        }
        if let Some(e) = (self.fail)(&effect, attempt) {
            return Err(e);
        }
        tx.push_effect(effect);
        Ok(())
    }
}

fn config() -> ConsumerConfig {
    let mut c = ConsumerConfig::new(GROUP);
    c.handler_backoff =
        BackoffPolicy::new(Duration::from_millis(1), 2.0, Duration::from_millis(5), 4).unwrap();
    c.outage_backoff =
        BackoffPolicy::new(Duration::from_millis(1), 2.0, Duration::from_millis(5), 1).unwrap();
    c
}

/// Publishes `per_key` messages on each of `keys`, payload `{"n": i}`.
async fn publish(broker: &InMemoryPublisher, keys: &[&str], per_key: usize) {
    for n in 0..per_key {
        let batch: Vec<_> = keys.iter().map(|k| msg(k, n, Utc::now())).collect();
        assert!(broker.publish(&batch).await.iter().all(Result::is_ok));
    }
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ConsumeError>>,
    counters: Arc<ConsumerCounters>,
}

fn start(
    source: &InMemorySource,
    inbox: &InMemoryInbox,
    handler: Arc<Recorder>,
    dead: &InMemoryDeadLetters,
) -> Running {
    let runner = ConsumerRunner::new(
        Arc::new(source.clone()),
        Arc::new(inbox.clone()),
        handler,
        Arc::new(dead.clone()),
        config(),
    )
    .unwrap();
    let counters = runner.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone()));
    Running {
        shutdown,
        task,
        counters,
    }
}

impl Running {
    async fn stop(self) -> Arc<ConsumerCounters> {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.counters
    }
}

async fn until_acknowledged(source: &InMemorySource, n: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while source.acknowledged() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} acknowledged", source.acknowledged()));
}

/// Every effect exactly once, and per key in publish order.
fn assert_once_in_order(effects: &[String], keys: &[&str], per_key: usize) {
    let unique: HashSet<_> = effects.iter().collect();
    assert_eq!(unique.len(), effects.len(), "an effect happened twice");
    for key in keys {
        let ns: Vec<usize> = effects
            .iter()
            .filter_map(|e| e.strip_prefix(&format!("{key}:")))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(ns, (0..per_key).collect::<Vec<_>>(), "order of key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_once_in_key_order_across_lanes() {
    let broker = InMemoryPublisher::new();
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    publish(&broker, &keys, 25).await;
    let (source, inbox, dead) = (
        InMemorySource::new(broker, TOPIC, 6),
        InMemoryInbox::new(),
        InMemoryDeadLetters::new(),
    );
    let running = start(&source, &inbox, Recorder::ok(), &dead);
    until_acknowledged(&source, 200).await;
    let counters = running.stop().await;

    assert_once_in_order(&inbox.effects(), &keys, 25);
    assert_eq!(counters.processed.load(Ordering::Relaxed), 200);
    assert_eq!(counters.duplicates.load(Ordering::Relaxed), 0);
    assert!(source.is_closed(), "shutdown closes the source");
    assert!(dead.letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_after_a_rebalance_are_absorbed() {
    let broker = InMemoryPublisher::new();
    let keys = ["a", "b", "c", "d"];
    publish(&broker, &keys, 50).await;
    let (source, inbox, dead) = (
        InMemorySource::new(broker, TOPIC, 4),
        InMemoryInbox::new(),
        InMemoryDeadLetters::new(),
    );
    // The partitions are revoked under the first runner: every ack is refused, so
    // nothing it processed is committed.
    source.fail_next_acks(u32::MAX);
    let first = start(&source, &inbox, Recorder::ok(), &dead);
    tokio::time::timeout(Duration::from_secs(30), async {
        while first.counters.ack_failures.load(Ordering::Relaxed) < 200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let first = first.stop().await;
    assert_eq!(source.acknowledged(), 0);

    // The new owner gets all 200 again, mid-stream of a second rebalance.
    source.fail_next_acks(0);
    source.rebalance();
    let second = start(&source, &inbox, Recorder::ok(), &dead);
    tokio::time::sleep(Duration::from_millis(2)).await;
    source.rebalance();
    until_acknowledged(&source, 200).await;
    let second = second.stop().await;

    assert_once_in_order(&inbox.effects(), &keys, 50);
    assert_eq!(first.processed.load(Ordering::Relaxed), 200);
    assert_eq!(second.processed.load(Ordering::Relaxed), 0);
    assert!(
        second.duplicates.load(Ordering::Relaxed) >= 200,
        "every redelivery is recognised: {second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_replies_and_outages_never_double_an_effect() {
    let broker = InMemoryPublisher::new();
    let keys = ["a", "b", "c"];
    publish(&broker, &keys, 20).await;
    let (source, inbox, dead) = (
        InMemorySource::new(broker, TOPIC, 3),
        InMemoryInbox::new(),
        InMemoryDeadLetters::new(),
    );
    inbox.lose_next_commit_replies(5);
    inbox.fail_next_begins(7);
    source.fail_next_recvs(4);
    let running = start(&source, &inbox, Recorder::ok(), &dead);
    until_acknowledged(&source, 60).await;
    let counters = running.stop().await;

    assert_once_in_order(&inbox.effects(), &keys, 20);
    // A commit that happened but looked failed is retried and found in the inbox.
    assert_eq!(counters.duplicates.load(Ordering::Relaxed), 5);
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 12);
    assert_eq!(counters.broker_errors.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handler_retries_then_parks_and_the_partition_moves_on() {
    let broker = InMemoryPublisher::new();
    publish(&broker, &["a", "b", "panic"], 5).await;
    let (source, inbox, dead) = (
        InMemorySource::new(broker, TOPIC, 1),
        InMemoryInbox::new(),
        InMemoryDeadLetters::new(),
    );
    dead.fail_next_parks(3);
    let handler = Recorder::new(|effect, attempt| match effect {
        // Recovers on the third attempt.
        "a:1" if attempt < 3 => Some(HandlerError::retry("deadlock")),
        // Never recovers: parked after the 4 attempts of the policy.
        "a:2" => Some(HandlerError::retry(format!(
            "downstream timeout #{attempt}"
        ))),
        // Cannot be fixed by retrying: parked at once.
        "b:3" => Some(HandlerError::reject("malformed payload")),
        _ => None,
    });
    let running = start(&source, &inbox, handler, &dead);
    until_acknowledged(&source, 15).await;
    let counters = running.stop().await;

    let letters = dead.letters();
    let parked: Vec<_> = letters
        .iter()
        .map(|l| (l.message.key.clone().unwrap(), l.attempts, l.reason.clone()))
        .collect();
    assert_eq!(
        parked,
        [
            ("a".into(), 4, "downstream timeout #4".into()),
            ("b".into(), 1, "malformed payload".into())
        ],
    );
    assert!(
        letters
            .iter()
            .all(|l| l.consumer_group == GROUP && l.message_id.is_some())
    );
    let effects = inbox.effects();
    assert_eq!(effects.len(), 13, "all but the two parked: {effects:?}");
    assert!(effects.contains(&"a:1".to_owned()) && effects.contains(&"a:3".to_owned()));
    // The panic on the first attempt of panic:0 is retried like a retryable error.
    assert!(effects.contains(&"panic:0".to_owned()));
    assert_eq!(counters.parked.load(Ordering::Relaxed), 2);
    // a:1 twice, a:2 three times, panic:0 once.
    assert_eq!(counters.handler_retries.load(Ordering::Relaxed), 6);
    assert_eq!(counters.broker_errors.load(Ordering::Relaxed), 3);
    // A parked message is not recorded as processed: a replay is handled.
    assert_eq!(inbox.len(GROUP), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_retry_leaves_the_message_for_the_next_run() {
    let broker = InMemoryPublisher::new();
    publish(&broker, &["a"], 3).await;
    let (source, inbox, dead) = (
        InMemorySource::new(broker, TOPIC, 1),
        InMemoryInbox::new(),
        InMemoryDeadLetters::new(),
    );
    let mut slow = config();
    slow.handler_backoff =
        BackoffPolicy::new(Duration::from_secs(3600), 2.0, Duration::from_secs(3600), 9).unwrap();
    let runner = ConsumerRunner::new(
        Arc::new(source.clone()),
        Arc::new(inbox.clone()),
        Recorder::new(|e, _| (e == "a:1").then(|| HandlerError::retry("flaky"))),
        Arc::new(dead.clone()),
        slow,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone()));
    until_acknowledged(&source, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown cuts the hour-long retry wait short")
        .unwrap()
        .unwrap();
    assert_eq!(inbox.effects(), ["a:0"]);
    assert_eq!(source.acknowledged(), 1, "a:1 and a:2 stay unacknowledged");

    source.rebalance();
    let running = start(&source, &inbox, Recorder::ok(), &dead);
    until_acknowledged(&source, 3).await;
    running.stop().await;
    assert_eq!(inbox.effects(), ["a:0", "a:1", "a:2"]);
}

/// A source of hand-made messages.
struct Fixed(Mutex<Vec<IncomingMessage>>, Mutex<Vec<i64>>);

#[async_trait]
impl MessageSource for Fixed {
    async fn recv(&self) -> Result<IncomingMessage, ConsumeError> {
        let next = self.0.lock().unwrap().pop();
        match next {
            Some(m) => Ok(m),
            None => std::future::pending().await,
        }
    }
    async fn ack(&self, m: &IncomingMessage) -> Result<(), ConsumeError> {
        self.1.lock().unwrap().push(m.offset);
        Ok(())
    }
    async fn close(&self) -> Result<(), ConsumeError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_an_outbox_id_is_parked_and_acknowledged() {
    let id = MessageId::new_v7(Utc::now());
    let good = IncomingMessage::new(TOPIC, 0, 1, br#"{"n":0}"#.to_vec())
        .with_key("a")
        .with_header(outbox_ports::header::MESSAGE_ID, id.to_string());
    let foreign = IncomingMessage::new(TOPIC, 0, 0, b"hello".to_vec()).with_key("x");
    let source = Arc::new(Fixed(Mutex::new(vec![good, foreign]), Mutex::default()));
    let (inbox, dead) = (InMemoryInbox::new(), InMemoryDeadLetters::new());
    let runner = ConsumerRunner::new(
        source.clone(),
        Arc::new(inbox.clone()),
        Recorder::ok(),
        Arc::new(dead.clone()),
        config(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), async {
        while source.1.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(*source.1.lock().unwrap(), [0, 1]);
    let letters = dead.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, None);
    assert_eq!(letters[0].attempts, 0);
    assert!(
        letters[0].reason.contains("outbox-message-id"),
        "{}",
        letters[0].reason
    );
    assert_eq!(inbox.effects(), ["a:0"]);
}

#[test]
fn bad_configuration_is_rejected() {
    let source = Arc::new(InMemorySource::new(InMemoryPublisher::new(), TOPIC, 1));
    let build = |c: ConsumerConfig| {
        ConsumerRunner::new(
            source.clone(),
            Arc::new(InMemoryInbox::new()),
            Recorder::ok(),
            Arc::new(InMemoryDeadLetters::new()),
            c,
        )
        .err()
        .map(|e| e.to_string())
    };
    assert_eq!(
        build(ConsumerConfig::new(" ")).as_deref(),
        Some("consumer_group must not be empty")
    );
    let too_long = build(ConsumerConfig::new("g".repeat(250))).unwrap();
    assert!(too_long.contains("invalid consumer group"), "{too_long}");
    let mut c = config();
    c.lanes = 0;
    assert_eq!(build(c).as_deref(), Some("lanes must be at least 1"));
}
