//! `outbox demo`: an order service writes orders and their events, relays publish them
//! through a flaky broker, and a consumer processes each event once through its inbox
//! while checking per-key order. The summary is computed from what the consumer saw.
//!
//! On a database (the default: a SQLite file in the current directory) the demo runs
//! the real pattern end to end: the producer inserts each order into `demo_orders` and
//! its events into the outbox in one transaction ([`SeaOrmStore::enqueue_in`]), and the
//! consumer records each event in the inbox and applies its effect to
//! `demo_order_views` in one transaction ([`SeaOrmInbox::process_once`]). The broker
//! stays in memory. `--database-url memory` runs everything in memory instead.

use crate::database::{self, DATABASE_URL_ENV, statement};
use anyhow::{Context, bail};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use outbox_domain::{
    BackoffPolicy, EventRouteConfig, Identifier, MessageId, OutboxMessage, Payload,
    PersistenceStrategy, RouteRegistry, RoutesConfig, ServiceRoute, TopicName,
};
use outbox_migrations::schema::{INBOX_TABLE, OUTBOX_TABLE};
use outbox_ports::{Inbox, InboxOutcome, MessageStore, StoreError};
use outbox_runtime::{CancellationToken, Relay, RelayConfig, RelayHandle, RelayWaker};
use outbox_sea_orm::{SeaOrmInbox, SeaOrmStore, StoreConfig};
use outbox_test_support::{FaultyPublisher, InMemoryInbox, InMemoryPublisher, InMemoryStore};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait, Value};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const EVENTS: [&str; 3] = ["order.created", "order.paid", "order.shipped"];
const CONSUMER_GROUP: &str = "billing";
/// Attempts each message gets before it is dead.
const MAX_ATTEMPTS: u32 = 10;

/// The `--database-url` value that runs the demo on the in-memory store.
const MEMORY: &str = "memory";

/// The demo's own business tables: the producer's orders and the consumer's read
/// model. Portable SQL for PostgreSQL, MySQL/MariaDB and SQLite.
const DEMO_TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS demo_orders (
        order_id BIGINT NOT NULL PRIMARY KEY,
        customer VARCHAR(64) NOT NULL,
        status VARCHAR(32) NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS demo_order_views (
        order_id BIGINT NOT NULL PRIMARY KEY,
        customer VARCHAR(64) NOT NULL,
        events_applied INTEGER NOT NULL,
        last_event VARCHAR(64) NOT NULL
    )",
];

/// Options of `outbox demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Database of the outbox, the inbox and the demo's business tables:
    /// `sqlite:FILE` (created if missing), `postgres://…`, `mysql://…`, or `memory`
    /// for the in-memory store (no database, no business tables). The demo creates
    /// the tables it needs and DELETEs every row of outbox_messages, outbox_inbox,
    /// demo_orders and demo_order_views at start; it drops nothing.
    #[arg(
        long,
        env = DATABASE_URL_ENV,
        hide_env_values = true,
        default_value = "sqlite:outbox-demo.db"
    )]
    database_url: String,
    /// Orders to place; each writes three events.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    /// Customers; a customer id is the partition key, so each customer's events must
    /// arrive in order.
    #[arg(long, default_value_t = 50)]
    customers: usize,
    /// Relay instances, as if on separate hosts, sharing one outbox.
    #[arg(long, default_value_t = 2)]
    relays: usize,
    /// Messages claimed per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// The broker fails every Nth publish transiently (0: never).
    #[arg(long, default_value_t = 10)]
    fail_every: usize,
    /// The broker redelivers every Nth message to the consumer (0: never), to show the
    /// inbox absorbing duplicates.
    #[arg(long, default_value_t = 25)]
    redeliver_every: usize,
    /// Give up if the run takes longer than this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl DemoArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.orders == 0 || self.customers == 0 || self.relays == 0 || self.batch_size == 0 {
            bail!("--orders, --customers, --relays and --batch-size must be at least 1");
        }
        if self.fail_every == 1 {
            bail!("--fail-every 1 would fail every publish forever; use 0 (never) or 2 and up");
        }
        Ok(())
    }
}

