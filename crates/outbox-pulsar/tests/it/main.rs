//! The Pulsar adapter against a real Pulsar-protocol broker (pulsar-lite, started by
//! `cargo xtask test` at `OUTBOX_TEST_PULSAR_URL`). What the publisher writes is read
//! back with the official Python client (`pulsar-client`, installed by xtask at
//! `OUTBOX_TEST_PULSAR_PYTHONPATH`), an implementation independent of ours.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod conformance;
mod end_to_end;
mod runner;

use async_trait::async_trait;
use base64::Engine as _;
use outbox_ports::IncomingMessage;
use outbox_pulsar::PulsarConfig;
use outbox_test_support::conformance::{PublishedReader, ReceivedMessage};
use std::time::Duration;

/// The test broker's URL.
pub fn broker_url() -> String {
    match std::env::var("OUTBOX_TEST_PULSAR_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "OUTBOX_TEST_PULSAR_URL is not set: run the tests with `cargo xtask test`, \
             which starts a Pulsar-protocol broker on 127.0.0.1, or start one with `cargo \
             xtask backends start` and `source target/xtask-backends/dev/env`"
        ),
    }
}

/// The test broker's configuration.
pub fn broker() -> PulsarConfig {
    PulsarConfig::new(&broker_url()).unwrap()
}

/// A topic name no other test uses.
pub fn unique_topic(case: &str) -> String {
    format!("{case}-{}", uuid::Uuid::new_v4().simple())
}

/// Every message on `topic` from the beginning, read by the official client, waiting
/// up to `timeout` until at least `count` arrived (fewer if they did not).
pub async fn read_topic(topic: &str, count: usize, timeout: Duration) -> Vec<IncomingMessage> {
    let pythonpath = std::env::var("OUTBOX_TEST_PULSAR_PYTHONPATH").unwrap_or_else(|_| {
        panic!("OUTBOX_TEST_PULSAR_PYTHONPATH is not set: run the tests with `cargo xtask test`")
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/read_topic.py");
    let full = broker().topic_name(topic);
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args([&broker_url(), &full, &count.to_string()])
        .arg(timeout.as_secs_f64().to_string())
        .env("PYTHONPATH", pythonpath)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "read_topic.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(offset, line)| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let payload = base64::engine::general_purpose::STANDARD
                .decode(v["payload"].as_str().unwrap())
                .unwrap();
            let mut m =
                IncomingMessage::new(v["topic"].as_str().unwrap(), 0, offset as i64, payload);
            m.key = v["key"].as_str().map(str::to_owned);
            for (name, value) in v["properties"].as_object().unwrap() {
                m.headers
                    .insert(name.clone(), value.as_str().unwrap().to_owned());
            }
            m
        })
        .collect()
}

/// [`PublishedReader`] over [`read_topic`].
pub struct PythonReader;

#[async_trait]
impl PublishedReader for PythonReader {
    async fn read(&self, topic: &str, count: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        read_topic(topic, count, timeout)
            .await
            .into_iter()
            .map(|m| ReceivedMessage {
                topic: topic.to_owned(),
                key: m.key,
                headers: m.headers,
                payload: m.payload,
            })
            .collect()
    }
}
