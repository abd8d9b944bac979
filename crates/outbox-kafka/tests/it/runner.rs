//! The consumer runner on a real consumer group: offsets are committed only for
//! handled messages, a restarted group resumes after them, and a message the handler
//! rejects is parked on the dead-letter topic with its reason.

use crate::{broker, create_topic, read_topic, unique_topic};
use outbox_kafka::{KafkaDeadLetterTopic, KafkaPublisher, KafkaSource};
use outbox_ports::{Publisher, header};
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerCounters, ConsumerRunner};
use outbox_test_support::{InMemoryInbox, TextEffects, text_message};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

struct Group {
    topic: String,
    dead_topic: String,
    group: String,
    inbox: InMemoryInbox,
}

impl Group {
    /// Runs the group until `done` holds, then shuts it down gracefully.
    async fn run_until(
        &self,
        done: impl Fn(&InMemoryInbox, &ConsumerCounters) -> bool,
    ) -> Arc<ConsumerCounters> {
        let config = broker();
        let runner = ConsumerRunner::new(
            Arc::new(KafkaSource::new(&config, &self.group, &[&self.topic]).unwrap()),
            Arc::new(self.inbox.clone()),
            Arc::new(TextEffects::new()),
            Arc::new(KafkaDeadLetterTopic::new(&config, &self.dead_topic).unwrap()),
            ConsumerConfig::new(&self.group),
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
        task.await.unwrap().expect("close commits the offsets");
        counters
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_follow_the_inbox_and_rejected_messages_are_parked_on_a_topic() {
    let config = broker();
    let group = Group {
        topic: unique_topic("runner"),
        dead_topic: unique_topic("runner.dead"),
        group: unique_topic("group"),
        inbox: InMemoryInbox::new(),
    };
    create_topic(&config, &group.topic, 3).await;
    create_topic(&config, &group.dead_topic, 1).await;
    let publisher = KafkaPublisher::new(config.clone()).unwrap();
    let mut batch: Vec<_> = (0..30)
        .map(|n| text_message(&group.topic, &format!("k{}", n % 3), &format!("m{n}")))
        .collect();
    let poison = text_message(&group.topic, "k1", "poison");
    batch.push(poison.clone());
    assert!(publisher.publish(&batch).await.iter().all(Result::is_ok));

    let first = group
        .run_until(|inbox, c| inbox.effects().len() == 30 && c.parked.load(Ordering::Relaxed) == 1)
        .await;
    assert_eq!(first.processed.load(Ordering::Relaxed), 30);

    let parked = read_topic(&config, &group.dead_topic, Duration::from_secs(20)).await;
    assert_eq!(parked.len(), 1);
    let p = &parked[0];
    assert_eq!(p.key.as_deref(), Some("k1"));
    assert_eq!(p.payload, b"poison");
    assert_eq!(p.headers[header::MESSAGE_ID], poison.id.to_string());
    assert_eq!(p.headers[header::DEAD_LETTER_REASON], "poison pill");
    assert_eq!(p.headers[header::DEAD_LETTER_GROUP], group.group);
    assert_eq!(p.headers[header::DEAD_LETTER_ATTEMPTS], "1");
    assert!(p.headers[header::DEAD_LETTER_SOURCE].starts_with(&format!("{}/", group.topic)));

    // The group restarts: it resumes after its committed offsets, so only the new
    // messages arrive.
    let more: Vec<_> = (30..35)
        .map(|n| text_message(&group.topic, &format!("k{}", n % 3), &format!("m{n}")))
        .collect();
    assert!(publisher.publish(&more).await.iter().all(Result::is_ok));
    let second = group
        .run_until(|inbox, _| inbox.effects().len() == 35)
        .await;
    assert_eq!(second.received.load(Ordering::Relaxed), 5, "{second:?}");
    assert_eq!(second.duplicates.load(Ordering::Relaxed), 0);
    let mut effects = group.inbox.effects();
    effects.sort();
    effects.dedup();
    assert_eq!(effects.len(), 35, "each message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_joining_mid_stream_loses_and_doubles_nothing() {
    const KEYS: usize = 8;
    const PER_KEY: usize = 60;
    // Heartbeats often enough that the first member hears of the rebalance quickly.
    let config = broker().with_property("heartbeat.interval.ms", "200");
    let topic = unique_topic("rebalance");
    let group = unique_topic("rebalance-group");
    create_topic(&config, &topic, 4).await;
    let publisher = KafkaPublisher::new(config.clone()).unwrap();
    for n in 0..PER_KEY {
        let batch: Vec<_> = (0..KEYS)
            .map(|k| text_message(&topic, &format!("k{k}"), &format!("k{k}:{n:03}")))
            .collect();
        assert!(publisher.publish(&batch).await.iter().all(Result::is_ok));
    }
    // Both members write to one inbox, as two instances of a service share a database.
    let inbox = InMemoryInbox::new();
    let member = |shutdown: &CancellationToken| {
        let mut consumer = ConsumerConfig::new(&group);
        consumer.lanes = 2;
        let runner = ConsumerRunner::new(
            Arc::new(KafkaSource::new(&config, &group, &[&topic]).unwrap()),
            Arc::new(inbox.clone()),
            Arc::new(TextEffects::slow(Duration::from_millis(10))),
            Arc::new(outbox_test_support::InMemoryDeadLetters::new()),
            consumer,
        )
        .unwrap();
        let counters = runner.counters();
        (counters, tokio::spawn(runner.run(shutdown.clone())))
    };
    let shutdown = CancellationToken::new();
    let (first, first_task) = member(&shutdown);
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
    wait_for(40).await;
    let (second, second_task) = member(&shutdown);
    wait_for(KEYS * PER_KEY).await;
    shutdown.cancel();
    first_task.await.unwrap().unwrap();
    second_task.await.unwrap().unwrap();

    let effects = inbox.effects();
    assert_eq!(effects.len(), KEYS * PER_KEY, "each message once");
    for k in 0..KEYS {
        let of_key: Vec<_> = effects
            .iter()
            .filter(|e| e.starts_with(&format!("k{k}:")))
            .collect();
        assert!(of_key.is_sorted(), "key k{k} out of order: {of_key:?}");
    }
    // The join revoked partitions mid-stream: either the second member got some, or
    // (tansu hands them all back to the first) the first had its uncommitted messages
    // redelivered, and the inbox absorbed them.
    let redelivered =
        first.duplicates.load(Ordering::Relaxed) + second.duplicates.load(Ordering::Relaxed);
    assert!(
        second.received.load(Ordering::Relaxed) > 0 || redelivered > 0,
        "no rebalance was observed: {first:?} {second:?}"
    );
    println!("rebalance: first {first:?}, second {second:?}");
}
