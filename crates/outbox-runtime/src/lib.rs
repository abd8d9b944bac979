//! The tokio workers of outbox-rs, wired to the ports.
//!
//! This crate sits above the ports and adapters (`domain ← ports ← adapters ← runtime
//! ← cli`) and knows no adapter: it drives any [`MessageStore`](outbox_ports::MessageStore)
//! and [`Publisher`](outbox_ports::Publisher), the in-memory ones in tests and the
//! database and broker ones in production.
//!
//! - [`Relay`]: claims batches, publishes them outside any database transaction, and
//!   settles each message with its own outcome (published, retry with backoff, dead).
//!   [`Relay::spawn`] runs `concurrency` claim loops plus a lease sweeper that returns
//!   the work of crashed relays to the pool. Each loop is a pipeline: it claims the next
//!   batch while up to `pipeline_depth` earlier ones are at the broker.
//! - [`ConsumerRunner`]: consumes a broker subscription for one consumer group, runs
//!   the user's handler in the same transaction as the inbox record of the message id
//!   (so a redelivery is skipped), and acknowledges only after the commit; handler
//!   failures retry with backoff and are then parked as dead letters.
//! - [`CompensationWorker`]: retries failed batch items through the
//!   [`OperationExecutor`](outbox_ports::OperationExecutor) port, in bounded batches;
//!   [`CompensationOperator`] resolves or abandons items for an operator. Both count
//!   what they do on the [`metrics`](https://docs.rs/metrics) facade
//!   ([`compensation_metrics`]).
//!
//! - [`LogSubscriber`]: a named cursor over the outbox log
//!   ([`OutboxLog`](outbox_ports::OutboxLog), gap-safe), handing entries in order to the
//!   user's [`LogHandler`] and checkpointing after each batch; it warns when a long
//!   transaction holds it back ([`cursor_metrics`]).
//!
//! Shutdown is graceful: cancelling stops new claims, the batches in flight are published
//! and settled (bounded by the drain timeout), then the publisher is flushed. Anything
//! cut off by the timeout is not lost: its lease expires and another relay delivers it.

mod compensation;
mod config;
mod consumer;
mod direct;
mod relay;
mod subscriber;

pub use compensation::{
    CompensationConfig, CompensationHandle, CompensationOperator, CompensationReport,
    CompensationWorker, OperatorAction, compensation_metrics,
};
pub use config::{ConfigError, RelayConfig};
pub use consumer::{ConsumerConfig, ConsumerCounters, ConsumerRunner, SpanFactory, consume_span};
pub use direct::DirectPublisher;
pub use relay::{
    BatchReport, Relay, RelayCounters, RelayError, RelayHandle, RelayWaker, relay_metrics,
};
pub use subscriber::{
    LogHandler, LogStart, LogSubscriber, SubscriberConfig, SubscriberError, SubscriberHandle,
    SubscriberRound, cursor_metrics,
};
pub use tokio_util::sync::CancellationToken;
