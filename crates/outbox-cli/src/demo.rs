//! `outbox demo`: an order service writes orders and their events, relays publish them
//! through a flaky broker, and a consumer processes each event once through its inbox
//! while checking per-key order. The summary is computed from what the consumer saw.

use anyhow::{Context, bail};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use outbox_domain::{
    BackoffPolicy, EventRouteConfig, Identifier, MessageId, OutboxMessage, Payload,
    PersistenceStrategy, RouteRegistry, RoutesConfig, ServiceRoute, TopicName,
};
use outbox_ports::{Inbox, InboxOutcome, MessageStore};
use outbox_runtime::{CancellationToken, Relay, RelayConfig, RelayHandle, RelayWaker};
use outbox_test_support::{FaultyPublisher, InMemoryInbox, InMemoryPublisher, InMemoryStore};
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const EVENTS: [&str; 3] = ["order.created", "order.paid", "order.shipped"];
const CONSUMER_GROUP: &str = "billing";

/// Options of `outbox demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
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
            table: Identifier::parse("table", "orders_outbox")?,
            topic: TopicName::parse("topic", "orders.events")?,
            consumer_group: TopicName::parse("consumer group", CONSUMER_GROUP)?,
            strategy: PersistenceStrategy::DbAndPublish,
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

/// The producing service: each order writes its events to the outbox, then wakes the
/// relays so they need not wait for their next poll.
async fn place_orders(
    args: &DemoArgs,
    routes: &RouteRegistry,
    store: &InMemoryStore,
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
        store.enqueue(events).await.context("enqueue")?;
        waker.notify();
        if order.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    Ok(written)
}

#[derive(Debug, Default)]
struct ConsumerReport {
    processed: usize,
    duplicates: usize,
    order_violations: usize,
}

/// The consuming service: reads the broker log, records each id in its inbox before
/// applying the effect, and checks that every customer's events arrive in sequence.
async fn consume(
    args: &DemoArgs,
    broker: &InMemoryPublisher,
    store: &InMemoryStore,
    expected: usize,
    progress: &ProgressBar,
    deadline: Instant,
) -> anyhow::Result<ConsumerReport> {
    let inbox = InMemoryInbox::new();
    let mut report = ConsumerReport::default();
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    let mut offset = 0;
    let mut delivered = 0usize;
    while report.processed < expected && Instant::now() < deadline {
        let batch = broker
            .read_from(offset, 500, Duration::from_millis(200))
            .await;
        offset += batch.len();
        let mut consumed: Vec<MessageId> = Vec::with_capacity(batch.len());
        for message in &batch {
            delivered += 1;
            let copies =
                if args.redeliver_every > 0 && delivered.is_multiple_of(args.redeliver_every) {
                    2
                } else {
                    1
                };
            for _ in 0..copies {
                match inbox.record(CONSUMER_GROUP, message.id, Utc::now()).await? {
                    InboxOutcome::Duplicate => report.duplicates += 1,
                    InboxOutcome::First => {
                        apply_effect(message, &mut next_seq, &mut report);
                        consumed.push(message.id);
                    }
                }
            }
        }
        store.mark_consumed(&consumed, Utc::now()).await?;
        progress.set_position(report.processed as u64);
    }
    Ok(report)
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
    let store = InMemoryStore::with_max_attempts(10);
    let broker = InMemoryPublisher::new();
    let flaky = FaultyPublisher::new(broker.clone());
    flaky.fail_every(args.fail_every);

    let expected = args.orders * EVENTS.len();
    println!(
        "outbox demo: {} orders → {expected} events for {} customers, {} relays, broker fails every {} publish{}",
        args.orders,
        args.customers,
        args.relays,
        args.fail_every,
        if args.fail_every == 0 { " (never)" } else { "" },
    );
    println!(
        "storage: in-memory outbox (the embedded SQLite default arrives with the storage adapter)"
    );

    let shutdown = CancellationToken::new();
    let mut relays: Vec<RelayHandle> = Vec::with_capacity(args.relays);
    for i in 0..args.relays {
        let relay = Relay::new(
            Arc::new(store.clone()),
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
        place_orders(&args, &routes, &store, &waker),
        consume(&args, &broker, &store, expected, &progress, deadline),
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

    if lost > 0 || !order_ok || stats.dead > 0 {
        println!("\nresult: FAILED");
        return Ok(ExitCode::FAILURE);
    }
    println!("\nresult: ok: every event delivered, each effect applied once, in per-key order");
    Ok(ExitCode::SUCCESS)
}