fn routes() -> anyhow::Result<RouteRegistry> {
    let config = RoutesConfig {
        services: vec![ServiceRoute {
            name: Identifier::parse("service", "orders")?,
            table: Identifier::parse("table", OUTBOX_TABLE)?,
            topic: TopicName::parse("topic", "orders.events")?,
            consumer_group: TopicName::parse("consumer group", CONSUMER_GROUP)?,
            strategy: PersistenceStrategy::DbAndPublish,
            topic_partitions: None,
            topic_replication: None,
        }],
        events: EVENTS
            .iter()
            .map(|e| EventRouteConfig {
                event_type: (*e).into(),
                service: "orders".into(),
                strategy: None,
            })
            .collect(),
    };
    Ok(RouteRegistry::from_config(config)?)
}

/// Where the outbox, the inbox and the business tables live.
enum Storage {
    Memory {
        store: InMemoryStore,
        inbox: InMemoryInbox,
    },
    Database {
        db: DatabaseConnection,
        store: SeaOrmStore,
        /// Transactions run again after a transient error (deadlock, lock timeout).
        retries: AtomicU64,
    },
}

impl Storage {
    /// Opens `url`, creates the tables and empties the ones the demo uses.
    async fn open(url: &str) -> anyhow::Result<Self> {
        if url == MEMORY {
            println!("storage: in-memory outbox and inbox (--database-url {MEMORY})");
            return Ok(Storage::Memory {
                store: InMemoryStore::with_max_attempts(MAX_ATTEMPTS),
                inbox: InMemoryInbox::new(),
            });
        }
        let db = database::connect(url).await?;
        let backend = db.get_database_backend();
        println!(
            "storage: {} (--database-url or {DATABASE_URL_ENV} to change)",
            database::describe(url, backend)
        );
        let store = SeaOrmStore::new(
            db.clone(),
            StoreConfig::default().with_max_attempts(MAX_ATTEMPTS),
        )?;
        store
            .create_tables()
            .await
            .context("create the outbox tables")?;
        for ddl in DEMO_TABLES {
            db.execute_unprepared(ddl)
                .await
                .context("create the demo tables")?;
        }
        let tables = [OUTBOX_TABLE, INBOX_TABLE, "demo_orders", "demo_order_views"];
        println!(
            "clearing the demo's tables for a clean run: DELETE FROM {} (nothing else is touched)",
            tables.join(", ")
        );
        for table in tables {
            db.execute_unprepared(&format!("DELETE FROM {table}"))
                .await
                .with_context(|| format!("clear {table}"))?;
        }
        Ok(Storage::Database {
            db,
            store,
            retries: AtomicU64::new(0),
        })
    }

    fn store(&self) -> Arc<dyn MessageStore> {
        match self {
            Storage::Memory { store, .. } => Arc::new(store.clone()),
            Storage::Database { store, .. } => Arc::new(store.clone()),
        }
    }

    /// The producer's transaction: the business row and the order's events commit
    /// together, or neither does.
    async fn place_order(
        &self,
        order: usize,
        customer: &str,
        events: Vec<OutboxMessage>,
    ) -> anyhow::Result<()> {
        match self {
            Storage::Memory { store, .. } => {
                store.enqueue(events).await.context("enqueue")?;
            }
            Storage::Database { db, store, .. } => {
                let txn = db.begin().await.context("begin")?;
                txn.execute_raw(statement(
                    db.get_database_backend(),
                    "INSERT INTO demo_orders (order_id, customer, status) VALUES (?, ?, 'placed')",
                    [order_id(order), Value::from(customer)],
                ))
                .await
                .context("insert the order")?;
                store.enqueue_in(&txn, events).await.context("enqueue")?;
                txn.commit().await.context("commit the order")?;
            }
        }
        Ok(())
    }

