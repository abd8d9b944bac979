//! `outbox relay` as a child process against real PostgreSQL and the Kafka-protocol
//! broker (`cargo xtask test` builds the CLI with its `kafka` feature and starts both):
//! the metrics endpoint shows the backlog draining to zero, SIGTERM exits 0 with nothing
//! lost and nothing left claimed, and a bad configuration fails fast naming its key.
//! With a `[compensation]` section the daemon also retries compensation items through
//! the configured command, by its exit code.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod common;

use common::{Server, block_on, orders_on_kafka, outbox, temp_dir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn config(database_url: &str, bootstrap: &str, topic: &str) -> String {
    format!(
        r#"
database_url = "{database_url}"
stats_interval_ms = 100

[relay]
batch_size = 50
poll_interval_ms = 50

[[cursors]]
name = "audit"
service = "orders"
{}"#,
        orders_on_kafka(bootstrap, topic)
    )
}

/// Writes `n` messages for the routes of `config` in one transaction.
fn enqueue(database_url: &str, config: &str, n: usize) {
    let registry =
        outbox_domain::RouteRegistry::from_toml(&config[config.find("[[services]]").unwrap()..])
            .unwrap();
    block_on(async {
        use sea_orm::TransactionTrait;
        let db = outbox_sea_orm::connect(database_url).await.unwrap();
        let outbox = outbox_sea_orm::RoutedOutbox::new(
            db.clone(),
            registry,
            outbox_sea_orm::StoreConfig::default(),
        )
        .unwrap();
        outbox.create_tables().await.unwrap();
        let messages: Vec<_> = (0..n)
            .map(|i| {
                outbox
                    .message(
                        "order.created",
                        format!("order-{}", i % 10),
                        outbox_domain::Payload::Json(serde_json::json!({ "n": i })),
                    )
                    .unwrap()
            })
            .collect();
        let txn = db.begin().await.unwrap();
        outbox.write_in(&txn, messages, None).await.unwrap();
        txn.commit().await.unwrap();
    });
}

fn stats(database_url: &str) -> outbox_ports::OutboxStats {
    block_on(async {
        use outbox_ports::MessageStore;
        let db = outbox_sea_orm::connect(database_url).await.unwrap();
        let table = outbox_domain::Identifier::parse("table", "orders_outbox").unwrap();
        outbox_sea_orm::SeaOrmStore::new(
            db,
            outbox_sea_orm::StoreConfig::default().with_table(table),
        )
        .unwrap()
        .stats()
        .await
        .unwrap()
    })
}

/// A running `outbox relay`.
struct Daemon {
    child: Child,
    metrics: SocketAddr,
}

impl Daemon {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outbox"))
            .args(["relay", "--config"])
            .arg(config)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env_remove("OUTBOX_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let metrics = loop {
            let line = lines
                .next()
                .expect("the daemon printed its metrics address")
                .unwrap();
            if let Some(addr) = line.strip_prefix("metrics listening on ") {
                break addr.parse().unwrap();
            }
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, metrics }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.metrics).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    /// The value of the sample `name{labels}` on /metrics.
    fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        let prefix = format!("{name}{{{labels}}} ");
        body.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    }

    fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < limit,
                "{what} not reached in {limit:?}:\n{}",
                self.get("/metrics").1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code (within 30 s).
    fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bootstrap() -> String {
    std::env::var("OUTBOX_TEST_KAFKA_BOOTSTRAP")
        .expect("OUTBOX_TEST_KAFKA_BOOTSTRAP is not set: run the tests with `cargo xtask test`")
}

