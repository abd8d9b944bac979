//! Compensation workers racing on real PostgreSQL and MariaDB: three
//! `CompensationWorker`s, each with a connection pool of its own (as on three hosts),
//! retry the items of several failed batches. Every attempt runs exactly once and never
//! concurrently with another attempt of its item; then an operator abandons what the
//! workers gave up on, and a decision on a stale version is refused.

use crate::{Backend, fresh_db_url};
use async_trait::async_trait;
use chrono::Utc;
use outbox_domain::{BackoffPolicy, CompensationStatus, ErrorText, NewCompensationItem};
use outbox_ports::{
    CompensationFilter, CompensationStore, ExecuteError, OperationExecutor, StoreError,
};
use outbox_runtime::{
    CompensationConfig, CompensationOperator, CompensationWorker, OperatorAction,
};
use outbox_sea_orm::SeaOrmCompensationStore;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BATCHES: u64 = 6;
const PER_BATCH: u64 = 20;
const MAX_RETRIES: u32 = 3;

/// How item `n` behaves: recoverable items fail `n % 3` times (0..=2, below
/// `MAX_RETRIES`), every seventh fails retryably forever, every eleventh permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Recovers(u32),
    AlwaysRetryable,
    Permanent,
}

fn script(n: u64) -> Script {
    if n % 11 == 10 {
        Script::Permanent
    } else if n % 7 == 6 {
        Script::AlwaysRetryable
    } else {
        Script::Recovers((n % 3) as u32)
    }
}

impl Script {
    /// How many times the worker must run the item: one success after its failures, up
    /// to `MAX_RETRIES` failed attempts (the domain's limit), one permanent failure.
    fn executions(self) -> u32 {
        match self {
            Script::Recovers(fails) => fails + 1,
            Script::AlwaysRetryable => MAX_RETRIES,
            Script::Permanent => 1,
        }
    }
}

/// What the executors saw, shared by the three workers.
#[derive(Debug, Default)]
struct Ledger {
    /// Executions per (item, attempt), the attempt read from the stored item (its
    /// failed retries so far, plus one); each must be exactly 1.
    attempts: HashMap<(u64, u32), u32>,
    /// Items being executed right now.
    running: HashSet<u64>,
    /// Items whose attempt started while another attempt of theirs was running.
    overlaps: Vec<u64>,
    /// Executions per worker.
    by_worker: HashMap<usize, usize>,
}

/// One worker's executor: records into the shared ledger, holds the item for a moment
/// so overlapping attempts would be seen, and fails as the item's script says.
struct RecordingExecutor {
    worker: usize,
    store: SeaOrmCompensationStore,
    ids: Arc<HashMap<u64, Uuid>>,
    ledger: Arc<Mutex<Ledger>>,
}

#[async_trait]
impl OperationExecutor for RecordingExecutor {
    async fn execute(&self, _op: &str, payload: &serde_json::Value) -> Result<(), ExecuteError> {
        let n = payload["n"].as_u64().unwrap();
        {
            let mut ledger = self.ledger.lock().unwrap();
            if !ledger.running.insert(n) {
                ledger.overlaps.push(n);
            }
            *ledger.by_worker.entry(self.worker).or_default() += 1;
        }
        let stored = self.store.get(self.ids[&n]).await.unwrap().unwrap();
        let attempt = stored.retry_count + 1;
        *self
            .ledger
            .lock()
            .unwrap()
            .attempts
            .entry((n, attempt))
            .or_default() += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.ledger.lock().unwrap().running.remove(&n);
        match script(n) {
            Script::Recovers(fails) if attempt > fails => Ok(()),
            Script::Permanent => Err(ExecuteError::Permanent("account closed".into())),
            _ => Err(ExecuteError::Retryable(format!("attempt {attempt} failed"))),
        }
    }
}

async fn store_on(url: &str) -> SeaOrmCompensationStore {
    SeaOrmCompensationStore::new(outbox_sea_orm::connect(url).await.unwrap())
}

async fn count(store: &SeaOrmCompensationStore, status: CompensationStatus) -> usize {
    store
        .list(&CompensationFilter {
            status: Some(status),
            batch_id: None,
            limit: 1_000,
        })
        .await
        .unwrap()
        .len()
}

