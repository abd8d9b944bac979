//! The Pulsar adapter of outbox-rs.
//!
//! - [`PulsarPublisher`] implements `outbox_ports::Publisher`: the partition key is the
//!   Pulsar message key, the envelope travels as message properties, and every message
//!   gets its own outcome from its own send receipt.
//! - [`PulsarSource`] implements `outbox_ports::MessageSource`: a `Key_Shared` or
//!   `Failover` subscription for `outbox_runtime::ConsumerRunner`, which acknowledges
//!   only after the inbox transaction committed.
//! - [`PulsarDeadLetterTopic`] implements `outbox_ports::DeadLetterSink`: parked
//!   messages go to a dead-letter topic.
//!
//! The crate speaks Pulsar's binary protocol itself (connection, lookup, producer,
//! consumer; token authentication; TLS with the `tls` feature, on by default) rather
//! than through the `pulsar` crate, which cannot set a message's sequence id and
//! rejects frames without the optional checksum: docs/pulsar.md explains both.
//! Building it needs `protoc` (Debian: `apt-get install protobuf-compiler`).

mod client;
mod config;
mod connection;
mod dead_letter;
mod error;
mod frame;
mod proto;
mod publisher;
mod source;

pub use config::{Deduplication, PulsarConfig, PulsarConfigError, ServiceUrl};
pub use dead_letter::PulsarDeadLetterTopic;
pub use error::{PulsarError, ServerErrorCode};
pub use publisher::PulsarPublisher;
pub use source::{ERROR_HEADER, PulsarSource, SubscribeError, Subscription};

#[cfg(test)]
mod test_broker;
#[cfg(test)]
mod tests;
