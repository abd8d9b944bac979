//! Waking relays right after a commit: in this process ([`SeaOrmStore::with_waker`]
//! with the runtime's `RelayWaker`, then [`SeaOrmStore::commit`]), and in other
//! processes on PostgreSQL ([`PgNotifier`] sends a coalesced `NOTIFY`, [`PgWakeListener`]
//! turns it into a wake).
//!
//! Why the `NOTIFY` is sent after the commit, on a connection of its own, and at most
//! once per window: a `NOTIFY` inside the business transaction would add a statement to
//! every enqueue, and PostgreSQL serialises the commits of notifying transactions on one
//! global lock. Sent afterwards, it costs the writer nothing but a signal to a
//! background task, and one `NOTIFY` per window carries any number of commits. The
//! relays' polling stays on: a wake that is lost (a listener reconnecting, a writer that
//! commits without [`SeaOrmStore::commit`]) costs only latency.

use crate::SeaOrmStore;
use crate::error::db_error;
use outbox_ports::{StoreResult, Wake};
use sea_orm::DatabaseTransaction;
use std::sync::Arc;

#[cfg(feature = "postgres")]
pub use pg::{PgNotifier, PgWakeListener};

/// The wakers a store calls after its commits.
#[derive(Clone, Default)]
pub(crate) struct Wakers(Vec<Arc<dyn Wake>>);

impl std::fmt::Debug for Wakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} waker(s)", self.0.len())
    }
}

impl Wakers {
    pub(crate) fn push(&mut self, waker: Arc<dyn Wake>) {
        self.0.push(waker);
    }

    pub(crate) fn wake(&self) {
        for waker in &self.0 {
            waker.wake();
        }
    }
}

impl SeaOrmStore {
    /// Calls `waker` after every commit this store makes ([`enqueue`]) or is handed
    /// ([`commit`](Self::commit)): give it the `RelayWaker` of a relay in this process,
    /// and a [`PgNotifier`] for relays in other processes.
    ///
    /// [`enqueue`]: outbox_ports::MessageStore::enqueue
    pub fn with_waker(mut self, waker: Arc<dyn Wake>) -> Self {
        self.wakers.push(waker);
        self
    }

    /// Commits `txn`, in which messages were written with
    /// [`enqueue_in`](Self::enqueue_in), then wakes this store's wakers, so that the
    /// relays deliver at once rather than at their next poll. Committing `txn` yourself
    /// is just as safe; the messages then wait for a poll.
    pub async fn commit(&self, txn: DatabaseTransaction) -> StoreResult<()> {
        txn.commit().await.map_err(db_error)?;
        self.wakers.wake();
        Ok(())
    }
}

/// The PostgreSQL `NOTIFY` / `LISTEN` pair.
#[cfg(feature = "postgres")]
mod pg {
    use outbox_domain::Identifier;
    use outbox_ports::{StoreError, StoreResult, Wake};
    use sea_orm::DatabaseConnection;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;
    use tokio::task::JoinHandle;
    use tracing::{debug, warn};

    /// The `LISTEN`/`NOTIFY` channel of an outbox table.
    fn channel(table: &Identifier) -> String {
        let mut name = format!("outbox_{table}");
        name.truncate(63);
        name
    }

    /// Tells relays in other processes that messages were committed to a table, with a
    /// PostgreSQL `NOTIFY` on the table's channel: at most one per `window` (the first at
    /// once), sent after the commit from a connection of the pool, never inside the
    /// business transaction. Give it to the store with [`SeaOrmStore::with_waker`](crate::SeaOrmStore::with_waker); the
    /// relays' processes run a [`PgWakeListener`].
    ///
    /// The background task ends when the notifier is dropped.
    #[derive(Debug)]
    pub struct PgNotifier {
        signal: Arc<Notify>,
        sent: Arc<AtomicU64>,
        task: JoinHandle<()>,
    }

    impl PgNotifier {
        /// Starts the notifier for `table` on `db` (a PostgreSQL connection) on the current
        /// tokio runtime.
        pub fn spawn(db: DatabaseConnection, table: &Identifier, window: Duration) -> Self {
            let signal = Arc::new(Notify::new());
            let sent = Arc::new(AtomicU64::new(0));
            let channel = channel(table);
            let task = tokio::spawn({
                let (signal, sent) = (signal.clone(), sent.clone());
                async move {
                    let pool = db.get_postgres_connection_pool();
                    loop {
                        signal.notified().await;
                        match sea_orm::sqlx::query("SELECT pg_notify($1, '')")
                            .bind(&channel)
                            .execute(pool)
                            .await
                        {
                            Ok(_) => {
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                warn!(error = %e, %channel, "NOTIFY failed; relays elsewhere will poll")
                            }
                        }
                        // Commits signalled meanwhile are carried by the next NOTIFY.
                        tokio::time::sleep(window).await;
                    }
                }
            });
            Self { signal, sent, task }
        }

        /// How many `NOTIFY`s it has sent.
        pub fn sent(&self) -> u64 {
            self.sent.load(Ordering::Relaxed)
        }
    }

    impl Wake for PgNotifier {
        fn wake(&self) {
            self.signal.notify_one();
        }
    }

    impl Drop for PgNotifier {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Wakes a relay when a [`PgNotifier`] in any process announces commits to a table:
    /// a `LISTEN` on the table's channel, on a connection of its own from `db`'s pool. It
    /// also wakes after reconnecting, since notifications sent meanwhile are lost. The
    /// task ends when the listener is dropped.
    #[derive(Debug)]
    pub struct PgWakeListener {
        task: JoinHandle<()>,
    }

    impl PgWakeListener {
        /// Starts listening for `table` on `db` (a PostgreSQL connection), waking `waker`.
        /// Fails if the first `LISTEN` fails.
        pub async fn spawn(
            db: &DatabaseConnection,
            table: &Identifier,
            waker: Arc<dyn Wake>,
        ) -> StoreResult<Self> {
            use sea_orm::sqlx::postgres::PgListener;
            let channel = channel(table);
            let mut listener = PgListener::connect_with(db.get_postgres_connection_pool())
                .await
                .map_err(|e| StoreError::Unavailable(format!("LISTEN on {channel}: {e}")))?;
            listener
                .listen(&channel)
                .await
                .map_err(|e| StoreError::Unavailable(format!("LISTEN on {channel}: {e}")))?;
            let task = tokio::spawn(async move {
                loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => waker.wake(),
                        Ok(None) => {
                            debug!(%channel, "LISTEN connection lost; reconnecting");
                            waker.wake();
                        }
                        Err(e) => {
                            warn!(error = %e, %channel, "LISTEN failed; retrying in 1 s");
                            waker.wake();
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
            Ok(Self { task })
        }
    }

    impl Drop for PgWakeListener {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}
