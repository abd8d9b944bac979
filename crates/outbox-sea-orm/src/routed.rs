//! [`RoutedOutbox`]: writes each message to its service's outbox table, with the
//! persistence strategy of its route or of the call.

use std::collections::BTreeMap;

use outbox_domain::{
    Identifier, MessageId, OutboxMessage, Payload, PersistenceStrategy, RouteError, RouteRegistry,
    TraceContext,
};
use outbox_ports::{StoreError, StoreResult};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionSession, TransactionTrait};

use crate::error::db_error;
use crate::store::{SeaOrmStore, StoreConfig};

/// The producer side of a routed deployment: one [`SeaOrmStore`] per outbox table the
/// [`RouteRegistry`] names, and the one call that writes messages where their routes
/// say.
///
/// - Every table name comes from the validated registry, never from a message or a
///   caller's string.
/// - Several services may share a table (compatibility mode for small deployments: the
///   rows carry their `service`), or each may have its own, with its own relays
///   ([`store_for`](Self::store_for)): then a slow or failing service never delays
///   another.
/// - The strategy is the call's if given, else the route's: `DbAndPublish` rows are
///   pending for the relays, `DbOnly` rows are audit records no relay claims, and
///   `PublishOnly` messages are not stored but handed back, to be published after the
///   commit (`outbox_runtime::DirectPublisher` does it with bounded retries).
#[derive(Debug, Clone)]
pub struct RoutedOutbox {
    registry: RouteRegistry,
    stores: BTreeMap<Identifier, SeaOrmStore>,
    trace_context: Option<fn() -> Option<TraceContext>>,
    wakers: crate::wake::Wakers,
}

/// What [`RoutedOutbox::write_in`] did with each message.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Written {
    /// Stored for the relays (`DbAndPublish`).
    pub enqueued: Vec<MessageId>,
    /// Stored as audit records (`DbOnly`).
    pub recorded: Vec<MessageId>,
    /// Not stored (`PublishOnly`): publish them yourself once the transaction has
    /// committed, for example with `outbox_runtime::DirectPublisher`.
    pub publish_only: Vec<OutboxMessage>,
}

