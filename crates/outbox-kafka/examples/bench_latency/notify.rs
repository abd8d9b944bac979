//! What NOTIFY costs the writers.

use crate::Args;
use crate::cells::store_config;
use crate::instrument::{Tracker, WakeCounter, lock};
use crate::stats::{Dist, median};
use crate::writer::{Commit, Stream, Writer};
use anyhow::Result;
use outbox_domain::Identifier;
use outbox_sea_orm::{PgNotifier, PgWakeListener, SeaOrmStore};
use sea_orm::ConnectionTrait;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyVariant {
    Plain,
    Coalesced,
    PerTransaction,
}

impl NotifyVariant {
    pub(crate) const ALL: [Self; 3] = [Self::Plain, Self::Coalesced, Self::PerTransaction];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Plain => "no NOTIFY",
            Self::Coalesced => "PgNotifier (coalesced, after commit)",
            Self::PerTransaction => "NOTIFY in every transaction",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Coalesced => "pg_notifier",
            Self::PerTransaction => "notify_per_transaction",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct NotifyResult {
    pub(crate) variant: NotifyVariant,
    /// Commits per second, one per round.
    pub(crate) rates: Vec<f64>,
    pub(crate) rate: f64,
    pub(crate) transactions: Dist,
    pub(crate) notifies: u64,
    pub(crate) commits: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct NotifyCost {
    pub(crate) results: Vec<NotifyResult>,
    pub(crate) wakes: u64,
    pub(crate) round: Duration,
}

pub(crate) async fn notify_cost(args: &Args, url: &str, topic: &str) -> Result<NotifyCost> {
    let table = Identifier::parse("table", "bench_notify")?;
    let channel = format!("outbox_{table}");
    let db = outbox_sea_orm::connect(url).await?;
    let plain = SeaOrmStore::new(db.clone(), store_config(&table))?;
    plain.create_tables().await?;
    let notifier = Arc::new(PgNotifier::spawn(
        db.clone(),
        &table,
        Duration::from_millis(args.notify_window_ms),
    ));
    let coalesced = plain.clone().with_waker(notifier.clone());
    // A relay's process listening, as in production; nothing claims.
    let listener_db = outbox_sea_orm::connect(url).await?;
    let wakes = Arc::new(WakeCounter::default());
    let listener = PgWakeListener::spawn(&listener_db, &table, wakes.clone()).await?;

    let round = args.notify_len();
    let mut results: Vec<NotifyResult> = NotifyVariant::ALL
        .iter()
        .map(|&variant| NotifyResult {
            variant,
            rates: Vec::new(),
            rate: 0.0,
            transactions: Dist::default(),
            notifies: 0,
            commits: 0,
        })
        .collect();
    let mut transactions: Vec<Vec<Duration>> = vec![Vec::new(); results.len()];
    for r in 0..args.notify_rounds {
        for i in 0..NotifyVariant::ALL.len() {
            let index = (i + r) % NotifyVariant::ALL.len();
            let variant = NotifyVariant::ALL[index];
            db.execute_unprepared(&format!("TRUNCATE {table}")).await?;
            let tracker = Arc::new(Tracker::default());
            let (store, commit) = match variant {
                NotifyVariant::Plain => (plain.clone(), Commit::Store),
                NotifyVariant::Coalesced => (coalesced.clone(), Commit::Store),
                NotifyVariant::PerTransaction => {
                    (plain.clone(), Commit::NotifyInTransaction(channel.clone()))
                }
            };
            let writer = Arc::new(Writer {
                store,
                commit,
                topic: topic.to_owned(),
                keys: args.keys,
                tracker: tracker.clone(),
            });
            let sent_before = notifier.sent();
            let stream = Stream {
                rate: None,
                segments: vec![round],
                tasks: args.notify_writers,
            };
            let start = stream.run(writer).await?;
            let end = start + round;
            let commits = lock(&tracker.commits)
                .values()
                .filter(|(t, _)| *t < end)
                .count();
            let result = &mut results[index];
            result.rates.push(commits as f64 / round.as_secs_f64());
            result.commits += commits;
            result.notifies += match variant {
                NotifyVariant::Coalesced => notifier.sent() - sent_before,
                NotifyVariant::PerTransaction => commits as u64,
                NotifyVariant::Plain => 0,
            };
            transactions[index].extend(lock(&tracker.transactions).iter().copied());
        }
    }
    for (result, samples) in results.iter_mut().zip(transactions) {
        result.rate = median(result.rates.clone());
        result.transactions = Dist::of(samples);
    }
    drop(listener);
    drop(notifier);
    let _ = listener_db.close().await;
    let _ = db.close().await;
    Ok(NotifyCost {
        results,
        wakes: wakes.0.load(Ordering::Relaxed),
        round,
    })
}
