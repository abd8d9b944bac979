//! The Kafka adapter of outbox-rs, on rdkafka (librdkafka, built from its bundled
//! sources).
//!
//! This crate sits in the adapter layer (`domain ← ports ← adapters ← runtime`) and
//! implements the broker ports:
//!
//! - [`KafkaPublisher`] ([`Publisher`](outbox_ports::Publisher)): an idempotent producer
//!   (`enable.idempotence=true`, `acks=all`); the partition key is the Kafka key and the
//!   envelope travels in headers. Every message gets its own outcome.
//! - [`ensure_topics`]: creates the topics the routes name ([`TopicSpec::from_routes`])
//!   with their partition count and replication, or verifies them.
//! - [`KafkaSource`] ([`MessageSource`](outbox_ports::MessageSource)): a consumer-group
//!   subscription for `outbox-runtime`'s `ConsumerRunner`, which stores an offset only
//!   after the message's inbox transaction committed.
//! - [`KafkaDeadLetterTopic`] ([`DeadLetterSink`](outbox_ports::DeadLetterSink)): parks
//!   messages a consumer group gave up on.
//!
//! # Outcomes
//!
//! | delivery report | outcome | relay does |
//! |---|---|---|
//! | acknowledged by all in-sync replicas | `Ok` | marks it published |
//! | timeouts, broker down, leader change, not enough replicas, throttling, unknown codes | transient | retries with backoff |
//! | message too large, invalid/unknown topic or partition, authorization, policy violation | permanent | dead letter at once |
//!
//! See docs/kafka.md for the guarantees, configuration and each failure mode.
//!
//! # Building
//!
//! librdkafka is compiled with cmake: `apt-get install cmake libcurl4-openssl-dev` on
//! Debian. Features `ssl`, `ssl-vendored` and `sasl` enable TLS and SASL in librdkafka.

mod config;
mod dead_letter;
mod outcome;
mod provision;
mod publisher;
mod reader;
mod source;

pub use config::{KafkaConfig, KafkaConfigError};
pub use dead_letter::KafkaDeadLetterTopic;
pub use provision::{ProvisionError, Provisioning, TopicSpec, TopicState, ensure_topics};
pub use publisher::KafkaPublisher;
pub use reader::read_topic;
pub use source::KafkaSource;
