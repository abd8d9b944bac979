use async_trait::async_trait;
use metrics_util::debugging::{DebugValue, Snapshotter};
use outbox_domain::{CompensationStatus, ErrorText, NewCompensationItem};
use outbox_ports::{
    Clock, CompensationFilter, CompensationStore, ExecuteError, OperationExecutor, StoreError,
};
use outbox_runtime::{
    CompensationConfig, CompensationOperator, CompensationWorker, OperatorAction,
    compensation_metrics,
};
use outbox_test_support::{InMemoryCompensationStore, ManualClock};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Fails each payload's `fail` count of times (retryably, or permanently if `fatal`).
#[derive(Default)]
struct ScriptedExecutor {
    calls: Mutex<HashMap<u64, u32>>,
}

#[async_trait]
impl OperationExecutor for ScriptedExecutor {
    async fn execute(&self, _op: &str, payload: &serde_json::Value) -> Result<(), ExecuteError> {
        let id = payload["id"].as_u64().unwrap();
        let fail = payload["fail"].as_u64().unwrap() as u32;
        let mut calls = self.calls.lock().unwrap();
        let n = calls.entry(id).or_default();
        *n += 1;
        if payload["fatal"].as_bool() == Some(true) {
            return Err(ExecuteError::Permanent("account closed".into()));
        }
        if *n <= fail {
            Err(ExecuteError::Retryable(format!("attempt {n} failed")))
        } else {
            Ok(())
        }
    }
}

fn item(id: u64, fail: u32, fatal: bool) -> NewCompensationItem {
    NewCompensationItem {
        batch_id: "batch-1".into(),
        operation_type: "refund".into(),
        item_index: id as u32,
        payload: serde_json::json!({ "id": id, "fail": fail, "fatal": fatal }),
        failure_reason: ErrorText::new("original failure"),
    }
}

fn worker(
    store: &InMemoryCompensationStore,
    clock: &ManualClock,
    batch_size: usize,
) -> CompensationWorker {
    let mut cfg = CompensationConfig::default();
    cfg.batch_size = batch_size;
    CompensationWorker::new(
        Arc::new(store.clone()),
        Arc::new(ScriptedExecutor::default()),
        cfg,
    )
    .with_clock(Arc::new(clock.clone()))
}

#[tokio::test]
async fn items_retry_with_backoff_resolve_or_need_an_operator() {
    let clock = ManualClock::fixed();
    let store = InMemoryCompensationStore::new();
    let w = worker(&store, &clock, 10);
    let ids = store
        .record(
            vec![
                item(1, 0, false),
                item(2, 1, false),
                item(3, 99, false),
                item(4, 0, true),
            ],
            3,
            clock.now(),
        )
        .await
        .unwrap();

    let r = w.run_once().await.unwrap();
    assert_eq!(
        (r.tried, r.resolved, r.retrying, r.manual_required),
        (4, 1, 2, 1)
    );
    assert_eq!(
        w.run_once().await.unwrap().tried,
        0,
        "retries wait for their backoff (1 min)"
    );
    for _ in 0..5 {
        clock.advance(Duration::from_secs(3600));
        w.run_once().await.unwrap();
    }
    let status = |i: usize| {
        let store = store.clone();
        let id = ids[i];
        async move { store.get(id).await.unwrap().unwrap() }
    };
    assert_eq!(status(0).await.status, CompensationStatus::Resolved);
    assert_eq!(status(1).await.status, CompensationStatus::Resolved);
    let stuck = status(2).await;
    assert_eq!(
        (stuck.status, stuck.retry_count),
        (CompensationStatus::ManualRequired, 3)
    );
    assert_eq!(
        status(3).await.status,
        CompensationStatus::ManualRequired,
        "permanent errors skip retries"
    );

    // The operator resolves one and abandons the other, recording who and why.
    let done = w
        .resolve(ids[2], "alice", "refunded by hand")
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.resolved_by.as_deref()),
        (CompensationStatus::Resolved, Some("alice"))
    );
    let gone = w.abandon(ids[3], "bob", "customer left").await.unwrap();
    assert_eq!(gone.status, CompensationStatus::Abandoned);
    assert!(matches!(
        w.resolve(ids[3], "bob", "again").await,
        Err(StoreError::InvalidInput(_))
    ));
}

#[tokio::test]
async fn the_worker_claims_in_bounded_batches() {
    let clock = ManualClock::fixed();
    let store = InMemoryCompensationStore::new();
    store
        .record((0..25).map(|i| item(i, 0, false)).collect(), 3, clock.now())
        .await
        .unwrap();
    let w = worker(&store, &clock, 10);
    assert_eq!(w.run_once().await.unwrap().tried, 10);
    assert_eq!(w.run_once().await.unwrap().tried, 10);
    assert_eq!(w.run_once().await.unwrap().tried, 5);
    let resolved = store
        .list(&CompensationFilter {
            status: Some(CompensationStatus::Resolved),
            batch_id: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(resolved.len(), 25);
}

#[tokio::test]
async fn a_stale_update_fails_and_never_overwrites() {
    let clock = ManualClock::fixed();
    let store = InMemoryCompensationStore::new();
    let id = store
        .record(vec![item(1, 5, false)], 3, clock.now())
        .await
        .unwrap()[0];
    let read = store.get(id).await.unwrap().unwrap();
    let w = worker(&store, &clock, 10);
    w.run_once().await.unwrap(); // bumps the version twice (claim, failure)

    let stale = read
        .apply(
            outbox_domain::CompensationEvent::Abandon {
                by: "op".into(),
                note: "n".into(),
            },
            clock.now(),
        )
        .unwrap();
    let err = store.update(&stale, read.version).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "got {err:?}");
    assert_eq!(
        store.get(id).await.unwrap().unwrap().status,
        CompensationStatus::Retrying
    );
}

/// Succeeds, fails retryably `fail` times, fails permanently (`fatal`), or (`race`) has
/// the item resolved by an operator while it runs, so the worker's write conflicts.
struct MeteredExecutor {
    calls: Mutex<HashMap<u64, u32>>,
    racing_operator: Mutex<Option<(CompensationOperator, Uuid)>>,
}

#[async_trait]
impl OperationExecutor for MeteredExecutor {
    async fn execute(&self, _op: &str, payload: &serde_json::Value) -> Result<(), ExecuteError> {
        if payload["race"].as_bool() == Some(true) {
            let (operator, id) = self.racing_operator.lock().unwrap().clone().unwrap();
            operator
                .act(id, OperatorAction::Resolve, "carol", "done by hand", None)
                .await
                .unwrap();
            return Ok(());
        }
        let id = payload["id"].as_u64().unwrap();
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(id).or_default();
            *n += 1;
            *n
        };
        if payload["fatal"].as_bool() == Some(true) {
            Err(ExecuteError::Permanent("address unknown".into()))
        } else if u64::from(n) <= payload["fail"].as_u64().unwrap_or(0) {
            Err(ExecuteError::Retryable("warehouse busy".into()))
        } else {
            Ok(())
        }
    }
}

