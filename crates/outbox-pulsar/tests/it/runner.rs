//! The consumer runner on a real subscription: a message is acknowledged only once
//! handled, a restarted subscription resumes after what was acknowledged, a rejected
//! message is parked on the dead-letter topic with its reason, and a second member
//! joining a Key_Shared subscription mid-stream loses, doubles and reorders nothing.

use crate::{broker, read_topic, unique_topic};
use outbox_domain::OutboxMessage;
use outbox_ports::{IncomingMessage, MessageSource, Publisher, header};
use outbox_pulsar::{PulsarDeadLetterTopic, PulsarPublisher, PulsarSource, Subscription};
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerCounters, ConsumerRunner};
use outbox_test_support::{InMemoryInbox, TextEffects, text_message};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Publishes `messages` in their order. A publish call sends its batch concurrently
/// and may hold only one message per key (the relay's rule, which keeps keys in order),
/// so runs of distinct keys go one call after the other.
async fn publish(messages: &[OutboxMessage]) {
    let publisher = PulsarPublisher::new(broker()).unwrap();
    let mut rest = messages;
    while !rest.is_empty() {
        let mut keys = HashSet::new();
        let run = rest
            .iter()
            .take_while(|m| keys.insert(&m.partition_key))
            .count();
        let outcomes = publisher.publish(&rest[..run]).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        rest = &rest[run..];
    }
    publisher.close().await;
}

struct Group {
    topic: String,
    dead_topic: String,
    subscription: String,
    kind: Subscription,
    inbox: InMemoryInbox,
}

impl Group {
    fn new(case: &str, kind: Subscription) -> Self {
        let topic = unique_topic(case);
        Self {
            dead_topic: PulsarDeadLetterTopic::conventional_name(&topic, "group"),
            topic,
            subscription: "group".into(),
            kind,
            inbox: InMemoryInbox::new(),
        }
    }

    /// Runs the group until `done` holds, then shuts it down gracefully.
    async fn run_until(
        &self,
        done: impl Fn(&InMemoryInbox, &ConsumerCounters) -> bool,
    ) -> Arc<ConsumerCounters> {
        let source = PulsarSource::subscribe(broker(), &self.topic, &self.subscription, self.kind)
            .await
            .unwrap();
        let runner = ConsumerRunner::new(
            Arc::new(source),
            Arc::new(self.inbox.clone()),
            Arc::new(TextEffects::new()),
            Arc::new(PulsarDeadLetterTopic::new(broker(), &self.dead_topic).unwrap()),
            ConsumerConfig::new(&self.subscription),
        )
        .unwrap();
        let counters = runner.counters();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(runner.run(shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(60), async {
            while !done(&self.inbox, &counters) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("group did not finish: {counters:?}"));
        shutdown.cancel();
        task.await.unwrap().expect("close succeeds");
        counters
    }
}

async fn acknowledged_resume_and_parking(kind: Subscription) {
    let group = Group::new("runner", kind);
    let mut batch: Vec<_> = (0..30)
        .map(|n| text_message(&group.topic, &format!("k{}", n % 3), &format!("m{n}")))
        .collect();
    let poison = text_message(&group.topic, "k1", "poison");
    batch.push(poison.clone());
    publish(&batch).await;

    let first = group
        .run_until(|inbox, c| inbox.effects().len() == 30 && c.parked.load(Ordering::Relaxed) == 1)
        .await;
    assert_eq!(first.processed.load(Ordering::Relaxed), 30);

    let parked = read_topic(&group.dead_topic, 1, Duration::from_secs(20)).await;
    assert_eq!(parked.len(), 1);
    let p = &parked[0];
    assert_eq!(p.key.as_deref(), Some("k1"));
    assert_eq!(p.payload, b"poison");
    assert_eq!(p.headers[header::MESSAGE_ID], poison.id.to_string());
    assert_eq!(p.headers[header::DEAD_LETTER_REASON], "poison pill");
    assert_eq!(p.headers[header::DEAD_LETTER_GROUP], group.subscription);
    assert_eq!(p.headers[header::DEAD_LETTER_ATTEMPTS], "1");

    // The subscription restarts: it resumes after what was acknowledged, so only the
    // new messages arrive.
    let more: Vec<_> = (30..35)
        .map(|n| text_message(&group.topic, &format!("k{}", n % 3), &format!("m{n}")))
        .collect();
    publish(&more).await;
    let second = group
        .run_until(|inbox, _| inbox.effects().len() == 35)
        .await;
    assert_eq!(second.received.load(Ordering::Relaxed), 5, "{second:?}");
    assert_eq!(second.duplicates.load(Ordering::Relaxed), 0);
    let effects = group.inbox.effects();
    for k in 0..3 {
        let of_key: Vec<usize> = effects
            .iter()
            .filter_map(|e| e.strip_prefix('m')?.parse().ok())
            .filter(|n| n % 3 == k)
            .collect();
        assert!(of_key.is_sorted(), "key k{k} out of order: {of_key:?}");
    }
    let mut unique = effects.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 35, "each message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_shared_acknowledges_handled_messages_and_parks_rejected_ones() {
    acknowledged_resume_and_parking(Subscription::KeyShared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_acknowledges_handled_messages_and_parks_rejected_ones() {
    acknowledged_resume_and_parking(Subscription::Failover).await;
}

/// Without the runner: what a closed source had received but not acknowledged is
/// delivered again to the next one, and what it acknowledged is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_come_back_after_a_restart() {
    let topic = unique_topic("redeliver");
    let batch: Vec<_> = (0..6)
        .map(|n| text_message(&topic, &format!("k{n}"), &format!("m{n}")))
        .collect();
    publish(&batch).await;
    let recv_all = |source: PulsarSource, n: usize| async move {
        let mut got = Vec::new();
        for _ in 0..n {
            let m = tokio::time::timeout(Duration::from_secs(20), source.recv())
                .await
                .expect("a message arrives")
                .unwrap();
            got.push(m);
        }
        (source, got)
    };
    let source = PulsarSource::subscribe(broker(), &topic, "s", Subscription::KeyShared)
        .await
        .unwrap();
    let (source, first) = recv_all(source, 6).await;
    for m in &first[..2] {
        source.ack(m).await.unwrap();
    }
    source.close().await.unwrap();

    let source = PulsarSource::subscribe(broker(), &topic, "s", Subscription::KeyShared)
        .await
        .unwrap();
    let (source, second) = recv_all(source, 4).await;
    let body = |m: &IncomingMessage| String::from_utf8_lossy(&m.payload).into_owned();
    let mut expected: Vec<_> = first[2..].iter().map(body).collect();
    let mut got: Vec<_> = second.iter().map(body).collect();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "exactly the unacknowledged messages come back"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), source.recv())
            .await
            .is_err(),
        "nothing else arrives"
    );
    for m in &second {
        source.ack(m).await.unwrap();
    }
    source.close().await.unwrap();
}

