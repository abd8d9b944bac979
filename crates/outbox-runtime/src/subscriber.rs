//! [`LogSubscriber`]: a named cursor that reads the outbox log and hands it, in order,
//! to the user's [`LogHandler`].

use crate::{CancellationToken, ConfigError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_ports::{
    Clock, Cursor, CursorStore, HandlerError, LogEntry, OutboxLog, StoreError, SystemClock,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

/// The user's logic for a named cursor: an audit trail, a projection, a search index.
///
/// Delivery is at least once: a crash after `handle` but before the cursor is saved
/// hands the same entries again, so `handle` must be idempotent (for example, keyed by
/// the message id). A failure hands the same batch again after a pause, as often as
/// it takes: the cursor never skips an entry on its own. An operator moves a cursor
/// past an entry that can never be handled with `outbox cursor reset`.
#[async_trait]
pub trait LogHandler: Send + Sync {
    /// Handles `entries`, in log order.
    async fn handle(&self, entries: &[LogEntry]) -> Result<(), HandlerError>;
}

/// Where a cursor that does not exist yet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogStart {
    /// The start of the log: everything retention has kept.
    #[default]
    Beginning,
    /// Just before the earliest message the relay has not finished.
    Unfinished,
    /// The end of the log: only what is written from now on.
    End,
}

/// How a [`LogSubscriber`] works.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SubscriberConfig {
    /// Entries handed to the handler at most at once (default 100).
    pub batch_size: usize,
    /// Pause when the log has nothing new (default 500 ms).
    pub poll_interval: Duration,
    /// Where a new cursor starts (default [`LogStart::Beginning`]).
    pub start: LogStart,
    /// How long the log may hold the cursor back (a long transaction on PostgreSQL)
    /// before a warning is logged; the time held back is always on the
    /// `outbox_cursor_held_back_seconds` gauge (default 30 s).
    pub stall_warning: Duration,
    /// How often the lag gauges are refreshed; each refresh counts the unread entries,
    /// up to a cap (default 5 s).
    pub lag_interval: Duration,
    /// Longest pause between retries of a failing batch or an unreachable store; pauses
    /// double from `poll_interval` up to this (default 30 s).
    pub max_retry_pause: Duration,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            start: LogStart::Beginning,
            stall_warning: Duration::from_secs(30),
            lag_interval: Duration::from_secs(5),
            max_retry_pause: Duration::from_secs(30),
        }
    }
}

impl SubscriberConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError::Zero("batch_size"));
        }
        for (name, d) in [
            ("poll_interval", self.poll_interval),
            ("stall_warning", self.stall_warning),
            ("lag_interval", self.lag_interval),
            ("max_retry_pause", self.max_retry_pause),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        Ok(())
    }
}

/// The metrics of named cursors on the [`metrics`] facade, labelled `cursor` with the
/// cursor's name. `outbox relay` sets the lag gauges too, for the cursors in its
/// configuration.
pub mod cursor_metrics {
    /// Counter: entries handed to the handler and checkpointed.
    pub const ENTRIES: &str = "outbox_cursor_entries_total";
    /// Gauge: entries after the cursor (capped at `LogLag::COUNT_CAP`).
    pub const LAG_ENTRIES: &str = "outbox_cursor_lag_entries";
    /// Gauge (seconds): age of the oldest entry after the cursor; 0 when caught up.
    pub const LAG_SECONDS: &str = "outbox_cursor_lag_seconds";
    /// Gauge (seconds): how long the log has held the cursor back without a break (a
    /// long-running transaction on PostgreSQL); 0 when it is not held back.
    pub const HELD_BACK_SECONDS: &str = "outbox_cursor_held_back_seconds";
    /// The label on every cursor metric.
    pub const CURSOR_LABEL: &str = "cursor";

    /// Sets the lag gauges of `cursor` from `lag`, as of `now`.
    pub fn record_lag(
        cursor: &str,
        lag: &outbox_ports::LogLag,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        let label = [(CURSOR_LABEL, cursor.to_owned())];
        metrics::gauge!(LAG_ENTRIES, &label).set(lag.entries as f64);
        let age = lag.oldest_at.map_or(0.0, |at| {
            (now - at).to_std().unwrap_or_default().as_secs_f64()
        });
        metrics::gauge!(LAG_SECONDS, &label).set(age);
    }
}

