//! `outbox relay` as a child process against real PostgreSQL and the Kafka-protocol
//! broker (`cargo xtask test` builds the CLI with its `kafka` feature and starts both):
//! the metrics endpoint shows the backlog draining to zero, SIGTERM exits 0 with nothing
//! lost and nothing left claimed, and a bad configuration fails fast naming its key.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod common;

use common::{Server, block_on, outbox, temp_dir};
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

[broker]
kind = "kafka"
bootstrap_servers = "{bootstrap}"

[[services]]
name = "orders"
table = "orders_outbox"
topic = "{topic}"
consumer_group = "billing"

[[events]]
event_type = "order.created"
service = "orders"
"#
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
            let claimed = store
                .claim(&outbox_ports::ClaimRequest {
                    owner: "ghost".into(),
                    limit: 100,
                    lease_for: Duration::from_secs(30),
                    now: chrono::Utc::now(),
                })
                .await
                .unwrap();
            let last = claimed.iter().max_by_key(|c| c.seq).map(|c| c.message.id);
            let settlements = claimed
                .iter()
                .map(|c| outbox_ports::Settlement {
                    id: c.message.id,
                    token: c.lease.token,
                    disposition: outbox_ports::Disposition::Published,
                })
                .collect();
            store.settle(settlements, chrono::Utc::now()).await.unwrap();
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
