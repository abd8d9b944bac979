use crate::CancellationToken;
use outbox_domain::{BackoffPolicy, CompensationEvent, CompensationItem, ErrorText};
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

/// Retries failed batch items through an [`OperationExecutor`], in bounded batches, with
/// backoff; after `max_retries` an item waits for an operator.
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
                return Ok(());
            }
        };
        match self.store.update(&next, item.version).await {
            Ok(()) => {
                match next.status {
                    outbox_domain::CompensationStatus::Resolved => report.resolved += 1,
                    outbox_domain::CompensationStatus::ManualRequired => {
                        warn!(reason = %next.failure_reason, "compensation needs an operator");
                        report.manual_required += 1;
                    }
                    _ => report.retrying += 1,
                }
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => {
                report.conflicts += 1;
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
    pub async fn resolve(
        &self,
        id: Uuid,
        by: &str,
        note: &str,
    ) -> Result<CompensationItem, StoreError> {
        self.operator(
            id,
            CompensationEvent::Resolve {
                by: by.to_owned(),
                note: note.to_owned(),
            },
        )
        .await
    }

    /// An operator abandons an item, recording who and why.
    pub async fn abandon(
        &self,
        id: Uuid,
        by: &str,
        note: &str,
    ) -> Result<CompensationItem, StoreError> {
        self.operator(
            id,
            CompensationEvent::Abandon {
                by: by.to_owned(),
                note: note.to_owned(),
            },
        )
        .await
    }

    async fn operator(
        &self,
        id: Uuid,
        event: CompensationEvent,
    ) -> Result<CompensationItem, StoreError> {
        let item = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "compensation item",
                id: id.to_string(),
            })?;
        let next = item
            .apply(event, self.clock.now())
            .map_err(|e| StoreError::InvalidInput(e.to_string()))?;
        self.store.update(&next, item.version).await?;
        Ok(next)
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
