//! The [`OutboxLog`] contract. Run it with
//! [`log_conformance_tests!`](crate::log_conformance_tests) on a fresh, empty store
//! that is both the [`MessageStore`] and its log.
//!
//! The cases use one writer, so they check order, positions and the edges of the log;
//! gap safety under concurrent, out-of-order commits needs real transactions and is
//! tested per backend (`outbox-sea-orm`'s `log` tests).
//!
//! An entry may be held back for a moment after its commit (on PostgreSQL, until every
//! older transaction in the cluster has ended), so after each write the cases wait
//! until nothing is held back ([`settled`]).

use super::store::{at, claim, message, payload_n, settle};
use outbox_domain::ErrorText;
use outbox_ports::{CursorPosition, Disposition, LogEntry, MessageStore, OutboxLog, StoreError};

/// Waits until no committed entry is held back, then returns the whole log (up to
/// `limit`). Panics after 30 s.
pub async fn settled<S: OutboxLog + ?Sized>(log: &S, limit: usize) -> Vec<LogEntry> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let batch = log.read(&log.start(), limit).await.expect("read");
        if !batch.held_back {
            return batch.entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "entries still held back after 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn read<S: OutboxLog + ?Sized>(
    log: &S,
    after: Option<&CursorPosition>,
    limit: usize,
) -> Vec<LogEntry> {
    let start = log.start();
    log.read(after.unwrap_or(&start), limit)
        .await
        .expect("read")
        .entries
}

fn numbers(entries: &[LogEntry]) -> Vec<u64> {
    entries
        .iter()
        .map(|e| payload_n(&e.message.message))
        .collect()
}

/// An empty log reads nothing, ends at its start and has no lag.
pub async fn empty_log<S: MessageStore + OutboxLog + ?Sized>(store: &S) {
    let start = store.start();
    let batch = store.read(&start, 10).await.expect("read");
    assert!(batch.entries.is_empty() && !batch.held_back);
    assert_eq!(
        store.end().await.expect("end"),
        start,
        "an empty log ends at its start"
    );
    assert_eq!(
        store.unfinished_start().await.expect("unfinished start"),
        start
    );
    let lag = store.lag(&start).await.expect("lag");
    assert_eq!((lag.entries, lag.oldest_at), (0, None));
}