#[test]
fn the_backlog_drains_and_sigterm_stops_without_loss() {
    let Some(db) = Server::Postgres.fresh_database("relay_daemon") else {
        return;
    };
    let dir = temp_dir("relay_daemon");
    let topic = format!("orders.daemon.{}", uuid::Uuid::new_v4().simple());
    let text = config(&db.url, &bootstrap(), &topic);
    let path = dir.join("outbox.toml");
    std::fs::write(&path, &text).unwrap();
    enqueue(&db.url, &text, 500);
    // A named cursor at the start of the log, which nobody moves: its lag is the log.
    block_on(async {
        use outbox_ports::{CursorStore, OutboxLog};
        let conn = outbox_sea_orm::connect(&db.url).await.unwrap();
        let table = outbox_domain::Identifier::parse("table", "orders_outbox").unwrap();
        let log = outbox_sea_orm::SeaOrmStore::new(
            conn.clone(),
            outbox_sea_orm::StoreConfig::default().with_table(table),
        )
        .unwrap();
        outbox_sea_orm::SeaOrmCursorStore::new(conn)
            .save("audit", log.start(), None, chrono::Utc::now())
            .await
            .unwrap();
    });

    let daemon = Daemon::start(&path);
    assert_eq!(daemon.get("/healthz").0, 200);
    let labels = format!("service=\"orders\",topic=\"{topic}\"");
    daemon.wait_until("all 500 published", Duration::from_secs(60), |d| {
        d.metric("outbox_published_total", &labels) == Some(500.0)
    });
    daemon.wait_until("the backlog gauge at zero", Duration::from_secs(10), |d| {
        d.metric("outbox_backlog", &labels) == Some(0.0)
            && d.metric("outbox_in_flight", &labels) == Some(0.0)
    });
    assert_eq!(daemon.get("/readyz").0, 200);
    assert!(daemon.metric("outbox_oldest_unsent_age_seconds", &labels) == Some(0.0));
    daemon.wait_until("the cursor's lag", Duration::from_secs(10), |d| {
        d.metric("outbox_cursor_lag_entries", "cursor=\"audit\"") == Some(500.0)
    });
    assert!(
        daemon
            .metric("outbox_cursor_lag_seconds", "cursor=\"audit\"")
            .is_some_and(|s| s >= 0.0)
    );
    let (_, body) = daemon.get("/metrics");
    for histogram in [
        "outbox_publish_duration_seconds",
        "outbox_commit_to_ack_seconds",
    ] {
        assert!(body.contains(histogram), "{histogram} missing:\n{body}");
    }

    // More work, and SIGTERM while it is being relayed.
    enqueue(&db.url, &text, 1_000);
    daemon.wait_until("relaying again", Duration::from_secs(30), |d| {
        d.metric("outbox_published_total", &labels)
            .is_some_and(|n| n > 500.0)
    });
    assert_eq!(daemon.terminate(), Some(0), "a graceful stop exits 0");
    let after = stats(&db.url);
    assert_eq!(after.in_flight, 0, "nothing left claimed: {after:?}");
    assert_eq!(
        after.pending + after.retrying + after.published,
        1_500,
        "nothing lost: {after:?}"
    );
    assert_eq!(after.dead, 0);

    // `outbox verify`: everything marked published is on the broker, keys in order.
    let config = path.to_str().unwrap();
    let run = outbox(&["verify", "--config", config, "--json"]);
    assert!(run.ok(), "{run}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["checked"], after.published, "{run}");
    assert_eq!(report["missing"], serde_json::json!([]), "{run}");
    assert_eq!(report["out_of_order"], serde_json::json!([]), "{run}");
    // A message marked published that never reached the broker is reported.
    let ghost = mark_published_without_broker(&db.url, &text);
    let run = outbox(&["verify", "--config", config, "--json"]);
    assert_eq!(run.code, Some(1), "{run}");
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let missing = report["missing"].as_array().unwrap();
    assert!(missing.contains(&serde_json::json!(ghost)), "{run}");
    // The messages the daemon had left pending were settled the same way: missing too.
    assert_eq!(
        missing.len() as u64,
        after.pending + after.retrying + 1,
        "{run}"
    );
    let run = outbox(&["verify", "--config", config]);
    assert!(
        run.stdout.contains(" missing, 0 key(s) out of order"),
        "{run}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Enqueues one message and settles it as published without any broker (what a buggy
/// relay might do); returns its id.
fn mark_published_without_broker(database_url: &str, config: &str) -> String {
    enqueue(database_url, config, 1);
    block_on(async {
        use outbox_ports::MessageStore;
        let db = outbox_sea_orm::connect(database_url).await.unwrap();
        let table = outbox_domain::Identifier::parse("table", "orders_outbox").unwrap();
        let store = outbox_sea_orm::SeaOrmStore::new(
            db,
            outbox_sea_orm::StoreConfig::default().with_table(table),
        )
        .unwrap();
        loop {
            let claimed =
                outbox_test_support::mark_published(&store, "ghost", 100, chrono::Utc::now())
                    .await
                    .unwrap();
            let last = claimed.iter().max_by_key(|c| c.seq).map(|c| c.message.id);
            // The newest message is the ghost; older pending ones are settled too, so
            // they are reported missing as well, which is fine: none reached a broker.
            if let Some(id) = last
                && store.stats().await.unwrap().pending == 0
            {
                return id.to_string();
            }
        }
    })
}

/// The compensation command of the test: records each call (operation type and the
/// payload it read), then succeeds (`refund`), asks for a retry the first time and
/// succeeds the second (`reship`, counted in a file), hangs (`slow`, writing its pid
/// first), or refuses for good (the rest).
const COMPENSATE_SH: &str = r#"
dir=$(dirname "$0")
payload=$(cat)
echo "$OUTBOX_OPERATION_TYPE $payload" >> "$dir/calls"
case "$OUTBOX_OPERATION_TYPE" in
  refund) exit 0 ;;
  reship)
    n=$(cat "$dir/reship.count" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$dir/reship.count"
    if [ "$n" -eq 0 ]; then echo "warehouse busy" >&2; exit 75; fi
    exit 0 ;;
  slow) echo $$ > "$dir/slow.pid"; exec sleep 60 ;;
  *) echo "account closed" >&2; exit 3 ;;