/// Why [`RoutedOutbox::write_in`] wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutedWriteError {
    /// No route for the message's event type (add one, or fix the event type).
    #[error("message {id}: {source}")]
    Route {
        /// The message.
        id: MessageId,
        /// What the registry said.
        source: RouteError,
    },
    /// The message names another service or topic than its event type's route (build
    /// messages with [`RoutedOutbox::message`] to get them right).
    #[error("message {id} ({event_type}): its {field} is `{given}`, but its route says `{routed}`")]
    Mismatch {
        /// The message.
        id: MessageId,
        /// Its event type.
        event_type: String,
        /// `service` or `topic`.
        field: &'static str,
        /// What the message says.
        given: String,
        /// What the route says.
        routed: String,
    },
    /// The store refused (invalid message, duplicate id, database error); see
    /// [`StoreError::is_retryable`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RoutedOutbox {
    /// One store per distinct table of `registry`, on `db`, each with `config` (whose
    /// `table` is replaced by the route's).
    pub fn new(
        db: DatabaseConnection,
        registry: RouteRegistry,
        config: StoreConfig,
    ) -> StoreResult<Self> {
        let mut stores = BTreeMap::new();
        for service in registry.services() {
            if !stores.contains_key(&service.table) {
                let config = config.clone().with_table(service.table.clone());
                stores.insert(service.table.clone(), SeaOrmStore::new(db.clone(), config)?);
            }
        }
        Ok(Self {
            registry,
            stores,
            trace_context: None,
            wakers: crate::wake::Wakers::default(),
        })
    }

    /// Calls `waker` after every commit handed to [`commit`](Self::commit): the
    /// `RelayWaker`s of the relays in this process (a spurious wake of a relay whose
    /// table got nothing is harmless), and a `PgNotifier` per table for relays
    /// elsewhere.
    pub fn with_waker(mut self, waker: std::sync::Arc<dyn outbox_ports::Wake>) -> Self {
        self.wakers.push(waker);
        self
    }

    /// Commits `txn`, in which [`write_in`](Self::write_in) wrote, then wakes the
    /// wakers, so that relays deliver at once rather than at their next poll.
    pub async fn commit(&self, txn: sea_orm::DatabaseTransaction) -> StoreResult<()> {
        txn.commit().await.map_err(crate::error::db_error)?;
        self.wakers.wake();
        Ok(())
    }

    /// Stamps every message [`message`](Self::message) builds with the trace context
    /// `current` returns: the W3C context of the span current at enqueue (for
    /// OpenTelemetry, `outbox_otel::current_trace_context`). Relays send it as the
    /// `traceparent` / `tracestate` headers, and consumers continue the trace.
    pub fn with_trace_context(mut self, current: fn() -> Option<TraceContext>) -> Self {
        self.trace_context = Some(current);
        self
    }

    /// The routes.
    pub fn registry(&self) -> &RouteRegistry {
        &self.registry
    }

    /// The store of `service`'s table, for its relays; `None` for an undeclared service.
    pub fn store_for(&self, service: &str) -> Option<&SeaOrmStore> {
        let service = self
            .registry
            .services()
            .find(|s| s.name.as_str() == service)?;
        self.stores.get(&service.table)
    }

    /// Every table with its store, one relay group each.
    pub fn stores(&self) -> impl Iterator<Item = (&Identifier, &SeaOrmStore)> {
        self.stores.iter()
    }

    /// Applies the migrations and creates every outbox table the routes name (see
    /// [`SeaOrmStore::create_tables`]).
    pub async fn create_tables(&self) -> StoreResult<()> {
        for store in self.stores.values() {
            store.create_tables().await?;
        }
        Ok(())
    }

    /// A message for `event_type`, with its route's service and topic.
    pub fn message(
        &self,
        event_type: &str,
        partition_key: impl Into<String>,
        payload: Payload,
    ) -> Result<OutboxMessage, RouteError> {
        let message =
            self.registry
                .message(event_type, partition_key, payload, chrono::Utc::now())?;
        Ok(match self.trace_context.and_then(|current| current()) {
            Some(context) => message.with_trace_context(context),
            None => message,
        })
    }

    /// Writes `messages` through `conn` (your transaction, to commit them with your
    /// business rows) according to their strategies: `strategy` if given, else each
    /// route's.
    ///
    /// All or nothing: every message is routed and checked before any SQL runs, and
    /// the writes to several tables run in one savepoint (a write to one table is all
    /// or nothing by itself, see [`SeaOrmStore::enqueue_in`]), so an error leaves
    /// `conn` as it was and your transaction usable.
    pub async fn write_in<C>(
        &self,
        conn: &C,
        messages: Vec<OutboxMessage>,
        strategy: Option<PersistenceStrategy>,
    ) -> Result<Written, RoutedWriteError>
    where
        C: ConnectionTrait + TransactionTrait,
    {
        let mut written = Written::default();
        // (table, strategy) → messages, in input order within each.
        let mut groups: BTreeMap<(&Identifier, bool), Vec<OutboxMessage>> = BTreeMap::new();
        let mut ids = std::collections::HashSet::with_capacity(messages.len());
        for message in messages {
            // Across tables too: one id is one message.
            if !ids.insert(message.id) {
                return Err(StoreError::DuplicateMessage(message.id).into());
            }
            let route = self.registry.route(&message.event_type).map_err(|source| {
                RoutedWriteError::Route {
                    id: message.id,
                    source,
                }
            })?;
            let service = route.service;
            for (field, given, routed) in [
                ("service", &message.service, service.name.as_str()),
                ("topic", &message.topic, service.topic.as_str()),
            ] {
                if given != routed {
                    return Err(RoutedWriteError::Mismatch {
                        id: message.id,
                        event_type: message.event_type.clone(),
                        field,
                        given: given.clone(),
                        routed: routed.to_owned(),
                    });
                }
            }
            match strategy.unwrap_or(route.strategy) {
                PersistenceStrategy::PublishOnly => {
                    // Not stored, but held to the same limits as stored messages.
                    self.stores[&service.table].check(std::slice::from_ref(&message))?;
                    written.publish_only.push(message);
                }
                stored => groups
                    .entry((&service.table, stored.is_relayed()))
                    .or_default()
                    .push(message),
            }
        }
        for ((table, _), group) in &groups {
            self.stores[*table].check(group)?;
        }
        if groups.is_empty() {
            return Ok(written);
        }
        if groups.len() == 1 {
            // One table, one strategy: the store's own write is all or nothing already
            // (one round trip for up to 500 messages), so no savepoint is needed.
            for ((table, relayed), group) in groups {
                let store = &self.stores[table];
                if relayed {
                    written.enqueued = store.enqueue_in(conn, group).await?;
                } else {
                    written.recorded = store.record_in(conn, group).await?;
                }
            }
            return Ok(written);
        }
        let savepoint = conn.begin().await.map_err(db_error)?;
        for ((table, relayed), group) in groups {
            let store = &self.stores[table];
            let stored = if relayed {
                store.enqueue_in(&savepoint, group).await
            } else {
                store.record_in(&savepoint, group).await
            };
            match stored {
                Ok(ids) if relayed => written.enqueued.extend(ids),
                Ok(ids) => written.recorded.extend(ids),
                Err(err) => {
                    savepoint.rollback().await.map_err(db_error)?;
                    return Err(err.into());
                }
            }
        }
        savepoint.commit().await.map_err(db_error)?;
        Ok(written)
    }
}
