//! The writers: one message per transaction, paced (open loop) or at full speed.

use crate::instrument::{Tracker, lock};
use anyhow::Result;
use chrono::Utc;
use outbox_domain::{OutboxMessage, Payload};
use outbox_sea_orm::SeaOrmStore;
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a writer's transaction ends.
#[derive(Clone)]
pub(crate) enum Commit {
    /// `SeaOrmStore::commit`: commit, then the store's wakers (none, the relay's
    /// waker, or a `PgNotifier`).
    Store,
    /// A `NOTIFY` on `channel` inside the transaction, then a plain commit.
    NotifyInTransaction(String),
}

/// Writes one message per transaction.
pub(crate) struct Writer {
    pub(crate) store: SeaOrmStore,
    pub(crate) commit: Commit,
    pub(crate) topic: String,
    pub(crate) keys: u64,
    pub(crate) tracker: Arc<Tracker>,
}

impl Writer {
    /// Writes message `n` in a transaction of its own and records when the commit
    /// returned, in `segment`.
    pub(crate) async fn write(&self, n: u64, segment: usize) -> Result<()> {
        let message = OutboxMessage::new(
            "bench",
            "order.created",
            &self.topic,
            format!("key-{}", n % self.keys),
            Payload::Json(json!({"n": n, "amount": n % 1000})),
            Utc::now(),
        );
        let id = message.id;
        let begun = Instant::now();
        let txn = self.store.connection().begin().await?;
        self.store.enqueue_in(&txn, vec![message]).await?;
        match &self.commit {
            Commit::Store => self.store.commit(txn).await?,
            Commit::NotifyInTransaction(channel) => {
                txn.execute_unprepared(&format!("NOTIFY {channel}")).await?;
                txn.commit().await?;
            }
        }
        let committed = Instant::now();
        lock(&self.tracker.commits).insert(id, (committed, segment));
        lock(&self.tracker.transactions).push(committed - begun);
        Ok(())
    }
}

/// A stream of writes: `segments` back to back (the first is usually a warm-up),
/// paced at `rate` or as fast as `tasks` writers go (`rate: None`).
pub(crate) struct Stream {
    pub(crate) rate: Option<f64>,
    pub(crate) segments: Vec<Duration>,
    pub(crate) tasks: usize,
}

impl Stream {
    pub(crate) fn total(&self) -> Duration {
        self.segments.iter().sum()
    }

    /// The segment `offset` (from the start) falls in.
    pub(crate) fn segment_of(&self, offset: Duration) -> usize {
        let mut end = Duration::ZERO;
        for (i, len) in self.segments.iter().enumerate() {
            end += *len;
            if offset < end {
                return i;
            }
        }
        self.segments.len().saturating_sub(1)
    }

    /// Where segment `i` starts and ends, from the start.
    pub(crate) fn bounds(&self, i: usize) -> (Duration, Duration) {
        let start: Duration = self.segments[..i].iter().sum();
        (start, start + self.segments[i])
    }

    /// Runs the stream; returns the instant it started at. A paced writer that falls
    /// behind writes its late slots at once (open loop), so the achieved rate shows it.
    pub(crate) async fn run(&self, writer: Arc<Writer>) -> Result<Instant> {
        let start = Instant::now() + Duration::from_millis(5);
        let total = self.total();
        let slots = self.rate.map(|r| (r * total.as_secs_f64()).floor() as u64);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..self.tasks {
            let (writer, next) = (writer.clone(), next.clone());
            let (rate, segments) = (self.rate, self.segments.clone());
            tasks.spawn(async move {
                let stream = Stream {
                    rate,
                    segments,
                    tasks: 0,
                };
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let offset = match (rate, slots) {
                        (Some(rate), Some(slots)) => {
                            if n >= slots {
                                break;
                            }
                            let due = Duration::from_secs_f64(n as f64 / rate);
                            tokio::time::sleep_until((start + due).into()).await;
                            due
                        }
                        _ => {
                            let elapsed = start.elapsed();
                            if elapsed >= total {
                                break;
                            }
                            elapsed
                        }
                    };
                    writer.write(n, stream.segment_of(offset)).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        Ok(start)
    }
}