/// Failover: a second member stands by; when the active one leaves mid-stream, the
/// standby takes over from the first unacknowledged message. Nothing is lost,
/// nothing is handled twice (the inbox absorbs redeliveries), every key stays in
/// order. (Key_Shared members joining mid-stream are not tested here: pulsar-lite
/// moves a key to the new member while the old one still holds unacknowledged
/// messages of it, which reorders the key; Apache Pulsar holds such keys back.
/// docs/pulsar.md has the details.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_standby_takes_over_mid_stream_losing_and_doubling_nothing() {
    const KEYS: usize = 8;
    const PER_KEY: usize = 40;
    let topic = unique_topic("failover");
    for n in 0..PER_KEY {
        let batch: Vec<_> = (0..KEYS)
            .map(|k| text_message(&topic, &format!("k{k}"), &format!("k{k}:{n:03}")))
            .collect();
        publish(&batch).await;
    }
    // Both members write to one inbox, as two instances of a service share a database.
    let inbox = InMemoryInbox::new();
    let member = |shutdown: CancellationToken| {
        let inbox = inbox.clone();
        let topic = topic.clone();
        async move {
            // A short queue, so the active member has not been sent everything yet.
            let mut config = broker();
            config.receiver_queue = 4;
            let source = PulsarSource::subscribe(config, &topic, "group", Subscription::Failover)
                .await
                .unwrap();
            let runner = ConsumerRunner::new(
                Arc::new(source),
                Arc::new(inbox),
                Arc::new(TextEffects::slow(Duration::from_millis(10))),
                Arc::new(outbox_test_support::InMemoryDeadLetters::new()),
                ConsumerConfig::new("group"),
            )
            .unwrap();
            let counters = runner.counters();
            (counters, tokio::spawn(runner.run(shutdown)))
        }
    };
    let wait_for = |n: usize| {
        let inbox = inbox.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(60), async {
                while inbox.effects().len() < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} effects", inbox.effects().len()));
        }
    };
    let first_stop = CancellationToken::new();
    let (first, first_task) = member(first_stop.clone()).await;
    wait_for(40).await;
    let second_stop = CancellationToken::new();
    let (second, second_task) = member(second_stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    first_stop.cancel();
    first_task.await.unwrap().unwrap();
    wait_for(KEYS * PER_KEY).await;
    second_stop.cancel();
    second_task.await.unwrap().unwrap();

    let effects = inbox.effects();
    let mut unique = effects.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), KEYS * PER_KEY, "every message handled");
    assert_eq!(effects.len(), KEYS * PER_KEY, "each message once");
    for k in 0..KEYS {
        let of_key: Vec<_> = effects
            .iter()
            .filter(|e| e.starts_with(&format!("k{k}:")))
            .collect();
        assert!(of_key.is_sorted(), "key k{k} out of order: {of_key:?}");
    }
    assert!(
        second.processed.load(Ordering::Relaxed) > 0,
        "the standby took over: {second:?}"
    );
    println!("failover: first {first:?}, second {second:?}");
}
