//! The crash-point matrix: `outbox relay` as a child process against real PostgreSQL
//! and the Kafka-protocol broker, SIGKILLed at each named failpoint 20 times while
//! writers keep committing (and rolling back) out of order, then restarted to drain.
//! What reached the broker is held against the invariants of
//! [`outbox_test_support::crash::Ledger::check`], and consumed through the inbox to
//! show that the duplicates of the ack-before-mark window have no second effect.
//!
//! `cargo xtask test` builds the CLI with its `kafka` and `failpoints` features.

#![cfg(all(feature = "kafka", feature = "failpoints"))]
#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod common;

use common::{Server, block_on, orders_on_kafka, temp_dir};
use outbox_domain::{Payload, RouteRegistry};
use outbox_kafka::{KafkaConfig, KafkaSource, Provisioning, TopicSpec};
use outbox_ports::{MessageStore, header};
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerRunner};
use outbox_sea_orm::{RoutedOutbox, SeaOrmDeadLetters, SeaOrmInbox, SeaOrmStore, StoreConfig};
use outbox_test_support::crash::{CrashPoint, Delivery, Ledger, crash_once};
use outbox_test_support::{SqlEffects, scalar};
use rand::Rng;
use sea_orm::TransactionTrait;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kill/restart cycles per failpoint.
const CYCLES: u32 = 20;
/// Concurrent writers; writer `w` owns keys `w`, `w + WRITERS`, … so that each key's
/// transactions commit one after the other while different keys interleave.
const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 4;
/// How long one cycle may take to reach its failpoint.
const CYCLE_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_crash_after_claim_loses_nothing_and_duplicates_nothing() {
    crash_matrix(CrashPoint::AfterClaim);
}

#[test]
fn a_crash_in_the_middle_of_a_batch_loses_nothing() {
    crash_matrix(CrashPoint::MidBatch);
}

#[test]
fn a_crash_after_the_broker_ack_before_the_mark_loses_nothing() {
    crash_matrix(CrashPoint::AfterPublish);
}

#[test]
fn a_crash_during_the_ack_transaction_loses_nothing() {
    crash_matrix(CrashPoint::InAckTransaction);
}

fn config(database_url: &str, bootstrap: &str, topic: &str) -> String {
    // One worker with one batch in flight, so that a crash at one point is not also a
    // crash of another batch at another point. A publish that outlives `publish_timeout_ms` is retried while the
    // broker may still take the first attempt (a duplicate outside the crash windows),
    // so it is generous, even for a fresh process's first publish on a loaded machine.
    // Small batches over many keys, so that the keys a killed relay leaves leased (for
    // `lease_ms`) never stop the next one.
    format!(
        r#"
database_url = "{database_url}"

[relay]
batch_size = 4
concurrency = 1
pipeline_depth = 1
poll_interval_ms = 50
lease_ms = 5000
publish_timeout_ms = 4000
backoff_base_ms = 100
backoff_cap_ms = 1000
{}"#,
        orders_on_kafka(bootstrap, topic)
    )
}

fn relay_command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox"));
    cmd.args(["relay", "--config"])
        .arg(config)
        .env_remove("OUTBOX_DATABASE_URL")
        .env("RUST_LOG", "warn");
    cmd
}