async fn racing_workers_run_each_attempt_once(backend: Backend) {
    let url = fresh_db_url(backend, "compensation_race").await;
    let admin = store_on(&url).await;
    let mut ids: HashMap<u64, Uuid> = HashMap::new();
    for b in 0..BATCHES {
        let items = (0..PER_BATCH)
            .map(|i| {
                let n = b * PER_BATCH + i;
                NewCompensationItem {
                    batch_id: format!("batch-{b}"),
                    operation_type: "refund".into(),
                    item_index: i as u32,
                    payload: serde_json::json!({ "n": n }),
                    failure_reason: ErrorText::new("original failure"),
                }
            })
            .collect();
        let recorded = admin.record(items, MAX_RETRIES, Utc::now()).await.unwrap();
        ids.extend((b * PER_BATCH..).zip(recorded));
    }
    let ids = Arc::new(ids);

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let shutdown = CancellationToken::new();
    let mut config = CompensationConfig::default();
    config.batch_size = 8;
    config.poll_interval = Duration::from_millis(10);
    config.reserve_for = Duration::from_secs(30);
    config.backoff = BackoffPolicy::new(
        Duration::from_millis(20),
        2.0,
        Duration::from_millis(100),
        10,
    )
    .unwrap();
    let mut handles = Vec::new();
    for worker in 0..3 {
        // A pool of its own for each worker, shared with its executor.
        let store = store_on(&url).await;
        let executor = Arc::new(RecordingExecutor {
            worker,
            store: store.clone(),
            ids: Arc::clone(&ids),
            ledger: Arc::clone(&ledger),
        });
        handles.push(
            CompensationWorker::new(Arc::new(store), executor, config.clone())
                .spawn(shutdown.child_token()),
        );
    }
    let start = Instant::now();
    loop {
        let due = count(&admin, CompensationStatus::Pending).await
            + count(&admin, CompensationStatus::Retrying).await;
        if due == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{due} items still pending or retrying after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    shutdown.cancel();
    for handle in handles {
        handle.shutdown().await;
    }

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(
        ledger.overlaps.is_empty(),
        "attempts of these items ran concurrently: {:?}",
        ledger.overlaps
    );
    let twice: Vec<_> = ledger.attempts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "attempts run more than once: {twice:?}");
    assert!(
        ledger.by_worker.len() >= 2,
        "the workers shared the items: {:?}",
        ledger.by_worker
    );
    let total = BATCHES * PER_BATCH;
    let mut manual = Vec::new();
    for (&n, &id) in ids.iter() {
        let mut runs: Vec<u32> = ledger
            .attempts
            .keys()
            .filter(|(item, _)| *item == n)
            .map(|(_, attempt)| *attempt)
            .collect();
        runs.sort_unstable();
        let expected: Vec<u32> = (1..=script(n).executions()).collect();
        assert_eq!(runs, expected, "attempts of item {n} ({:?})", script(n));
        let item = admin.get(id).await.unwrap().unwrap();
        match script(n) {
            Script::Recovers(fails) => assert_eq!(
                (item.status, item.retry_count),
                (CompensationStatus::Resolved, fails),
                "item {n}"
            ),
            Script::AlwaysRetryable | Script::Permanent => {
                assert_eq!(item.status, CompensationStatus::ManualRequired, "item {n}");
                manual.push(item);
            }
        }
    }
    assert!(manual.len() > 10 && manual.len() < total as usize / 2);

    // An operator abandons what the workers gave up on, acting on the version seen.
    let operator = CompensationOperator::new(Arc::new(admin.clone()));
    for before in &manual {
        let done = operator
            .act(
                before.id,
                OperatorAction::Abandon,
                "alice",
                "refunded by hand",
                Some(before.version),
            )
            .await
            .unwrap();
        let stored = admin.get(before.id).await.unwrap().unwrap();
        // (The database keeps microseconds, so the timestamps are not compared.)
        assert_eq!((stored.status, stored.version), (done.status, done.version));
        assert_eq!(
            (
                stored.status,
                stored.resolved_by.as_deref(),
                stored.resolution_note.as_deref(),
                stored.version
            ),
            (
                CompensationStatus::Abandoned,
                Some("alice"),
                Some("refunded by hand"),
                before.version + 1
            )
        );
        assert!(stored.resolved_at.is_some());

        // The same decision on the version the operator saw is now stale.
        let err = operator
            .act(
                before.id,
                OperatorAction::Abandon,
                "bob",
                "again",
                Some(before.version),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
        assert_eq!(admin.get(before.id).await.unwrap().unwrap(), stored);
    }
    assert_eq!(
        count(&admin, CompensationStatus::Abandoned).await,
        manual.len()
    );
    assert_eq!(
        count(&admin, CompensationStatus::Resolved).await,
        total as usize - manual.len()
    );
}

mod postgres {
    use crate::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_compensation_workers_run_each_attempt_once() {
        super::racing_workers_run_each_attempt_once(Backend::Postgres).await;
    }
}

mod mysql {
    use crate::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_compensation_workers_run_each_attempt_once() {
        super::racing_workers_run_each_attempt_once(Backend::MySql).await;
    }
}