/// What one [`LogSubscriber::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberRound {
    /// Entries handled and checkpointed.
    pub handled: usize,
    /// The log held entries back (see [`LogBatch::held_back`](outbox_ports::LogBatch)).
    pub held_back: bool,
}

/// Why a [`LogSubscriber`] round did not move the cursor. Every one is retried by the
/// spawned loop; the cursor stays where it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriberError {
    /// The log or the cursor store failed.
    #[error("cursor {cursor}: {source}")]
    Store {
        /// The cursor.
        cursor: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
    /// The handler failed; the same entries are handed again.
    #[error("cursor {cursor}: handler failed: {source}")]
    Handler {
        /// The cursor.
        cursor: String,
        /// What the handler said.
        #[source]
        source: HandlerError,
    },
    /// Someone else moved the cursor while this round handled entries (an operator's
    /// `outbox cursor reset`, or a second subscriber with the same name). The move
    /// wins; the next round continues from the cursor's new position.
    #[error("cursor {cursor} was moved by someone else; continuing from its new position")]
    Moved {
        /// The cursor.
        cursor: String,
    },
}

#[derive(Debug, Default)]
struct State {
    cursor: Option<Cursor>,
    held_back_since: Option<DateTime<Utc>>,
    warned: bool,
}

/// A named cursor over the outbox log, handing each entry to a [`LogHandler`] and
/// checkpointing after each batch.
///
/// It reads through an [`OutboxLog`], which is gap-safe: an entry whose transaction
/// commits late is never skipped. It saves its position in a [`CursorStore`] with a
/// compare-and-set, so an operator's reset wins over a running subscriber. Any number of
/// subscribers with different names read the same log independently.
///
/// # Metrics
///
/// On the [`metrics`] facade, labelled `cursor` ([`cursor_metrics`]):
/// `outbox_cursor_entries_total`, `outbox_cursor_lag_entries`,
/// `outbox_cursor_lag_seconds` and `outbox_cursor_held_back_seconds`.
pub struct LogSubscriber {
    name: String,
    log: Arc<dyn OutboxLog>,
    cursors: Arc<dyn CursorStore>,
    handler: Arc<dyn LogHandler>,
    config: SubscriberConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl std::fmt::Debug for LogSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSubscriber")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LogSubscriber {
    /// A subscriber for the cursor `name`. Fails on an empty name or a bad
    /// configuration.
    pub fn new(
        name: impl Into<String>,
        log: Arc<dyn OutboxLog>,
        cursors: Arc<dyn CursorStore>,
        handler: Arc<dyn LogHandler>,
        config: SubscriberConfig,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(ConfigError::Empty("cursor name"));
        }
        config.validate()?;
        Ok(Self {
            name,
            log,
            cursors,
            handler,
            config,
            clock: Arc::new(SystemClock),
            state: Mutex::new(State::default()),
        })
    }

    /// Uses `clock` for every timestamp.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store_error(&self, source: StoreError) -> SubscriberError {
        SubscriberError::Store {
            cursor: self.name.clone(),
            source,
        }
    }

    /// The cursor: the one this subscriber saved last, else the stored one, else a new
    /// one at the configured start.
    async fn cursor(&self) -> Result<Cursor, SubscriberError> {
        if let Some(cursor) = self.state().cursor.clone() {
            return Ok(cursor);
        }
        let stored = self
            .cursors
            .load(&self.name)
            .await
            .map_err(|e| self.store_error(e))?;
        let cursor = match stored {
            Some(cursor) => cursor,
            None => {
                let start = match self.config.start {
                    LogStart::Beginning => Ok(self.log.start()),
                    LogStart::Unfinished => self.log.unfinished_start().await,
                    LogStart::End => self.log.end().await,
                }
                .map_err(|e| self.store_error(e))?;
                match self
                    .cursors
                    .save(&self.name, start.clone(), None, self.clock.now())
                    .await
                {
                    Ok(cursor) => {
                        info!(cursor = %self.name, position = %start.0, "cursor created");
                        cursor
                    }
                    // Another subscriber created it first: use theirs.
                    Err(StoreError::Conflict { .. }) => self
                        .cursors
                        .load(&self.name)
                        .await
                        .map_err(|e| self.store_error(e))?
                        .ok_or_else(|| SubscriberError::Moved {
                            cursor: self.name.clone(),
                        })?,
                    Err(e) => return Err(self.store_error(e)),
                }
            }
        };
        self.state().cursor = Some(cursor.clone());
        Ok(cursor)
    }

    /// Reads one batch after the cursor, hands it to the handler, and saves the
    /// position of its last entry.
    pub async fn run_once(&self) -> Result<SubscriberRound, SubscriberError> {
        let cursor = self.cursor().await?;
        let batch = self
            .log
            .read(&cursor.position, self.config.batch_size)
            .await
            .map_err(|e| self.store_error(e))?;
        self.track_hold_back(batch.held_back);
        let round = SubscriberRound {
            handled: batch.entries.len(),
            held_back: batch.held_back,
        };
        let Some(last) = batch.entries.last() else {
            return Ok(round);
        };
        self.handler
            .handle(&batch.entries)
            .await
            .map_err(|source| SubscriberError::Handler {
                cursor: self.name.clone(),
                source,
            })?;
        match self
            .cursors
            .save(
                &self.name,
                last.position.clone(),
                Some(cursor.version),
                self.clock.now(),
            )
            .await
        {
            Ok(saved) => self.state().cursor = Some(saved),
            Err(StoreError::Conflict { .. }) => {
                self.state().cursor = None;
                return Err(SubscriberError::Moved {
                    cursor: self.name.clone(),
                });
            }
            Err(e) => return Err(self.store_error(e)),
        }
        metrics::counter!(cursor_metrics::ENTRIES, cursor_metrics::CURSOR_LABEL => self.name.clone())
            .increment(batch.entries.len() as u64);
        Ok(round)
    }

    /// Keeps the held-back gauge and warns once per hold-back that lasts longer than
    /// `stall_warning`.
    fn track_hold_back(&self, held_back: bool) {
        let now = self.clock.now();
        let mut state = self.state();
        let held_for = if held_back {
            let since = *state.held_back_since.get_or_insert(now);
            (now - since).to_std().unwrap_or_default()
        } else {
            if state.warned {
                info!(cursor = %self.name, "the log no longer holds the cursor back");
            }
            state.held_back_since = None;
            state.warned = false;
            Duration::ZERO
        };
        if held_for > self.config.stall_warning && !state.warned {
            state.warned = true;
            warn!(
                cursor = %self.name,
                held_for = ?held_for,
                "the outbox log has held this cursor back for longer than stall_warning: \
                 a long-running transaction is open (PostgreSQL: see pg_stat_activity for \
                 the oldest xact_start); entries after it wait until it ends"
            );
        }
        metrics::gauge!(cursor_metrics::HELD_BACK_SECONDS, cursor_metrics::CURSOR_LABEL => self.name.clone())
            .set(held_for.as_secs_f64());
    }

    /// Refreshes the lag gauges from the log.
    async fn record_lag(&self) -> Result<(), SubscriberError> {
        let cursor = self.cursor().await?;
        let lag = self
            .log
            .lag(&cursor.position)
            .await
            .map_err(|e| self.store_error(e))?;
        cursor_metrics::record_lag(&self.name, &lag, self.clock.now());
        Ok(())
    }

    /// Runs the subscriber on the current tokio runtime until `shutdown` is cancelled:
    /// a batch at a time, at once again after a full batch, after `poll_interval` when
    /// caught up, and after a doubling pause when a round fails.
    pub fn spawn(self, shutdown: CancellationToken) -> SubscriberHandle {
        let subscriber = Arc::new(self);
        let span = info_span!("outbox.cursor", cursor = %subscriber.name);
        let task = tokio::spawn(
            Arc::clone(&subscriber)
                .run(shutdown.clone())
                .instrument(span),
        );
        SubscriberHandle { task, shutdown }
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut lag_due = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= lag_due {
                lag_due = tokio::time::Instant::now() + self.config.lag_interval;
                if let Err(e) = self.record_lag().await {
                    warn!(error = %e, "could not measure the cursor's lag");
                }
            }
            let pause = match self.run_once().await {
                Ok(round) => {
                    failures = 0;
                    if round.handled == self.config.batch_size {
                        continue;
                    }
                    self.config.poll_interval
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(error = %e, failures, "cursor round failed");
                    (self.config.poll_interval * 2u32.saturating_pow(failures.min(16)))
                        .min(self.config.max_retry_pause)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// A running [`LogSubscriber`].
#[derive(Debug)]
pub struct SubscriberHandle {
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl SubscriberHandle {
    /// Stops after the round in progress (whose checkpoint is saved, or not, as a
    /// whole) and waits for it.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(e) = self.task.await {
            warn!(error = %e, "cursor task ended abnormally");
        }
    }
}
