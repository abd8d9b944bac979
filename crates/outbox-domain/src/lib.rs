//! The pure core of outbox-rs.
//!
//! This crate sits at the bottom of the dependency graph
//! (`domain ← ports ← adapters ← runtime ← cli`). It owns every rule that can be
//! stated without I/O:
//!
//! - the [message envelope](message::OutboxMessage) that travels from the producer's
//!   transaction to the consumer's inbox,
//! - the [delivery state machine](delivery) (pending → in flight → published → consumed,
//!   retries, dead letters, replay),
//! - the [backoff policy](backoff::BackoffPolicy) that spaces out retries,
//! - the [per-key ordering rule](ordering) that parks only a failing key,
//! - the [compensation state machine](compensation) for failed batch items,
//! - the [validation rules](validation) every store applies before writing a message,
//! - [persistence strategies](strategy::PersistenceStrategy) and the validated
//!   [route registry](routing::RouteRegistry).
//!
//! Architecture invariant: nothing here performs I/O, reads the clock or draws random
//! numbers on its own. Time and randomness are parameters, so every rule is testable
//! with a plain `#[test]`. The crate must never depend on tokio, sea-orm, rdkafka or
//! pulsar; `cargo xtask test` checks this with `cargo tree`.

pub mod backoff;
pub mod compensation;
pub mod delivery;
pub mod error_text;
pub mod message;
pub mod ordering;
pub mod routing;
pub mod strategy;
pub mod validation;

pub use backoff::{BackoffPolicy, InvalidBackoff, Jitter};
pub use compensation::{
    CompensationEvent, CompensationItem, CompensationStatus, CompensationTransitionError,
    NewCompensationItem,
};
pub use delivery::{Delivery, DeliveryEvent, Lease, LeaseToken, MessageStatus, TransitionError};
pub use error_text::{DEFAULT_MAX_ERROR_LEN, ErrorText};
pub use message::{MessageId, OutboxMessage, Payload, TraceContext};
pub use ordering::{OrderingKey, select_heads};
pub use routing::{
    EventRouteConfig, Identifier, InvalidIdentifier, Route, RouteError, RouteRegistry,
    RoutesConfig, ServiceRoute, TopicName,
};
pub use strategy::PersistenceStrategy;
pub use validation::{InvalidMessage, MessageLimits};