/// Counter values by (name, `operation` label) since the previous snapshot (taking a
/// snapshot resets the debugging recorder's counters).
fn counters(snapshotter: &Snapshotter) -> HashMap<(String, String), u64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let DebugValue::Counter(n) = value else {
            panic!("only counters are expected, got {key:?} = {value:?}");
        };
        let labels: Vec<_> = key.key().labels().collect();
        assert_eq!(labels.len(), 1, "one label on {key:?}");
        assert_eq!(labels[0].key(), compensation_metrics::OPERATION_LABEL);
        if n > 0 {
            out.insert(
                (key.key().name().to_owned(), labels[0].value().to_owned()),
                n,
            );
        }
    }
    out
}

fn expect(rows: &[(&str, &str, u64)]) -> HashMap<(String, String), u64> {
    rows.iter()
        .map(|(name, op, n)| {
            (
                (
                    format!("outbox_compensation_{name}_total"),
                    (*op).to_owned(),
                ),
                *n,
            )
        })
        .collect()
}

fn metered_item(id: u64, operation: &str, payload: serde_json::Value) -> NewCompensationItem {
    let mut payload = payload;
    payload["id"] = id.into();
    NewCompensationItem {
        batch_id: "batch-m".into(),
        operation_type: operation.into(),
        item_index: id as u32,
        payload,
        failure_reason: ErrorText::new("original failure"),
    }
}

/// The worker and the operator API count attempts, outcomes, operator actions and
/// conflicts per operation type, on a recorder local to this test's thread.
#[test]
fn the_worker_and_operators_count_on_the_metrics_facade() {
    super::with_debug_recorder(|snapshotter| async move {
        let clock = ManualClock::fixed();
        let store = InMemoryCompensationStore::new();
        let executor = Arc::new(MeteredExecutor {
            calls: Mutex::default(),
            racing_operator: Mutex::default(),
        });
        let w = CompensationWorker::new(
            Arc::new(store.clone()),
            executor.clone(),
            CompensationConfig::default(),
        )
        .with_clock(Arc::new(clock.clone()));
        let ids = store
            .record(
                vec![
                    metered_item(1, "refund", serde_json::json!({})),
                    metered_item(2, "refund", serde_json::json!({ "fail": 1 })),
                    metered_item(3, "refund", serde_json::json!({ "fail": 99 })),
                    metered_item(4, "reship", serde_json::json!({ "fatal": true })),
                    metered_item(5, "reship", serde_json::json!({ "race": true })),
                ],
                2,
                clock.now(),
            )
            .await
            .unwrap();
        *executor.racing_operator.lock().unwrap() = Some((w.operator(), ids[4]));

        let r = w.run_once().await.unwrap();
        assert_eq!(
            (
                r.tried,
                r.resolved,
                r.retrying,
                r.manual_required,
                r.conflicts
            ),
            (5, 1, 2, 1, 1)
        );
        clock.advance(Duration::from_secs(3600));
        let r = w.run_once().await.unwrap();
        assert_eq!((r.tried, r.resolved, r.manual_required), (2, 1, 1));
        assert_eq!(
            counters(&snapshotter),
            expect(&[
                ("retried", "refund", 5),
                ("retried", "reship", 2),
                ("resolved", "refund", 2),
                // item 5, by the racing operator; the worker's own write conflicted
                ("resolved", "reship", 1),
                ("conflicts", "reship", 1),
                ("manual_required", "refund", 1),
                ("manual_required", "reship", 1),
            ])
        );

        // Operators, through the worker's API.
        let stale = store.get(ids[2]).await.unwrap().unwrap().version - 1;
        let refused = w
            .operator()
            .act(ids[2], OperatorAction::Abandon, "alice", "n", Some(stale))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, StoreError::Conflict { .. }),
            "{refused:?}"
        );
        w.resolve(ids[2], "alice", "refunded by hand")
            .await
            .unwrap();
        w.abandon(ids[3], "bob", "customer left").await.unwrap();
        let refused = w.abandon(ids[3], "bob", "again").await.unwrap_err();
        assert!(
            matches!(refused, StoreError::InvalidInput(_)),
            "{refused:?}"
        );
        assert_eq!(
            counters(&snapshotter),
            expect(&[
                ("conflicts", "refund", 1),
                ("resolved", "refund", 1),
                ("abandoned", "reship", 1),
            ])
        );
    });
}
