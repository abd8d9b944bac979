use super::msg;
use async_trait::async_trait;
use metrics_util::debugging::{DebugValue, Snapshotter};
use outbox_domain::MessageId;
use outbox_ports::{
    Clock, CursorPosition, CursorStore, HandlerError, LogBatch, LogEntry, MessageStore,
    MockOutboxLog,
};
use outbox_runtime::{
    CancellationToken, LogHandler, LogStart, LogSubscriber, SubscriberConfig, SubscriberError,
};
use outbox_test_support::{InMemoryCursorStore, InMemoryStore, ManualClock};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records what it handled; fails the next `fail` calls.
#[derive(Default)]
struct Recorder {
    handled: Mutex<Vec<MessageId>>,
    calls: Mutex<Vec<usize>>,
    fail: Mutex<u32>,
}

#[async_trait]
impl LogHandler for Recorder {
    async fn handle(&self, entries: &[LogEntry]) -> Result<(), HandlerError> {
        self.calls.lock().unwrap().push(entries.len());
        let mut fail = self.fail.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(HandlerError::retry("search index unavailable"));
        }
        self.handled
            .lock()
            .unwrap()
            .extend(entries.iter().map(|e| e.message.message.id));
        Ok(())
    }
}

fn config(batch_size: usize, start: LogStart) -> SubscriberConfig {
    let mut c = SubscriberConfig::default();
    c.batch_size = batch_size;
    c.start = start;
    c.poll_interval = Duration::from_millis(5);
    c.stall_warning = Duration::from_secs(30);
    c
}

fn subscriber(
    store: &InMemoryStore,
    cursors: &InMemoryCursorStore,
    handler: &Arc<Recorder>,
    config: SubscriberConfig,
) -> LogSubscriber {
    LogSubscriber::new(
        "audit",
        Arc::new(store.clone()),
        Arc::new(cursors.clone()),
        handler.clone(),
        config,
    )
    .unwrap()
}

async fn enqueue(store: &InMemoryStore, n: usize) -> Vec<MessageId> {
    let now = ManualClock::fixed().now();
    let msgs: Vec<_> = (0..n)
        .map(|i| msg(&format!("k{}", i % 3), i, now))
        .collect();
    store.enqueue(msgs).await.unwrap()
}

#[tokio::test]
async fn reads_everything_in_order_and_a_restart_continues_from_the_checkpoint() {
    let (store, cursors) = (InMemoryStore::new(), InMemoryCursorStore::new());
    let ids = enqueue(&store, 7).await;
    let handler = Arc::new(Recorder::default());
    let first = subscriber(&store, &cursors, &handler, config(3, LogStart::Beginning));
    assert_eq!(first.run_once().await.unwrap().handled, 3);
    assert_eq!(first.run_once().await.unwrap().handled, 3);
    drop(first);

    // A new process: same name, same cursor.
    let second = subscriber(&store, &cursors, &handler, config(3, LogStart::Beginning));
    assert_eq!(second.run_once().await.unwrap().handled, 1);
    assert_eq!(second.run_once().await.unwrap().handled, 0, "caught up");
    assert_eq!(*handler.handled.lock().unwrap(), ids, "each once, in order");
    let saved = cursors.load("audit").await.unwrap().unwrap();
    assert_eq!(saved.position, CursorPosition("7".into()));
    assert_eq!(
        saved.version, 4,
        "created, then moved after each of 3 batches"
    );
}

#[tokio::test]
async fn a_failing_handler_gets_the_same_batch_again_and_the_cursor_waits() {
    let (store, cursors) = (InMemoryStore::new(), InMemoryCursorStore::new());
    let ids = enqueue(&store, 2).await;
    let handler = Arc::new(Recorder::default());
    *handler.fail.lock().unwrap() = 2;
    let sub = subscriber(&store, &cursors, &handler, config(10, LogStart::Beginning));
    for _ in 0..2 {
        assert!(matches!(
            sub.run_once().await,
            Err(SubscriberError::Handler { .. })
        ));
        let cursor = cursors.load("audit").await.unwrap().unwrap();
        assert_eq!(cursor.position, CursorPosition("0".into()), "not moved");
    }
    assert_eq!(sub.run_once().await.unwrap().handled, 2);
    assert_eq!(
        *handler.calls.lock().unwrap(),
        [2, 2, 2],
        "the same batch each time"
    );
    assert_eq!(*handler.handled.lock().unwrap(), ids);
}