    /// The consumer's transaction for one batch of deliveries: each delivery is
    /// recorded in the inbox and, on its first delivery only, its effect is applied,
    /// all committed together. Returns the ids whose effect was applied and the
    /// consumer's state after the batch (`state` itself is untouched, so that a
    /// rolled-back batch can run again).
    async fn consume_batch(
        &self,
        deliveries: &[&OutboxMessage],
        state: &ConsumerState,
    ) -> anyhow::Result<(Vec<MessageId>, ConsumerState)> {
        let mut consumed = Vec::with_capacity(deliveries.len());
        let mut state = state.clone();
        let ConsumerState { next_seq, report } = &mut state;
        match self {
            Storage::Memory { inbox, .. } => {
                for message in deliveries {
                    match inbox.record(CONSUMER_GROUP, message.id, Utc::now()).await? {
                        InboxOutcome::Duplicate => report.duplicates += 1,
                        InboxOutcome::First => {
                            apply_effect(message, next_seq, report);
                            consumed.push(message.id);
                        }
                    }
                }
            }
            Storage::Database { db, .. } => {
                // Only this transaction's connection is used until it commits: on
                // SQLite the pool has one connection, which the relays wait for.
                let txn = db.begin().await.context("begin")?;
                for message in deliveries {
                    let outcome =
                        SeaOrmInbox::process_once(&txn, CONSUMER_GROUP, message.id, Utc::now())
                            .await
                            .context("record in the inbox")?;
                    match outcome {
                        InboxOutcome::Duplicate => report.duplicates += 1,
                        InboxOutcome::First => {
                            apply_effect(message, next_seq, report);
                            update_view(&txn, message).await?;
                            consumed.push(message.id);
                        }
                    }
                }
                txn.commit().await.context("commit the consumer's batch")?;
            }
        }
        Ok((consumed, state))
    }

    /// Runs `op` again while it fails with a transient storage error (a deadlock or
    /// lock timeout between the demo's transactions and the relays'), as a real
    /// service would; up to five attempts.
    async fn retry<T, F, Fut>(&self, mut op: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if attempt < 5 && is_transient(&e) => {
                    if let Storage::Database { retries, .. } = self {
                        retries.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!("transient storage error, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Transactions retried after transient errors (`None` in memory).
    fn retries(&self) -> Option<u64> {
        match self {
            Storage::Memory { .. } => None,
            Storage::Database { retries, .. } => Some(retries.load(Ordering::Relaxed)),
        }
    }

    /// What the business tables say: orders placed, and order views that saw all three
    /// events. `None` in memory.
    async fn business_rows(&self) -> anyhow::Result<Option<(i64, i64)>> {
        let Storage::Database { db, .. } = self else {
            return Ok(None);
        };
        let count = |sql: &'static str| async move {
            let row = db
                .query_one_raw(statement(db.get_database_backend(), sql, []))
                .await?
                .context("COUNT(*) returned no row")?;
            anyhow::Ok(row.try_get::<i64>("", "n")?)
        };
        let orders = count("SELECT COUNT(*) AS n FROM demo_orders").await?;
        let complete = count(
            "SELECT COUNT(*) AS n FROM demo_order_views \
             WHERE events_applied = 3 AND last_event = 'order.shipped'",
        )
        .await?;
        Ok(Some((orders, complete)))
    }
}

/// Whether retrying may succeed: a [`StoreError`] the adapter classified as transient.
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_retryable)
    })
}

fn order_id(order: usize) -> Value {
    Value::BigInt(Some(i64::try_from(order).unwrap_or(i64::MAX)))
}

/// The consumer's business effect: a read model of each order, created by
/// `order.created` and advanced by every later event.
async fn update_view<C: ConnectionTrait>(txn: &C, message: &OutboxMessage) -> anyhow::Result<()> {
    let Payload::Json(payload) = &message.payload else {
        bail!("message {} has no JSON payload", message.id);
    };
    let order = payload["order"]
        .as_u64()
        .and_then(|o| usize::try_from(o).ok())
        .context("payload without an order number")?;
    let backend = txn.get_database_backend();
    let event = Value::from(message.event_type.as_str());
    let stmt = if message.event_type == EVENTS[0] {
        statement(
            backend,
            "INSERT INTO demo_order_views (order_id, customer, events_applied, last_event) \
             VALUES (?, ?, 1, ?)",
            [
                order_id(order),
                Value::from(message.partition_key.as_str()),
                event,
            ],
        )
    } else {
        // An event applied before its order.created updates nothing; the per-key order
        // check and the final view count both report it.
        statement(
            backend,
            "UPDATE demo_order_views SET events_applied = events_applied + 1, last_event = ? \
             WHERE order_id = ?",
            [event, order_id(order)],
        )
    };
    txn.execute_raw(stmt)
        .await
        .context("update the order view")?;
    Ok(())
}

