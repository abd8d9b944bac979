use crate::CancellationToken;
use outbox_domain::{
    BackoffPolicy, CompensationEvent, CompensationItem, CompensationStatus, ErrorText,
};
use outbox_ports::{
    Clock, CompensationStore, ExecuteError, OperationExecutor, StoreError, SystemClock,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{Instrument, info_span, warn};
use uuid::Uuid;

/// How a [`CompensationWorker`] works.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CompensationConfig {
    /// Items claimed per round; the worker never loads more (default 50).
    pub batch_size: usize,
    /// Pause between rounds that found nothing due (default 5 s).
    pub poll_interval: Duration,
    /// How long a claimed item is reserved for this worker (default 60 s).
    pub reserve_for: Duration,
    /// Delays between retries (default: the `minutes` preset: 1 m doubling).
    pub backoff: BackoffPolicy,
}

impl Default for CompensationConfig {
    fn default() -> Self {
        Self {
            batch_size: 50,
            poll_interval: Duration::from_secs(5),
            reserve_for: Duration::from_secs(60),
            backoff: BackoffPolicy::minutes(),
        }
    }
}

/// What one [`CompensationWorker::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompensationReport {
    /// Items tried.
    pub tried: usize,
    /// Items the executor completed.
    pub resolved: usize,
    /// Items scheduled for another retry.
    pub retrying: usize,
    /// Items that now need an operator.
    pub manual_required: usize,
    /// Items changed by someone else meanwhile (left as they are).
    pub conflicts: usize,
}

/// The counters every [`CompensationWorker`] and [`CompensationOperator`] increments on
/// the [`metrics`] facade, each labelled `operation` (the item's operation type). The
/// library only emits them: install a recorder (a Prometheus exporter, say) in the
/// application to collect them; without one they cost next to nothing.
pub mod compensation_metrics {
    /// Attempts the worker made: every call to the [`OperationExecutor`](outbox_ports::OperationExecutor),
    /// whatever its outcome.
    pub const RETRIED: &str = "outbox_compensation_retried_total";
    /// Items that became `resolved`: by a successful attempt of the worker, or by an
    /// operator.
    pub const RESOLVED: &str = "outbox_compensation_resolved_total";
    /// Items that became `manual_required`: retries used up, or a permanent failure.
    pub const MANUAL_REQUIRED: &str = "outbox_compensation_manual_required_total";
    /// Items an operator abandoned.
    pub const ABANDONED: &str = "outbox_compensation_abandoned_total";
    /// Changes refused because the item had changed meanwhile, nothing overwritten: a
    /// worker's result for an item that someone else changed during the attempt (a
    /// version conflict, or an operator resolved it), or an operator's action on a
    /// version that is no longer current.
    pub const CONFLICTS: &str = "outbox_compensation_conflicts_total";
    /// The label on every compensation counter: the item's operation type.
    pub const OPERATION_LABEL: &str = "operation";
}

fn count(name: &'static str, item: &CompensationItem) {
    metrics::counter!(name, compensation_metrics::OPERATION_LABEL => item.operation_type.clone())
        .increment(1);
}

/// Counts the status an item has just reached.
fn count_status(item: &CompensationItem) {
    match item.status {
        CompensationStatus::Resolved => count(compensation_metrics::RESOLVED, item),
        CompensationStatus::ManualRequired => count(compensation_metrics::MANUAL_REQUIRED, item),
        CompensationStatus::Abandoned => count(compensation_metrics::ABANDONED, item),
        CompensationStatus::Pending | CompensationStatus::Retrying => {}
    }
}