#[tokio::test]
async fn an_operators_reset_wins_over_a_running_subscriber() {
    let (store, cursors) = (InMemoryStore::new(), InMemoryCursorStore::new());
    let ids = enqueue(&store, 4).await;
    let handler = Arc::new(Recorder::default());
    let sub = subscriber(&store, &cursors, &handler, config(2, LogStart::Beginning));
    sub.run_once().await.unwrap();
    // The operator moves the cursor back to the start while the subscriber holds
    // version 2 in memory.
    let current = cursors.load("audit").await.unwrap().unwrap();
    cursors
        .save(
            "audit",
            CursorPosition("0".into()),
            Some(current.version),
            ManualClock::fixed().now(),
        )
        .await
        .unwrap();
    assert!(matches!(
        sub.run_once().await,
        Err(SubscriberError::Moved { .. })
    ));
    while sub.run_once().await.unwrap().handled > 0 {}
    let handled = handler.handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        [&ids[..2], &ids[2..], &ids[..]].concat(),
        "read from the reset position again, after the batch it raced with"
    );
}

#[tokio::test]
async fn a_new_cursor_starts_where_configured() {
    let store = InMemoryStore::new();
    let ids = enqueue(&store, 3).await;
    // Publish the first message, so the earliest unfinished is the second.
    outbox_test_support::mark_published(&store, "r", 1, ManualClock::fixed().now())
        .await
        .unwrap();
    for (start, expected) in [
        (LogStart::Beginning, ids.clone()),
        (LogStart::Unfinished, ids[1..].to_vec()),
        (LogStart::End, Vec::new()),
    ] {
        let handler = Arc::new(Recorder::default());
        let sub = subscriber(
            &store,
            &InMemoryCursorStore::new(),
            &handler,
            config(10, start),
        );
        sub.run_once().await.unwrap();
        assert_eq!(*handler.handled.lock().unwrap(), expected, "{start:?}");
    }
}

fn gauge(snapshotter: &Snapshotter, name: &str) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            DebugValue::Gauge(v) if key.key().name() == name => Some(v.into_inner()),
            _ => None,
        })
}

/// A log that holds the cursor back (a long transaction on PostgreSQL): the gauge
/// shows for how long, without a break, and drops to 0 when the hold ends.
#[test]
fn time_held_back_is_a_gauge() {
    super::with_debug_recorder(|snapshotter| async move {
        let clock = ManualClock::fixed();
        let held = Arc::new(Mutex::new(true));
        let mut log = MockOutboxLog::new();
        log.expect_start().return_const(CursorPosition("0".into()));
        let h = held.clone();
        log.expect_read()
            .returning(move |_, _| Ok(LogBatch::new(Vec::new(), *h.lock().unwrap())));
        let sub = LogSubscriber::new(
            "audit",
            Arc::new(log),
            Arc::new(InMemoryCursorStore::new()),
            Arc::new(Recorder::default()),
            config(10, LogStart::Beginning),
        )
        .unwrap()
        .with_clock(Arc::new(clock.clone()));
        assert!(sub.run_once().await.unwrap().held_back);
        clock.advance(Duration::from_secs(45));
        sub.run_once().await.unwrap();
        assert_eq!(
            gauge(
                &snapshotter,
                outbox_runtime::cursor_metrics::HELD_BACK_SECONDS
            ),
            Some(45.0)
        );
        *held.lock().unwrap() = false;
        sub.run_once().await.unwrap();
        assert_eq!(
            gauge(
                &snapshotter,
                outbox_runtime::cursor_metrics::HELD_BACK_SECONDS
            ),
            Some(0.0)
        );
    });
}

#[test]
fn the_spawned_subscriber_catches_up_and_reports_lag() {
    super::with_debug_recorder(|snapshotter| async move {
        let (store, cursors) = (InMemoryStore::new(), InMemoryCursorStore::new());
        let ids = enqueue(&store, 25).await;
        let handler = Arc::new(Recorder::default());
        let mut c = config(10, LogStart::Beginning);
        c.lag_interval = Duration::from_millis(10);
        let shutdown = CancellationToken::new();
        let running = subscriber(&store, &cursors, &handler, c).spawn(shutdown.clone());
        tokio::time::timeout(Duration::from_secs(10), async {
            while handler.handled.lock().unwrap().len() < ids.len() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The lag gauge follows on its own interval.
            while gauge(&snapshotter, outbox_runtime::cursor_metrics::LAG_ENTRIES) != Some(0.0) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("caught up");
        running.shutdown().await;
        assert_eq!(*handler.handled.lock().unwrap(), ids);
    });
}
