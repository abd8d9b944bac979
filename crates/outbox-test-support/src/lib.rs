//! Test support for outbox-rs and for services that use it.
//!
//! - In-memory adapters of every storage port and a publisher that acts as a broker:
//!   real, thread-safe implementations that pass the same conformance suites as the
//!   database and broker adapters, usable in your own tests and in `outbox demo`.
//! - Consumer-side doubles: [`InMemorySource`] (a partitioned subscription with
//!   rebalances), [`InMemoryInbox`] as a [`TransactionalInbox`](outbox_ports::TransactionalInbox)
//!   whose [`MemoryTx`] stages effects, [`InMemoryDeadLetters`], and [`TextEffects`], a
//!   handler for the broker adapters' runner tests.
//! - Fault-injecting wrappers ([`FaultyPublisher`], [`FaultyStore`]) that fail N times,
//!   fail permanently, fail for one key, or delay.
//! - With the `sea-orm` feature, `SqlEffects`: a consumer handler that writes its effect
//!   in the inbox's database transaction and checks per-key order in SQL; and
//!   `fresh_postgres` / `scalar` for end-to-end tests on the test server.
//! - A [`ManualClock`] for deterministic retry and lease tests.
//! - The **crash-point kit** ([`crash`]): named failpoints, arming them in a relay
//!   process (feature `crash`), running it until it dies there, and the invariants to
//!   check on what the consumer received.
//! - The **conformance suites** ([`conformance`]): one per port (message store,
//!   publisher, inbox, cursor store, compensation store). Every adapter crate runs them
//!   through [`store_conformance_tests!`], [`publisher_conformance_tests!`],
//!   [`inbox_conformance_tests!`], [`cursor_conformance_tests!`] and
//!   [`compensation_conformance_tests!`].
//!
//! This crate sits beside the adapters (`ports ← test-support`); it must not depend on
//! the runtime, so runtime tests can use it without a cycle.

mod clock;
pub mod conformance;
#[cfg(unix)]
pub mod crash;
mod faults;
mod memory_compensation;
mod memory_consumer;
mod memory_inbox;
mod memory_publisher;
mod memory_store;
mod publish;
#[cfg(feature = "sea-orm")]
mod sql_database;
#[cfg(feature = "sea-orm")]
mod sql_effects;
mod text_effects;

pub use clock::ManualClock;
pub use faults::{FaultyPublisher, FaultyStore, StoreOp};
pub use memory_compensation::InMemoryCompensationStore;
pub use memory_consumer::{InMemoryDeadLetters, InMemorySource};
pub use memory_inbox::{InMemoryCursorStore, InMemoryInbox, MemoryTx};
pub use memory_publisher::InMemoryPublisher;
pub use memory_store::InMemoryStore;
pub use publish::mark_published;
#[cfg(feature = "sea-orm")]
pub use sql_database::{POSTGRES_URL_VAR, fresh_postgres, scalar};
#[cfg(feature = "sea-orm")]
pub use sql_effects::{EFFECTS_TABLE, SqlEffects};
pub use text_effects::{TextEffects, text_message};