/// The log holds every message in write order; reading after a returned position
/// continues exactly after that entry, in pages of `limit`.
pub async fn reads_in_write_order_in_pages<S: MessageStore + OutboxLog + ?Sized>(store: &S) {
    let msgs: Vec<_> = (0..5).map(|n| message(&format!("k{}", n % 2), n)).collect();
    store.enqueue(msgs.clone()).await.expect("enqueue");
    let all = settled(store, 10).await;
    assert_eq!(numbers(&all), [0, 1, 2, 3, 4], "write order");
    assert_eq!(
        all.iter().map(|e| e.message.message.id).collect::<Vec<_>>(),
        msgs.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    assert_eq!(
        all[2].message.message, msgs[2],
        "the envelope reads back intact"
    );

    let first = read(store, None, 2).await;
    assert_eq!(numbers(&first), [0, 1]);
    let next = read(store, Some(&first[1].position), 2).await;
    assert_eq!(numbers(&next), [2, 3], "continues after the position");
    let last = read(store, Some(&next[1].position), 2).await;
    assert_eq!(numbers(&last), [4]);
    assert!(
        read(store, Some(&last[0].position), 2).await.is_empty(),
        "then nothing"
    );
    assert!(
        read(store, None, 0).await.is_empty(),
        "a zero limit reads nothing"
    );
}

/// Every message is in the log, whatever happened to it: published, dead, retrying,
/// and recorded audit entries.
pub async fn holds_every_status<S: MessageStore + OutboxLog + ?Sized>(store: &S) {
    store
        .enqueue((0..3).map(|n| message(&format!("k{n}"), n)).collect())
        .await
        .expect("enqueue");
    store
        .record(vec![message("audit", 3)])
        .await
        .expect("record");
    let claimed = claim(store, 10, at(0)).await;
    assert_eq!(claimed.len(), 3);
    let dispositions = [
        Disposition::Published,
        Disposition::Dead {
            error: ErrorText::new("rejected"),
        },
        Disposition::Retry {
            error: ErrorText::new("broker unavailable"),
            at: at(60),
        },
    ];
    let settlements = claimed
        .iter()
        .zip(dispositions)
        .map(|(c, d)| settle(c, d))
        .collect();
    store.settle(settlements, at(1)).await.expect("settle");
    let all = settled(store, 10).await;
    assert_eq!(numbers(&all), [0, 1, 2, 3]);
    let statuses: Vec<_> = all
        .iter()
        .map(|e| e.message.delivery.status.as_str())
        .collect();
    assert_eq!(statuses, ["published", "dead", "pending", "recorded"]);
}

/// The end is the last entry: a cursor there reads only what is written next.
pub async fn end_reads_only_what_comes_next<S: MessageStore + OutboxLog + ?Sized>(store: &S) {
    store
        .enqueue((0..3).map(|n| message("k", n)).collect())
        .await
        .expect("enqueue");
    let all = settled(store, 10).await;
    let end = store.end().await.expect("end");
    assert_eq!(end, all[2].position, "the end is the last entry's position");
    assert!(read(store, Some(&end), 10).await.is_empty());
    store.enqueue(vec![message("k", 3)]).await.expect("enqueue");
    settled(store, 10).await;
    assert_eq!(numbers(&read(store, Some(&end), 10).await), [3]);
}

/// A cursor started at `unfinished_start` reads from the earliest message the relay
/// has not finished; with nothing unfinished it starts at the end.
pub async fn unfinished_start_is_before_the_earliest_unfinished<
    S: MessageStore + OutboxLog + ?Sized,
>(
    store: &S,
) {
    store
        .enqueue((0..4).map(|n| message(&format!("k{n}"), n)).collect())
        .await
        .expect("enqueue");
    let claimed = claim(store, 10, at(0)).await;
    let first_two = claimed
        .iter()
        .filter(|c| c.message.partition_key == "k0" || c.message.partition_key == "k1")
        .map(|c| settle(c, Disposition::Published))
        .collect();
    store.settle(first_two, at(1)).await.expect("settle");
    settled(store, 10).await;
    let start = store.unfinished_start().await.expect("unfinished start");
    assert_eq!(numbers(&read(store, Some(&start), 10).await), [2, 3]);

    let rest = claimed
        .iter()
        .filter(|c| c.message.partition_key == "k2" || c.message.partition_key == "k3")
        .map(|c| settle(c, Disposition::Published))
        .collect();
    store.settle(rest, at(2)).await.expect("settle");
    let start = store.unfinished_start().await.expect("unfinished start");
    assert_eq!(
        start,
        store.end().await.expect("end"),
        "nothing unfinished: the end"
    );
    assert!(read(store, Some(&start), 10).await.is_empty());
}

/// The lag counts the entries after a position and dates the oldest of them.
pub async fn lag_counts_unread_entries<S: MessageStore + OutboxLog + ?Sized>(store: &S) {
    let mut msgs: Vec<_> = (0..4).map(|n| message("k", n)).collect();
    for (i, m) in msgs.iter_mut().enumerate() {
        m.created_at = at(i as i64 * 10);
    }
    store.enqueue(msgs).await.expect("enqueue");
    let all = settled(store, 10).await;
    let lag = store.lag(&store.start()).await.expect("lag");
    assert_eq!((lag.entries, lag.oldest_at), (4, Some(at(0))));
    let lag = store.lag(&all[1].position).await.expect("lag");
    assert_eq!((lag.entries, lag.oldest_at), (2, Some(at(20))));
    let lag = store.lag(&all[3].position).await.expect("lag");
    assert_eq!((lag.entries, lag.oldest_at), (0, None));
}

/// The log's own positions parse back unchanged; anything else is an
/// [`StoreError::InvalidPosition`], also when read from.
pub async fn positions_parse_and_garbage_is_refused<S: MessageStore + OutboxLog + ?Sized>(
    store: &S,
) {
    store.enqueue(vec![message("k", 0)]).await.expect("enqueue");
    let entry = settled(store, 1).await.remove(0);
    for position in [entry.position, store.start()] {
        assert_eq!(store.parse_position(&position.0).expect("parse"), position);
    }
    for garbage in ["", "abc", "-1", "1.5", "1:2:3"] {
        assert!(
            matches!(
                store.parse_position(garbage),
                Err(StoreError::InvalidPosition(_))
            ),
            "`{garbage}` is refused"
        );
    }
    let bad = CursorPosition("abc".to_owned());
    assert!(matches!(
        store.read(&bad, 10).await,
        Err(StoreError::InvalidPosition(_))
    ));
    assert!(matches!(
        store.lag(&bad).await,
        Err(StoreError::InvalidPosition(_))
    ));
}
