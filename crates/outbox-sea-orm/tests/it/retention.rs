//! Retention reads the rows it deletes and no others: once it has caught up, a purge
//! reads none of the finished rows that retention keeps. (It used to walk every one of
//! them, by the primary key, on each call.)

use crate::enqueue::on_every_backend;
use crate::plan::{actual_rows, handler_reads};
use crate::{Backend, fresh_db_url, order_message};
use chrono::{DateTime, Utc};
use outbox_ports::MessageStore;
use outbox_sea_orm::SeaOrmStore;
use outbox_test_support::mark_published;

/// Finished messages within retention.
const KEPT: usize = 5_000;
/// Finished messages past it, written first.
const OLD: usize = 10;
/// Messages still pending (on MySQL/MariaDB they are in `_finished` too, under `NULL`).
const PENDING: usize = 1_000;

/// Enqueues `n` messages on keys of their own and publishes them, as published at `at`
/// (which must not be before now: they are claimed then).
async fn publish(store: &SeaOrmStore, prefix: &str, n: usize, at: DateTime<Utc>) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let messages = chunk
            .iter()
            .map(|&i| order_message(&format!("{prefix}-{i}"), i))
            .collect();
        store.enqueue(messages).await.unwrap();
        let claimed = mark_published(store, "relay", chunk.len(), at)
            .await
            .unwrap();
        assert_eq!(claimed.len(), chunk.len());
    }
}

/// The `actual … rows=N` of the plan line that reads `_finished` (PostgreSQL: an index
/// scan, or a bitmap index scan under a sort when few rows are expected).
fn finished_rows(plan: &str) -> u64 {
    actual_rows(plan, |l| {
        l.contains("Scan using outbox_messages_finished")
            || l.contains("Scan on outbox_messages_finished")
    })
    .unwrap_or_else(|| panic!("the purge does not read the _finished index:\n{plan}"))
}

async fn a_purge_that_has_caught_up_reads_none_of_the_kept_rows(backend: Backend) {
    let url = fresh_db_url(backend, "retention_reads").await;
    // One connection, so that MariaDB's session counters are the store's.
    let mut options = sea_orm::ConnectOptions::new(url);
    options.max_connections(1).min_connections(1);
    let db = sea_orm::Database::connect(options).await.unwrap();
    let store = SeaOrmStore::new(db.clone(), Default::default()).unwrap();
    // Published a minute on (due by then), and two hours on; the cutoff between them.
    let now = Utc::now();
    publish(&store, "old", OLD, now + chrono::Duration::minutes(1)).await;
    publish(&store, "kept", KEPT, now + chrono::Duration::hours(2)).await;
    let pending = (0..PENDING)
        .map(|i| order_message(&format!("pending-{i}"), i))
        .collect();
    store.enqueue(pending).await.unwrap();
    let cutoff = now + chrono::Duration::hours(1);
    assert_eq!(
        store.purge_finished(cutoff, 1_000).await.unwrap(),
        OLD as u64
    );

    let plan = store.explain_purge(cutoff, 1_000, true).await.unwrap();
    assert!(
        plan.contains("outbox_messages_finished"),
        "the purge does not read the _finished index:\n{plan}"
    );
    match backend {
        // At most the entries of the rows just purged, until vacuum removes them.
        Backend::Postgres => assert!(finished_rows(&plan) <= OLD as u64, "{plan}"),
        Backend::MySql => {
            // What reading the counters costs by itself.
            let before = handler_reads(&db).await;
            let overhead = handler_reads(&db).await - before;
            let before = handler_reads(&db).await;
            assert_eq!(store.purge_finished(cutoff, 1_000).await.unwrap(), 0);
            let read = handler_reads(&db).await - before - overhead;
            assert!(
                read < 50,
                "a purge with nothing to delete read {read} index entries and rows \
                 beside {KEPT} finished rows kept and {PENDING} pending ones"
            );
        }
        // SQLite's query plan has no row counts: the index it names is the check.
        _ => {}
    }
    assert_eq!(store.purge_finished(cutoff, 1_000).await.unwrap(), 0);
    assert_eq!(store.stats().await.unwrap().published, KEPT as u64);
}

on_every_backend!(a_purge_that_has_caught_up_reads_none_of_the_kept_rows);