/// Retries failed batch items through an [`OperationExecutor`], in bounded batches, with
/// backoff; after `max_retries` an item waits for an operator.
///
/// # Metrics
///
/// Through the [`metrics`] facade, each counter labelled `operation` with the item's
/// operation type (names in [`compensation_metrics`]):
///
/// | counter | incremented when |
/// |---|---|
/// | `outbox_compensation_retried_total` | the worker calls the executor for an item |
/// | `outbox_compensation_resolved_total` | an item becomes `resolved` (worker or operator) |
/// | `outbox_compensation_manual_required_total` | an item becomes `manual_required` |
/// | `outbox_compensation_abandoned_total` | an operator abandons an item |
/// | `outbox_compensation_conflicts_total` | a change is refused because the item changed meanwhile |
///
/// The operator actions ([`resolve`](Self::resolve), [`abandon`](Self::abandon)) go
/// through a [`CompensationOperator`] and count the same way.
pub struct CompensationWorker {
    store: Arc<dyn CompensationStore>,
    executor: Arc<dyn OperationExecutor>,
    clock: Arc<dyn Clock>,
    config: CompensationConfig,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for CompensationWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompensationWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CompensationWorker {
    /// A worker on the system clock.
    pub fn new(
        store: Arc<dyn CompensationStore>,
        executor: Arc<dyn OperationExecutor>,
        config: CompensationConfig,
    ) -> Self {
        Self {
            store,
            executor,
            clock: Arc::new(SystemClock),
            config,
            rng: Mutex::new(StdRng::from_os_rng()),
        }
    }

    /// Uses `clock` for every timestamp.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Claims one bounded batch of due items and tries each once.
    pub async fn run_once(&self) -> Result<CompensationReport, StoreError> {
        let items = self
            .store
            .claim_due(
                self.clock.now(),
                self.config.batch_size.max(1),
                self.config.reserve_for,
            )
            .await?;
        let mut report = CompensationReport::default();
        for item in items {
            let span = info_span!("compensation.retry", id = %item.id, op = %item.operation_type, batch = %item.batch_id);
            self.retry(item, &mut report).instrument(span).await?;
        }
        Ok(report)
    }

    async fn retry(
        &self,
        item: CompensationItem,
        report: &mut CompensationReport,
    ) -> Result<(), StoreError> {
        report.tried += 1;
        count(compensation_metrics::RETRIED, &item);
        let result = self
            .executor
            .execute(&item.operation_type, &item.payload)
            .await;
        let now = self.clock.now();
        let event = match result {
            Ok(()) => CompensationEvent::AttemptSucceeded,
            Err(ExecuteError::Permanent(e)) => CompensationEvent::AttemptFailed {
                error: ErrorText::new(e),
                retry_at: None,
            },
            Err(ExecuteError::Retryable(e)) => {
                let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
                let delay = self.config.backoff.delay(item.retry_count + 1, &mut *rng);
                let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                CompensationEvent::AttemptFailed {
                    error: ErrorText::new(e),
                    retry_at: Some(at),
                }
            }
            // `ExecuteError` is non-exhaustive: treat unknown kinds as needing an operator.
            Err(e) => CompensationEvent::AttemptFailed {
                error: ErrorText::new(e.to_string()),
                retry_at: None,
            },
        };
        let next = match item.apply(event, now) {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "compensation item changed state meanwhile");
                report.conflicts += 1;
                count(compensation_metrics::CONFLICTS, &item);
                return Ok(());
            }
        };
        match self.store.update(&next, item.version).await {
            Ok(()) => {
                count_status(&next);
                match next.status {
                    CompensationStatus::Resolved => report.resolved += 1,
                    CompensationStatus::ManualRequired => {
                        warn!(reason = %next.failure_reason, "compensation needs an operator");
                        report.manual_required += 1;
                    }
                    _ => report.retrying += 1,
                }
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                report.conflicts += 1;
                count(compensation_metrics::CONFLICTS, &item);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs rounds until `shutdown` is cancelled; the round in progress finishes first.
    pub fn spawn(self, shutdown: CancellationToken) -> CompensationHandle {
        let worker = Arc::new(self);
        let task = tokio::spawn({
            let worker = Arc::clone(&worker);
            let shutdown = shutdown.clone();
            async move {
                while !shutdown.is_cancelled() {
                    let pause = match worker.run_once().await {
                        Ok(r) if r.tried >= worker.config.batch_size => continue,
                        Ok(_) => worker.config.poll_interval,
                        Err(e) => {
                            warn!(error = %e, "compensation round failed");
                            worker.config.poll_interval * 2
                        }
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        });
        CompensationHandle { task, shutdown }
    }

    /// An operator resolves an item (for example one in `manual_required`), recording who
    /// and why. Fails with [`StoreError::Conflict`] if the item changed since it was read.
    /// See [`CompensationOperator::act`] for the errors.
    pub async fn resolve(
        &self,
        id: Uuid,
        by: &str,
        note: &str,
    ) -> Result<CompensationItem, StoreError> {
        self.operator()
            .act(id, OperatorAction::Resolve, by, note, None)
            .await
    }

    /// An operator abandons an item, recording who and why. See
    /// [`CompensationOperator::act`] for the errors.
    pub async fn abandon(
        &self,
        id: Uuid,
        by: &str,
        note: &str,
    ) -> Result<CompensationItem, StoreError> {
        self.operator()
            .act(id, OperatorAction::Abandon, by, note, None)
            .await
    }

    /// The operator actions on this worker's store and clock, for example to act only
    /// on the version the operator looked at.
    pub fn operator(&self) -> CompensationOperator {
        CompensationOperator {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
        }
    }
}

/// What an operator does to a compensation item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OperatorAction {
    /// Mark it resolved (the operator fixed it, or it needs no fixing).
    Resolve,
    /// Give up on it.
    Abandon,
}

impl OperatorAction {
    fn event(self, by: &str, note: &str) -> CompensationEvent {
        let (by, note) = (by.to_owned(), note.to_owned());
        match self {
            Self::Resolve => CompensationEvent::Resolve { by, note },
            Self::Abandon => CompensationEvent::Abandon { by, note },
        }
    }
}

/// Operator actions on compensation items: the domain's `Resolve` / `Abandon`
/// transitions, written with a compare-and-set on the item's version. Needs no
/// executor, so admin tools (the `outbox compensation` command) use it directly; a
/// [`CompensationWorker`] hands one out with [`CompensationWorker::operator`].
///
/// Increments the same counters as the worker (see [`CompensationWorker`]'s metrics):
/// `resolved`, `abandoned` and `conflicts`.
#[derive(Clone)]
pub struct CompensationOperator {
    store: Arc<dyn CompensationStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CompensationOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompensationOperator")
            .finish_non_exhaustive()
    }
}

impl CompensationOperator {
    /// Operator actions on `store`, on the system clock.
    pub fn new(store: Arc<dyn CompensationStore>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
        }
    }

    /// Uses `clock` for the timestamps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Applies `action` to item `id` as operator `by` with `note`, and returns the item
    /// as stored. With `expected_version`, acts only if the item still has that version
    /// (the one the operator looked at).
    ///
    /// Errors, none of which changed anything:
    /// - [`StoreError::NotFound`]: no item has this id;
    /// - [`StoreError::Conflict`]: the item's version is not `expected_version`, or the
    ///   item changed between reading and writing it;
    /// - [`StoreError::InvalidInput`]: the domain refuses the action, because the item
    ///   is already resolved or abandoned, or `by` is blank;
    /// - any other store error.
    pub async fn act(
        &self,
        id: Uuid,
        action: OperatorAction,
        by: &str,
        note: &str,
        expected_version: Option<u64>,
    ) -> Result<CompensationItem, StoreError> {
        let item = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "compensation item",
                id: id.to_string(),
            })?;
        let conflict = |expected| StoreError::Conflict {
            what: "compensation item",
            id: id.to_string(),
            expected,
        };
        if let Some(expected) = expected_version
            && expected != item.version
        {
            count(compensation_metrics::CONFLICTS, &item);
            return Err(conflict(expected));
        }
        let next = item
            .apply(action.event(by, note), self.clock.now())
            .map_err(|e| StoreError::InvalidInput(e.to_string()))?;
        match self.store.update(&next, item.version).await {
            Ok(()) => {
                count_status(&next);
                Ok(next)
            }
            Err(e) => {
                if matches!(e, StoreError::Conflict { .. }) {
                    count(compensation_metrics::CONFLICTS, &item);
                }
                Err(e)
            }
        }
    }
}

/// A running [`CompensationWorker`].
#[derive(Debug)]
pub struct CompensationHandle {
    task: JoinHandle<()>,
    shutdown: CancellationToken,
}

impl CompensationHandle {
    /// Stops after the round in progress.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(e) = self.task.await {
            warn!(error = %e, "compensation worker ended abnormally");
        }
    }
}