esac
"#;

#[test]
fn the_daemon_runs_compensation_through_the_command() {
    use outbox_domain::{CompensationStatus, ErrorText, NewCompensationItem};
    use outbox_ports::CompensationStore;
    use outbox_sea_orm::SeaOrmCompensationStore;

    let Some(db) = Server::Postgres.fresh_database("relay_compensation") else {
        return;
    };
    let dir = temp_dir("relay_compensation");
    let script = dir.join("compensate.sh");
    std::fs::write(&script, COMPENSATE_SH).unwrap();
    let topic = format!("orders.compensation.{}", uuid::Uuid::new_v4().simple());
    let section = format!(
        "[compensation]\ncommand = [\"/bin/sh\", \"{}\"]\ntimeout_ms = 5000\n\
         poll_interval_ms = 50\nreserve_ms = 10000\nbackoff_base_ms = 100\n\
         backoff_cap_ms = 200\n\n[broker]",
        script.display()
    );
    let text = config(&db.url, &bootstrap(), &topic)
        .replace("[relay]\n", "[relay]\ndrain_timeout_ms = 1000\n")
        .replace("[broker]", &section);
    let path = dir.join("outbox.toml");
    std::fs::write(&path, &text).unwrap();
    let run = outbox(&["migrate", "up", "--database-url", &db.url]);
    assert!(run.ok(), "{run}");
    enqueue(&db.url, &text, 3);
    let record = |ops: &[&str]| {
        block_on(async {
            let store =
                SeaOrmCompensationStore::new(outbox_sea_orm::connect(&db.url).await.unwrap());
            let items = (0..)
                .zip(ops)
                .map(|(index, op)| NewCompensationItem {
                    batch_id: format!("b-{op}"),
                    operation_type: (*op).into(),
                    item_index: index,
                    payload: serde_json::json!({ "order": index }),
                    failure_reason: ErrorText::new("gateway timeout"),
                })
                .collect();
            store.record(items, 3, chrono::Utc::now()).await.unwrap()
        })
    };
    let ids = record(&["refund", "reship", "cancel"]);
    let get = |ids: &[uuid::Uuid]| {
        block_on(async {
            let store =
                SeaOrmCompensationStore::new(outbox_sea_orm::connect(&db.url).await.unwrap());
            let mut items = Vec::new();
            for id in ids {
                items.push(store.get(*id).await.unwrap().unwrap());
            }
            items
        })
    };

    let daemon = Daemon::start(&path);
    let started = Instant::now();
    let items = loop {
        let items = get(&ids);
        let statuses: Vec<_> = items.iter().map(|i| i.status).collect();
        if statuses
            == [
                CompensationStatus::Resolved,
                CompensationStatus::Resolved,
                CompensationStatus::ManualRequired,
            ]
        {
            break items;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "statuses {statuses:?}; calls:\n{}",
            std::fs::read_to_string(dir.join("calls")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // One attempt each, two for the one that asked for a retry (recorded as one).
    assert_eq!(
        items.iter().map(|i| i.retry_count).collect::<Vec<_>>(),
        [0, 1, 1]
    );
    let reason = items[2].failure_reason.as_str();
    assert!(
        reason.contains("exited with 3") && reason.contains("account closed"),
        "{reason}"
    );
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
    let mut calls: Vec<&str> = calls.lines().collect();
    calls.sort_unstable();
    assert_eq!(
        calls,
        [
            r#"cancel {"order":2}"#,
            r#"refund {"order":0}"#,
            r#"reship {"order":1}"#,
            r#"reship {"order":1}"#,
        ]
    );
    // The worker's counters, on the daemon's /metrics (incremented just after each
    // item is written, so they may trail the table by a moment).
    let count = |d: &Daemon, name: &str, operation: &str| {
        d.metric(
            &format!("outbox_compensation_{name}_total"),
            &format!("operation=\"{operation}\""),
        )
    };
    daemon.wait_until("the compensation counters", Duration::from_secs(5), |d| {
        count(d, "resolved", "refund") == Some(1.0)
            && count(d, "resolved", "reship") == Some(1.0)
            && count(d, "manual_required", "cancel") == Some(1.0)
            && count(d, "retried", "reship") == Some(2.0)
    });
    assert_eq!(count(&daemon, "resolved", "cancel"), None);
    // The relay runs alongside.
    let labels = format!("service=\"orders\",topic=\"{topic}\"");
    daemon.wait_until("the 3 messages published", Duration::from_secs(30), |d| {
        d.metric("outbox_published_total", &labels) == Some(3.0)
    });

    // SIGTERM while a command runs: the daemon waits for it up to the drain timeout,
    // then exits 0 and the command is killed; the item is left for a later attempt.
    let slow = record(&["slow"]);
    let pid_file = dir.join("slow.pid");
    let started = Instant::now();
    while !pid_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "`slow` never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100)); // the pid is written
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    let stopping = Instant::now();
    assert_eq!(daemon.terminate(), Some(0), "a graceful stop exits 0");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    // Gone, or a zombie waiting for a reaper the container may not have.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the command outlived the daemon: {stat}"
    );
    let slow = &get(&slow)[0];
    assert_eq!(
        (slow.status, slow.retry_count),
        (CompensationStatus::Pending, 0),
        "{slow:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_configuration_fails_fast_naming_the_key() {
    let dir = temp_dir("relay_bad_config");
    // The database is unreachable: the key error must come first, at once.
    let good = config("postgres://nobody@127.0.0.1:1/none", "127.0.0.1:1", "t");
    let path = dir.join("outbox.toml");
    for (text, env, key) in [
        (
            good.replace("batch_size = 50", "batch_sise = 50"),
            None,
            "relay.batch_sise",
        ),
        (
            good.clone(),
            Some(("OUTBOX__RELAY__BATCH_SIZE", "lots")),
            "relay.batch_size",
        ),
        (
            good.replace("orders_outbox", "orders; drop table x"),
            None,
            "services",
        ),
        (
            good.replace(
                "[broker]",
                "[compensation]\ncommand = [\"/bin/true\"]\ntimeout_ms = 5000\n\
                 reserve_ms = 5000\n\n[broker]",
            ),
            None,
            "compensation.reserve_ms",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox"));
        cmd.args(["relay", "--config"]).arg(&path);
        if let Some((name, value)) = env {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "names {key}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    }
    let missing = outbox(&["relay", "--config", "/nonexistent/outbox.toml"]);
    assert_eq!(missing.code, Some(2), "{missing}");
    assert!(
        missing.stderr.contains("/nonexistent/outbox.toml"),
        "{missing}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
