//! sea-orm storage for outbox-rs: the adapters of the storage ports on PostgreSQL,
//! MySQL/MariaDB and SQLite.
//!
//! This crate sits in the adapter layer (`domain ← ports ← adapters ← runtime`). It
//! implements [`MessageStore`](outbox_ports::MessageStore) ([`SeaOrmStore`]),
//! [`Inbox`](outbox_ports::Inbox) and
//! [`TransactionalInbox`](outbox_ports::TransactionalInbox) ([`SeaOrmInbox`]),
//! [`DeadLetterSink`](outbox_ports::DeadLetterSink) ([`SeaOrmDeadLetters`]),
//! [`CursorStore`](outbox_ports::CursorStore) ([`SeaOrmCursorStore`]) and
//! [`CompensationStore`](outbox_ports::CompensationStore) ([`SeaOrmCompensationStore`])
//! with hand-written SQL per backend, and [`RoutedOutbox`], which writes each message to
//! its service's table with its route's persistence strategy, and translates every database error into a
//! [`StoreError`](outbox_ports::StoreError). It knows nothing of brokers or of the
//! runtime. The tables come from `outbox-migrations`.
//!
//! The two calls an application makes inside its own transaction are
//! [`SeaOrmStore::enqueue_in`] (producer side) and [`SeaOrmInbox::process_once`]
//! (consumer side):
//!
//! ```no_run
//! # async fn example(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_domain::{OutboxMessage, Payload};
//! use outbox_sea_orm::{SeaOrmStore, StoreConfig};
//! use sea_orm::TransactionTrait;
//!
//! let store = SeaOrmStore::new(db.clone(), StoreConfig::default())?;
//! let txn = db.begin().await?;
//! // ... write business rows through `txn` ...
//! let event = OutboxMessage::new(
//!     "orders", "order.created", "orders.events", "order-42",
//!     Payload::Json(serde_json::json!({"order": 42})), chrono::Utc::now(),
//! );
//! store.enqueue_in(&txn, vec![event]).await?;
//! txn.commit().await?; // the business rows and the message commit together
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `postgres`, `mysql`, `sqlite` (all default): the sqlx driver of each backend.
//! - `rustls`: TLS connections to the database server.

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!("enable at least one of the features `postgres`, `mysql` and `sqlite`");

mod compensation;
mod connect;
mod cursor;
mod dead_letter;
mod dialect;
mod error;
mod inbox;
mod log;
mod routed;
mod row;
mod store;
mod wake;

pub use compensation::SeaOrmCompensationStore;
pub use connect::{ConnectError, connect, redact_url};
pub use cursor::SeaOrmCursorStore;
pub use dead_letter::{ParkedMessage, SeaOrmDeadLetters};
pub use inbox::SeaOrmInbox;
pub use routed::{RoutedOutbox, RoutedWriteError, Written};
pub use store::{KEY_HEADS_PLAN, SeaOrmStore, StoreConfig};
#[cfg(feature = "postgres")]
pub use wake::{PgNotifier, PgWakeListener};
