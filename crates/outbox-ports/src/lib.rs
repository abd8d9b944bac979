//! The ports of outbox-rs: the traits that adapters implement and the runtime drives.
//!
//! This crate sits between the pure [`outbox_domain`] and everything that does I/O
//! (`domain ← ports ← adapters ← runtime ← cli`). It holds only trait definitions and
//! the plain data and error types their signatures need, so it stays small and stable:
//! services depend on it to swap adapters in their tests.
//!
//! | port | implemented by |
//! |---|---|
//! | [`MessageStore`] | in-memory (test-support), sea-orm (PostgreSQL, MySQL, SQLite) |
//! | [`Publisher`] | in-memory (test-support), Kafka, Pulsar |
//! | [`Inbox`], [`TransactionalInbox`] | in-memory (test-support), sea-orm |
//! | [`MessageSource`] | in-memory (test-support), Kafka, Pulsar |
//! | [`MessageHandler`] | the user's service |
//! | [`DeadLetterSink`] | in-memory (test-support), sea-orm table, Kafka topic |
//! | [`CompensationStore`] | in-memory (test-support), sea-orm |
//! | [`OperationExecutor`] | the user's service |
//! | [`CursorStore`] | in-memory (test-support), sea-orm |
//! | [`OutboxLog`] | in-memory (test-support), sea-orm |
//! | [`Clock`] | [`SystemClock`], `ManualClock` (test-support) |
//!
//! Every adapter proves its implementation with the conformance suites in
//! `outbox-test-support`. With the `mock` feature, `mockall` mocks of every trait
//! (`MockMessageStore`, `MockPublisher`, …) are generated for unit tests.

mod clock;
mod compensation;
mod consumer;
mod cursor;
mod error;
mod inbox;
mod publisher;
mod store;
mod wake;

pub use clock::{Clock, SystemClock};
pub use compensation::{
    CompensationFilter, CompensationStore, ExecuteError, OperationExecutor, check_max_retries,
    reservation,
};
pub use consumer::{
    ConsumeError, DeadLetter, DeadLetterSink, HandlerError, IncomingMessage, MessageHandler,
    MessageSource, TransactionalInbox,
};
pub use cursor::{Cursor, CursorPosition, CursorStore, LogBatch, LogEntry, LogLag, OutboxLog};
pub use error::{StoreError, StoreResult};
pub use inbox::{Inbox, InboxOutcome};
pub use publisher::{
    PublishError, PublishErrorKind, PublishOutcome, Publisher, header, wire_headers,
};
pub use store::{
    ClaimRequest, ClaimedMessage, Disposition, ListFilter, MessageStore, OutboxStats, SettleReport,
    Settlement, StoredMessage,
};
pub use wake::Wake;

#[cfg(feature = "mock")]
pub use clock::MockClock;
#[cfg(feature = "mock")]
pub use compensation::{MockCompensationStore, MockOperationExecutor};
#[cfg(feature = "mock")]
pub use cursor::{MockCursorStore, MockOutboxLog};
#[cfg(feature = "mock")]
pub use inbox::MockInbox;
#[cfg(feature = "mock")]
pub use publisher::MockPublisher;
#[cfg(feature = "mock")]
pub use store::MockMessageStore;
