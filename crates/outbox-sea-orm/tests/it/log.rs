//! The outbox log under real concurrency: gap safety when transactions commit out of
//! order (and roll back), the long-transaction hold-back on PostgreSQL, and the seeds'
//! naive readers (by timestamp and by position), written only here, that do lose rows on
//! the same workloads.

use crate::{Backend, fresh_db_url, order_message, store_at};
use outbox_domain::MessageId;
use outbox_migrations::schema::OUTBOX_TABLE;
use outbox_ports::{CursorPosition, ListFilter, MessageStore, OutboxLog, StoreError};
use outbox_test_support::conformance::log::settled;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// 8 writers hold transactions open for random times (one of them, every fourth time,
/// for 150 ms) and roll back one in five, while a cursor reads the log in small pages and
/// checkpoints after each. It reads every committed message exactly once and no
/// rolled-back one.
///
/// Beside it, on the same workload, the seeds' design: a reader written only here that
/// remembers the `created_at` of the last row it read and asks for later ones. On the
/// servers, where transactions commit concurrently, it loses the rows of transactions
/// that commit after a younger one (`naive_loses`).
async fn a_cursor_never_skips_a_late_commit(backend: Backend, naive_loses: bool) {
    const WRITERS: u64 = 8;
    const TXNS: usize = 20;
    let url = fresh_db_url(backend, "log_gap_safe").await;
    let reader = store_at(&url).await;
    let done = Arc::new(AtomicBool::new(false));
    let naive = {
        let done = done.clone();
        let db = store_at(&url).await.connection().clone();
        tokio::spawn(async move {
            let (mut last, mut seen) = (None::<i64>, HashSet::new());
            loop {
                let finished = done.load(Ordering::SeqCst);
                let after = last.map_or(String::new(), |seq| {
                    format!(
                        "WHERE created_at > (SELECT created_at FROM {OUTBOX_TABLE} WHERE seq = {seq})"
                    )
                });
                let sql = format!(
                    "SELECT seq FROM {OUTBOX_TABLE} {after} ORDER BY created_at, seq LIMIT 7"
                );
                let rows = db
                    .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
                    .await
                    .unwrap();
                for row in &rows {
                    let seq: i64 = row.try_get("", "seq").unwrap();
                    seen.insert(seq);
                    last = Some(seq);
                }
                if finished && rows.is_empty() {
                    return seen.len();
                }
                if rows.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let cursor = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut position, mut seen) = (reader.start(), Vec::new());
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = reader.read(&position, 7).await.unwrap();
                if let Some(last) = batch.entries.last() {
                    position = last.position.clone();
                }
                let empty = batch.entries.is_empty();
                seen.extend(batch.entries.into_iter().map(|e| e.message.message.id));
                if finished && empty && !batch.held_back {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store_at(&url).await;
        writers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(w);
            let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
            for n in 0..TXNS {
                let txn = store.connection().begin().await.unwrap();
                let messages = (0..rng.random_range(1..4))
                    .map(|i| order_message(&format!("w{w}"), n * 10 + i))
                    .collect();
                let ids = store.enqueue_in(&txn, messages).await.unwrap();
                let hold = if w == 0 && n % 4 == 0 {
                    150
                } else {
                    rng.random_range(0..30)
                };
                tokio::time::sleep(Duration::from_millis(hold)).await;
                if rng.random_bool(0.2) {
                    txn.rollback().await.unwrap();
                    rolled_back.extend(ids);
                } else {
                    txn.commit().await.unwrap();
                    committed.extend(ids);
                }
            }
            (committed, rolled_back)
        }));
    }
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for writer in writers {
        let (c, r) = writer.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    done.store(true, Ordering::SeqCst);
    let seen = tokio::time::timeout(Duration::from_secs(60), cursor)
        .await
        .expect("the cursor catches up")
        .unwrap();
    let unique: HashSet<MessageId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no entry is read twice");
    assert!(
        seen.iter().all(|id| !rolled_back.contains(id)),
        "no rolled-back entry"
    );
    assert_eq!(unique, committed, "every committed entry");
    let naive_seen = naive.await.unwrap();
    println!(
        "{backend:?}: the log read {} of {} committed; the timestamp cursor {naive_seen}",
        unique.len(),
        committed.len()
    );
    if naive_loses {
        assert!(
            naive_seen < committed.len(),
            "the timestamp cursor was expected to lose rows: it read {naive_seen} of {}",
            committed.len()
        );
    }
}

/// The seeds' design, in miniature: a reader that remembers the highest `seq` it has
/// seen. A transaction that took a lower `seq` but commits later is skipped for good.
/// The log on the same two transactions skips nothing.
async fn a_naive_position_reader_loses_what_the_log_keeps(backend: Backend) {
    let url = fresh_db_url(backend, "log_naive").await;
    let writer = store_at(&url).await;
    let reader = store_at(&url).await;

    let slow = writer.connection().begin().await.unwrap();
    let late = writer
        .enqueue_in(&slow, vec![order_message("a", 1)])
        .await
        .unwrap()[0];
    let fast = writer.connection().begin().await.unwrap();
    let early = writer
        .enqueue_in(&fast, vec![order_message("b", 2)])
        .await
        .unwrap()[0];
    fast.commit().await.unwrap();

    // Both readers take their turn while `slow` is open.
    let naive_first = reader.list(&ListFilter::all(100)).await.unwrap();
    let naive_checkpoint = naive_first.iter().map(|m| m.seq).max();
    let log_first = reader.read(&reader.start(), 100).await.unwrap();
    let log_checkpoint = log_first
        .entries
        .last()
        .map_or_else(|| reader.start(), |e| e.position.clone());

    slow.commit().await.unwrap();
    let mut naive_seen: Vec<MessageId> = naive_first.iter().map(|m| m.message.id).collect();
    let mut filter = ListFilter::all(100);
    filter.after_seq = naive_checkpoint;
    naive_seen.extend(
        reader
            .list(&filter)
            .await
            .unwrap()
            .iter()
            .map(|m| m.message.id),
    );
    settled(&reader, 100).await;
    let mut log_seen: Vec<MessageId> = log_first
        .entries
        .iter()
        .map(|e| e.message.message.id)
        .collect();
    let rest = reader.read(&log_checkpoint, 100).await.unwrap();
    log_seen.extend(rest.entries.iter().map(|e| e.message.message.id));

    assert_eq!(
        naive_seen,
        [early],
        "the naive reader skipped the late commit"
    );
    let log_seen: HashSet<_> = log_seen.into_iter().collect();
    assert_eq!(log_seen, HashSet::from([early, late]), "the log keeps both");
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_cursor_never_skips_a_late_commit() {
        super::a_cursor_never_skips_a_late_commit(Backend::Postgres, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_naive_position_reader_loses_what_the_log_keeps() {
        super::a_naive_position_reader_loses_what_the_log_keeps(Backend::Postgres).await;
    }

    /// An open transaction that wrote holds back entries committed after it began,
    /// and the read says so; once it ends they are read, in transaction order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_transaction_holds_readers_back_visibly() {
        let url = fresh_db_url(Backend::Postgres, "log_held_back").await;
        let writer = store_at(&url).await;
        let long = writer.connection().begin().await.unwrap();
        let first = writer
            .enqueue_in(&long, vec![order_message("a", 1)])
            .await
            .unwrap()[0];
        let second = writer.enqueue(vec![order_message("b", 2)]).await.unwrap()[0];
        for _ in 0..3 {
            let batch = writer.read(&writer.start(), 10).await.unwrap();
            assert!(
                batch.entries.is_empty(),
                "held back behind the open transaction"
            );
            assert!(batch.held_back, "and the read says so");
        }
        long.commit().await.unwrap();
        let ids: Vec<_> = settled(&writer, 10)
            .await
            .iter()
            .map(|e| e.message.message.id)
            .collect();
        assert_eq!(ids, [first, second], "transaction order");
    }

    /// A cursor position from another cluster (or from before a dump and restore) is
    /// ahead of the cluster's transaction ids: refused, not silently read past.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_position_ahead_of_the_cluster_is_refused() {
        let url = fresh_db_url(Backend::Postgres, "log_restore").await;
        let log = store_at(&url).await;
        let ahead = CursorPosition(format!("{}:1", u64::MAX / 2));
        match log.read(&ahead, 10).await {
            Err(StoreError::InvalidPosition(text)) => {
                assert!(text.contains("restored"), "{text}");
            }
            other => panic!("expected InvalidPosition, got {other:?}"),
        }
    }
}

mod mysql {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_cursor_never_skips_a_late_commit() {
        super::a_cursor_never_skips_a_late_commit(Backend::MySql, true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_naive_position_reader_loses_what_the_log_keeps() {
        super::a_naive_position_reader_loses_what_the_log_keeps(Backend::MySql).await;
    }

    /// Each read stamps: the sequencer numbers committed rows once, above every
    /// earlier stamp, however many readers race.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_readers_stamp_each_row_once() {
        let url = fresh_db_url(Backend::MySql, "log_stamp_race").await;
        let writer = store_at(&url).await;
        writer
            .enqueue(
                (0..300)
                    .map(|n| order_message(&format!("k{}", n % 7), n))
                    .collect(),
            )
            .await
            .unwrap();
        let mut readers = Vec::new();
        for _ in 0..4 {
            let log = store_at(&url).await;
            readers.push(tokio::spawn(async move {
                let (mut position, mut seen) = (log.start(), Vec::new());
                loop {
                    let batch = log.read(&position, 13).await.unwrap();
                    let Some(last) = batch.entries.last() else {
                        return seen;
                    };
                    position = last.position.clone();
                    seen.extend(batch.entries.iter().map(|e| e.message.seq));
                }
            }));
        }
        for reader in readers {
            let seen = reader.await.unwrap();
            assert_eq!(seen, (1..=300).collect::<Vec<u64>>(), "every row, in order");
        }
    }
}

mod sqlite {
    use super::*;

    /// One writer commits at a time, so the same workload is safe by `seq` alone. (The
    /// timestamp cursor can still lose a row whose `created_at` was taken before another
    /// writer's, but that takes an unlucky interleaving, so it is not asserted.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_cursor_never_skips_a_late_commit() {
        super::a_cursor_never_skips_a_late_commit(Backend::SqliteFile, false).await;
    }
}
