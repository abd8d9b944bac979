//! The Kafka adapter against a real Kafka-protocol broker (tansu, started by `cargo
//! xtask test` at `OUTBOX_TEST_KAFKA_BOOTSTRAP`) and librdkafka's mock cluster.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod conformance;
mod end_to_end;
mod faults;
mod outage;
mod private_servers;
mod provision;
mod runner;

use async_trait::async_trait;
use outbox_kafka::{KafkaConfig, Provisioning, TopicSpec, ensure_topics};
use outbox_ports::IncomingMessage;
use outbox_test_support::conformance::{PublishedReader, ReceivedMessage};
use std::time::Duration;

/// The test broker's configuration.
pub fn broker() -> KafkaConfig {
    match std::env::var("OUTBOX_TEST_KAFKA_BOOTSTRAP") {
        Ok(servers) if !servers.is_empty() => KafkaConfig::new(servers),
        _ => panic!(
            "OUTBOX_TEST_KAFKA_BOOTSTRAP is not set: run the tests with `cargo xtask test`, \
             which starts a Kafka-protocol broker on 127.0.0.1, or start one with `cargo \
             xtask backends start` and `source target/xtask-backends/dev/env`"
        ),
    }
}

/// A topic name no other test uses.
pub fn unique_topic(case: &str) -> String {
    format!("{case}.{}", uuid::Uuid::new_v4().simple())
}

/// Creates `topic` with `partitions` partitions on `config`'s broker.
pub async fn create_topic(config: &KafkaConfig, topic: &str, partitions: u32) {
    let spec = TopicSpec::new(topic).with_partitions(partitions);
    ensure_topics(config, &[spec], Provisioning::CreateMissing)
        .await
        .unwrap();
}

/// Every message on `topic` from the beginning of each of its partitions, read with
/// the library's [`outbox_kafka::read_topic`] (no consumer group, so none is
/// disturbed). The callers read only what the broker already acknowledged.
pub async fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Vec<IncomingMessage> {
    outbox_kafka::read_topic(config, topic, timeout)
        .await
        .unwrap()
}

/// [`PublishedReader`] over [`read_topic`].
pub struct KafkaReader(pub KafkaConfig);

#[async_trait]
impl PublishedReader for KafkaReader {
    async fn read(&self, topic: &str, _count: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        read_topic(&self.0, topic, timeout)
            .await
            .into_iter()
            .map(|m| ReceivedMessage {
                topic: m.topic,
                key: m.key,
                headers: m.headers,
                payload: m.payload,
            })
            .collect()
    }
}

/// Checks per-key order of messages whose JSON payload numbers them per key (`{"n":
/// …}`): within a key, `n` never goes down. Duplicates of the message just delivered
/// (at-least-once) are allowed; an older message after a newer one is not. Returns the
/// number of distinct messages.
pub fn assert_per_key_order(received: &[IncomingMessage]) -> usize {
    let mut last: std::collections::HashMap<(String, i32), i64> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for m in received {
        let n = serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["n"]
            .as_i64()
            .unwrap();
        let key = m.key.clone().unwrap();
        let previous = last.insert((key.clone(), m.partition), n);
        assert!(
            previous.is_none_or(|p| p <= n),
            "key {key}: message {n} after {previous:?}"
        );
        seen.insert(m.headers[outbox_ports::header::MESSAGE_ID].clone());
    }
    let keys: std::collections::HashSet<_> = received.iter().map(|m| &m.key).collect();
    let partitions_per_key = last.len();
    assert_eq!(
        partitions_per_key,
        keys.len(),
        "every key stays on one partition"
    );
    seen.len()
}
