//! Running the `outbox` binary, and databases for it: SQLite files in a temp dir, and
//! fresh databases on the PostgreSQL and MariaDB servers named by
//! `OUTBOX_TEST_POSTGRES_URL` and `OUTBOX_TEST_MYSQL_URL` (which `cargo xtask test`
//! sets after starting them).
//!
//! A server test whose variable is not set fails under CI (env `CI`), and outside CI
//! prints a SKIPPED line and passes.

#![allow(dead_code)] // each test binary uses part of this module

use sea_orm::ConnectionTrait;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// What a run of `outbox` did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `outbox ARGS` in `dir` (default: the temp dir), ignoring any
/// `OUTBOX_DATABASE_URL` of the caller's environment.
pub(crate) fn outbox_in(dir: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outbox"));
    cmd.args(args)
        .env_remove("OUTBOX_DATABASE_URL")
        .current_dir(dir.map_or_else(std::env::temp_dir, Path::to_path_buf));
    let out = cmd.output().expect("run outbox");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

pub(crate) fn outbox(args: &[&str]) -> Run {
    outbox_in(None, args)
}

fn unique(case: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{case}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// An empty directory of its own for one test.
pub(crate) fn temp_dir(case: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("outbox-cli-tests")
        .join(unique(case));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// A database server under test.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Server {
    Postgres,
    MariaDb,
}

impl Server {
    fn var(self) -> &'static str {
        match self {
            Server::Postgres => "OUTBOX_TEST_POSTGRES_URL",
            Server::MariaDb => "OUTBOX_TEST_MYSQL_URL",
        }
    }

    /// A fresh database on this server for `case`, or `None` (after a SKIPPED line)
    /// when the server is not configured outside CI.
    pub(crate) fn fresh_database(self, case: &str) -> Option<ServerDb> {
        let var = self.var();
        let admin = match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => url,
            _ if in_ci() => panic!(
                "{var} is not set: under CI the server tests must run; use `cargo xtask test`, \
                 which starts PostgreSQL and MariaDB on 127.0.0.1 and sets it"
            ),
            _ => {
                // Straight to stderr, past the test harness's capture, so it is seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED {case}: {var} is not set. Run `cargo xtask test`, or \
                     `cargo xtask backends start` and `source target/xtask-backends/dev/env`. ***\n"
                );
                return None;
            }
        };
        let name = unique(&format!("cli_{case}"));
        block_on(async {
            let db = outbox_sea_orm::connect(&admin)
                .await
                .expect("connect to the admin URL");
            db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create the test database");
            db.close().await.expect("close");
        });
        let base = admin.rsplit_once('/').expect("a URL with a path").0;
        Some(ServerDb {
            url: format!("{base}/{name}"),
            admin,
            name,
        })
    }
}

/// A database created for one test, dropped at the end of it.
#[derive(Debug)]
pub(crate) struct ServerDb {
    pub(crate) url: String,
    admin: String,
    name: String,
}

impl Drop for ServerDb {
    fn drop(&mut self) {
        // Best effort: the servers of `cargo xtask test` are thrown away anyway.
        block_on(async {
            if let Ok(db) = outbox_sea_orm::connect(&self.admin).await {
                let _ = db
                    .execute_unprepared(&format!("DROP DATABASE {}", self.name))
                    .await;
                let _ = db.close().await;
            }
        });
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Runs one SQL statement on `url` from the test (not through `outbox`).
pub(crate) fn sql(url: &str, statement: &str) -> Result<(), sea_orm::DbErr> {
    block_on(async {
        let db = outbox_sea_orm::connect(url)
            .await
            .expect("connect from the test");
        let result = db.execute_unprepared(statement).await.map(|_| ());
        let _ = db.close().await;
        result
    })
}

/// The `[broker]` and route sections of a daemon configuration: Kafka at `bootstrap`,
/// one service `orders` in the table `orders_outbox`, publishing `order.created` to
/// `topic`. The routes start at `[[services]]`, which `RouteRegistry::from_toml` reads.
pub(crate) fn orders_on_kafka(bootstrap: &str, topic: &str) -> String {
    format!(
        r#"
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