fn crash_matrix(point: CrashPoint) {
    let case = format!("crash_{}", point.name().replace('.', "_"));
    let Some(db) = Server::Postgres.fresh_database(&case) else {
        return;
    };
    let bootstrap = std::env::var("OUTBOX_TEST_KAFKA_BOOTSTRAP")
        .expect("OUTBOX_TEST_KAFKA_BOOTSTRAP is not set: run the tests with `cargo xtask test`");
    let kafka = KafkaConfig::new(bootstrap.clone());
    let topic = format!("orders.{case}.{}", uuid::Uuid::new_v4().simple());
    let text = config(&db.url, &bootstrap, &topic);
    let dir = temp_dir(&case);
    let path = dir.join("outbox.toml");
    std::fs::write(&path, &text).unwrap();
    let registry = RouteRegistry::from_toml(&text[text.find("[[services]]").unwrap()..]).unwrap();
    block_on(async {
        let spec = TopicSpec::new(&topic).with_partitions(3);
        outbox_kafka::ensure_topics(&kafka, &[spec], Provisioning::CreateMissing)
            .await
            .unwrap();
    });

    // Writers commit and roll back, out of order across keys, through every cycle.
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = {
        let (url, registry) = (db.url.clone(), registry.clone());
        let (ledger, stop) = (ledger.clone(), stop.clone());
        std::thread::spawn(move || write_until(&url, registry, &ledger, &stop))
    };
    // Let a backlog build, so that the first batches have several messages.
    std::thread::sleep(Duration::from_millis(300));

    let mut relay = relay_command(&path);
    let started = Instant::now();
    let mut lives = Vec::new();
    for cycle in 0..CYCLES {
        let hit = 1 + cycle % 3;
        match crash_once(&mut relay, point, hit, CYCLE_LIMIT) {
            Ok(crashed) => {
                for line in crashed.stderr.lines().filter(|l| l.contains("WARN")) {
                    eprintln!("cycle {cycle}: {line}");
                }
                lives.push(crashed.life);
            }
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                panic!("cycle {cycle}: {e}");
            }
        }
    }
    let crashing = started.elapsed();
    lives.sort();
    stop.store(true, Ordering::SeqCst);
    writers.join().unwrap();
    let ledger = Arc::into_inner(ledger).unwrap().into_inner().unwrap();
    assert!(
        ledger.rolled_back_count() > 0 && ledger.committed_count() > 100,
        "the workload is too small to prove anything: {} committed, {} rolled back",
        ledger.committed_count(),
        ledger.rolled_back_count()
    );

    // A relay without a crash point drains what is left; leases of the last victim
    // expire on the way.
    let committed = ledger.committed_count() as u64;
    let survivor = Survivor(
        relay_command(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stats = block_on(async {
        let conn = outbox_sea_orm::connect(&db.url).await.unwrap();
        let table = outbox_domain::Identifier::parse("table", "orders_outbox").unwrap();
        let store = SeaOrmStore::new(conn, StoreConfig::default().with_table(table)).unwrap();
        let drained = Instant::now();
        loop {
            let stats = store.stats().await.unwrap();
            if stats.published >= committed || drained.elapsed() > Duration::from_secs(120) {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    drop(survivor);
    assert_eq!(
        (
            stats.published,
            stats.pending,
            stats.retrying,
            stats.in_flight,
            stats.dead
        ),
        (committed, 0, 0, 0, 0),
        "everything committed is published, nothing is left leased: {stats:?}"
    );

    // What the broker holds, against the ledger.
    let received = block_on(outbox_kafka::read_topic(
        &kafka,
        &topic,
        Duration::from_secs(30),
    ))
    .unwrap();
    let deliveries: Vec<Delivery> = received
        .iter()
        .map(|m| Delivery {
            id: m.headers[header::MESSAGE_ID].parse().unwrap(),
            key: m.key.clone().unwrap(),
        })
        .collect();
    let verdict = ledger
        .check(&deliveries, point.may_duplicate())
        .unwrap_or_else(|violations| panic!("at {point}: {violations}"));
    if point.may_duplicate() {
        // Each crash here leaves at least one acknowledged message unrecorded, which
        // is published again: proof that the failpoint bit.
        assert!(
            verdict.duplicates >= CYCLES as usize,
            "{CYCLES} crashes at {point} but only {} duplicates",
            verdict.duplicates
        );
    }

    // The inbox absorbs the duplicates: one effect per committed message.
    block_on(consume_once(
        &db.url,
        &kafka,
        &topic,
        &deliveries,
        committed,
    ));
    println!(
        "{point}: {CYCLES} crashes in {crashing:?} (lives from {:?} to {:?}); {committed} committed, {} rolled back, \
         {} delivered ({} duplicates, absorbed by the inbox)",
        lives[0],
        lives[lives.len() - 1],
        ledger.rolled_back_count(),
        verdict.delivered,
        verdict.duplicates
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The draining relay, killed when the test ends however it ends.
struct Survivor(std::process::Child);

impl Drop for Survivor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes until `stop`: each writer, in turn for each of its keys, one transaction of
/// one or two messages, held open a little, rolled back one time in six.
fn write_until(url: &str, registry: RouteRegistry, ledger: &Mutex<Ledger>, stop: &AtomicBool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = outbox_sea_orm::connect(url).await.unwrap();
        let outbox =
            Arc::new(RoutedOutbox::new(db.clone(), registry, StoreConfig::default()).unwrap());
        outbox.create_tables().await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (db, outbox) = (db.clone(), outbox.clone());
            tasks.push(async move {
                let mut next_n = [0i64; KEYS_PER_WRITER];
                let mut turn = 0;
                while !stop.load(Ordering::SeqCst) {
                    let slot = turn % KEYS_PER_WRITER;
                    turn += 1;
                    let key = format!("k{}", w + slot * WRITERS);
                    let (count, hold, rollback) = {
                        let mut rng = rand::rng();
                        (
                            rng.random_range(1..=2),
                            rng.random_range(0..10),
                            rng.random_ratio(1, 6),
                        )
                    };
                    let messages: Vec<_> = (0..count)
                        .map(|i| {
                            let n = next_n[slot] + i;
                            let payload = Payload::Json(serde_json::json!({ "n": n }));
                            outbox
                                .message("order.created", key.clone(), payload)
                                .unwrap()
                        })
                        .collect();
                    let ids: Vec<_> = messages.iter().map(|m| (m.id, key.clone())).collect();
                    let txn = db.begin().await.unwrap();
                    outbox.write_in(&txn, messages, None).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    if rollback {
                        txn.rollback().await.unwrap();
                        ledger
                            .lock()
                            .unwrap()
                            .rolled_back(ids.into_iter().map(|(id, _)| id));
                    } else {
                        txn.commit().await.unwrap();
                        next_n[slot] += count;
                        ledger.lock().unwrap().committed(ids);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
        futures::future::join_all(tasks).await;
    });
}

/// Consumes `topic` once through the inbox into [`SqlEffects`]: every delivery is
/// received, the repeats are recognised as duplicates, and each committed message has
/// exactly one effect, in per-key order.
async fn consume_once(
    url: &str,
    kafka: &KafkaConfig,
    topic: &str,
    deliveries: &[Delivery],
    committed: u64,
) {
    let db = outbox_sea_orm::connect(url).await.unwrap();
    SqlEffects::create_table(&db).await.unwrap();
    let group = format!("crash-check-{}", uuid::Uuid::new_v4().simple());
    let effects = Arc::new(SqlEffects::default());
    let mut consumer = ConsumerConfig::new(&group);
    consumer.lanes = 4;
    let runner = ConsumerRunner::new(
        Arc::new(KafkaSource::new(kafka, &group, &[topic]).unwrap()),
        Arc::new(SeaOrmInbox::new(db.clone())),
        effects.clone(),
        Arc::new(SeaOrmDeadLetters::new(db.clone())),
        consumer,
    )
    .unwrap();
    let counters = runner.counters();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let all = deliveries.len() as u64;
    tokio::time::timeout(Duration::from_secs(120), async {
        while counters.received.load(Ordering::SeqCst) < all
            || counters.processed.load(Ordering::SeqCst) < committed
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not all {all} deliveries consumed: {counters:?}"));
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(DISTINCT message_id) FROM consumer_effects"
        )
        .await as u64,
        committed,
        "one effect per committed message"
    );
    assert_eq!(
        counters.duplicates.load(Ordering::SeqCst),
        all - committed,
        "every repeat recognised by the inbox: {counters:?}"
    );
    assert_eq!(
        effects.order_violations(),
        0,
        "per-key order of the effects"
    );
}