/// The producing service: each order writes a business row and its events in one
/// transaction, then wakes the relays so they need not wait for their next poll.
async fn place_orders(
    args: &DemoArgs,
    routes: &RouteRegistry,
    storage: &Storage,
    waker: &RelayWaker,
) -> anyhow::Result<usize> {
    let mut per_customer = vec![0u64; args.customers];
    let mut written = 0;
    for order in 0..args.orders {
        let customer = order % args.customers;
        let key = format!("customer-{customer}");
        let mut events = Vec::with_capacity(EVENTS.len());
        for event in EVENTS {
            let seq = per_customer[customer];
            per_customer[customer] += 1;
            let payload = Payload::Json(
                serde_json::json!({ "order": order, "customer": customer, "seq": seq }),
            );
            events.push(routes.message(event, key.clone(), payload, Utc::now())?);
        }
        written += events.len();
        storage
            .retry(|| storage.place_order(order, &key, events.clone()))
            .await?;
        waker.notify();
        if order.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    Ok(written)
}

#[derive(Debug, Default, Clone)]
struct ConsumerReport {
    processed: usize,
    duplicates: usize,
    order_violations: usize,
}

/// What the consumer has seen so far: the next expected sequence number per key, and
/// the counts of the summary.
#[derive(Debug, Default, Clone)]
struct ConsumerState {
    next_seq: HashMap<String, u64>,
    report: ConsumerReport,
}

/// The consuming service: reads the broker log, records each id in its inbox together
/// with the effect, and checks that every customer's events arrive in sequence.
async fn consume(
    args: &DemoArgs,
    broker: &InMemoryPublisher,
    storage: &Storage,
    expected: usize,
    progress: &ProgressBar,
    deadline: Instant,
) -> anyhow::Result<ConsumerReport> {
    let store = storage.store();
    let mut state = ConsumerState::default();
    let mut offset = 0;
    let mut delivered = 0usize;
    while state.report.processed < expected && Instant::now() < deadline {
        let batch = broker
            .read_from(offset, 500, Duration::from_millis(200))
            .await;
        if batch.is_empty() {
            continue;
        }
        offset += batch.len();
        let mut deliveries: Vec<&OutboxMessage> = Vec::with_capacity(batch.len() + 1);
        for message in &batch {
            delivered += 1;
            deliveries.push(message);
            if args.redeliver_every > 0 && delivered.is_multiple_of(args.redeliver_every) {
                deliveries.push(message);
            }
        }
        let (consumed, next) = storage
            .retry(|| storage.consume_batch(&deliveries, &state))
            .await?;
        state = next;
        // After the commit: the outbox rows are updated through the store's own pool.
        storage
            .retry(|| async {
                store
                    .mark_consumed(&consumed, Utc::now())
                    .await
                    .context("mark consumed")
            })
            .await?;
        progress.set_position(state.report.processed as u64);
    }
    Ok(state.report)
}

fn apply_effect(
    message: &OutboxMessage,
    next_seq: &mut HashMap<String, u64>,
    report: &mut ConsumerReport,
) {
    report.processed += 1;
    let seq = match &message.payload {
        Payload::Json(v) => v["seq"].as_u64(),
        Payload::Bytes { .. } => None,
    };
    let expected = next_seq.entry(message.partition_key.clone()).or_default();
    if seq == Some(*expected) {
        *expected += 1;
    } else {
        report.order_violations += 1;
    }
}

fn progress_bar(total: usize, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} consumed {pos}/{len} events [{bar:40}] {per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn relay_config(args: &DemoArgs, index: usize) -> anyhow::Result<RelayConfig> {
    let mut config = RelayConfig::default();
    config.relay_id = format!("demo-relay-{index}");
    config.batch_size = args.batch_size;
    config.poll_interval = Duration::from_millis(200);
    config.sweep_interval = Duration::from_secs(1);
    // Quick retries so the demo shows them without waiting long.
    config.backoff = BackoffPolicy::new(
        Duration::from_millis(20),
        2.0,
        Duration::from_millis(500),
        10,
    )?;
    Ok(config)
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let routes = routes()?;
    let expected = args.orders * EVENTS.len();
    println!(
        "outbox demo: {} orders → {expected} events for {} customers, {} relays, broker fails every {} publish{}",
        args.orders,
        args.customers,
        args.relays,
        args.fail_every,
        if args.fail_every == 0 { " (never)" } else { "" },
    );
    let storage = Storage::open(&args.database_url).await?;
    let store = storage.store();
    let broker = InMemoryPublisher::new();
    let flaky = FaultyPublisher::new(broker.clone());
    flaky.fail_every(args.fail_every);

    let shutdown = CancellationToken::new();
    let mut relays: Vec<RelayHandle> = Vec::with_capacity(args.relays);
    for i in 0..args.relays {
        let relay = Relay::new(
            Arc::clone(&store),
            Arc::new(flaky.clone()),
            relay_config(&args, i)?,
        )?;
        relays.push(relay.spawn(shutdown.clone()));
    }
    let waker = relays[0].waker();

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let progress = progress_bar(expected, args.no_progress);
    let (written, consumed) = tokio::join!(
        place_orders(&args, &routes, &storage, &waker),
        consume(&args, &broker, &storage, expected, &progress, deadline),
    );
    let (written, consumed) = (written?, consumed?);
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    let mut retried = 0;
    for relay in relays {
        retried += relay.counters().retried.load(Ordering::Relaxed);
        relay.shutdown().await;
    }
    let stats = store.stats().await?;
    let business = storage.business_rows().await?;
    let published_ids: HashSet<MessageId> = broker.messages().iter().map(|m| m.id).collect();
    let lost = written.saturating_sub(consumed.processed);
    let order_ok = consumed.order_violations == 0;

    println!();
    println!("events written        {written}");
    println!(
        "published to broker   {} ({} distinct)",
        broker.len(),
        published_ids.len()
    );
    println!("consumed (effects)    {}", consumed.processed);
    println!(
        "duplicates absorbed   {} (redelivered copies skipped by the inbox)",
        consumed.duplicates
    );
    println!("publish retries       {retried} (transient broker faults, retried with backoff)");
    println!(
        "throughput            {:.0} events/s end to end ({:.2} s)",
        consumed.processed as f64 / elapsed.as_secs_f64().max(1e-9),
        elapsed.as_secs_f64()
    );
    println!(
        "final states          pending {} · retrying {} · in flight {} · published {} · consumed {} · dead {}",
        stats.pending, stats.retrying, stats.in_flight, stats.published, stats.consumed, stats.dead
    );
    println!(
        "per-key order         {}",
        if order_ok {
            format!("verified for {} customers", args.customers.min(args.orders))
        } else {
            format!("VIOLATED {} times", consumed.order_violations)
        }
    );
    println!("lost events           {lost}");
    if let Some(retries) = storage.retries() {
        println!(
            "storage retries       {retries} (demo transactions re-run after a deadlock or lock timeout)"
        );
    }
    let mut business_ok = true;
    if let Some((orders, complete)) = business {
        let placed = i64::try_from(args.orders).unwrap_or(i64::MAX);
        business_ok = orders == placed && complete == placed;
        println!(
            "business rows         {orders} demo_orders · {complete} demo_order_views complete (created → paid → shipped)"
        );
    }

    if lost > 0 || !order_ok || stats.dead > 0 || !business_ok {
        println!("\nresult: FAILED");
        return Ok(ExitCode::FAILURE);
    }
    println!("\nresult: ok: every event delivered, each effect applied once, in per-key order");
    Ok(ExitCode::SUCCESS)
}
