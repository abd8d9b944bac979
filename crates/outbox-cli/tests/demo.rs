//! `outbox demo` runs end to end, in memory and on SQLite, PostgreSQL and MariaDB, and
//! reports what actually happened.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod common;

use common::{Run, Server, outbox, outbox_in, temp_dir};

/// Small numbers, so that a run takes about a second.
const ORDERS: usize = 100;
const CUSTOMERS: usize = 5;

fn demo_args(database_url: &str) -> Vec<String> {
    [
        "demo",
        "--database-url",
        database_url,
        "--orders",
        &ORDERS.to_string(),
        "--customers",
        &CUSTOMERS.to_string(),
        "--fail-every",
        "5",
        "--redeliver-every",
        "10",
        "--timeout-secs",
        "60",
        "--no-progress",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn run_demo(dir: Option<&std::path::Path>, args: &[String]) -> Run {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    outbox_in(dir, &args)
}

fn number_after(stdout: &str, prefix: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
}

/// The summary says every event was delivered once, in per-key order, with retries;
/// on a database, the business tables agree.
fn assert_success(run: &Run, on_database: bool) {
    let events = ORDERS * 3;
    let out = &run.stdout;
    assert!(run.ok(), "demo failed:\n{run}");
    assert!(
        out.contains(&format!("events written        {events}\n")),
        "{run}"
    );
    assert!(
        out.contains(&format!("consumed (effects)    {events}\n")),
        "{run}"
    );
    // Every 10th delivery is redelivered; on a database a relay may also re-publish a
    // message whose settlement it lost, which the inbox absorbs just the same.
    let duplicates = number_after(out, "duplicates absorbed");
    assert!(duplicates >= (events / 10) as u64, "{run}");
    if !on_database {
        assert_eq!(duplicates, (events / 10) as u64, "{run}");
    }
    assert!(
        out.contains(&format!(
            "per-key order         verified for {CUSTOMERS} customers"
        )),
        "{run}"
    );
    assert!(out.contains("lost events           0\n"), "{run}");
    assert!(out.contains(" · dead 0\n"), "{run}");
    assert!(
        number_after(out, "publish retries") > 0,
        "a broker failing every 5th publish causes retries: {run}"
    );
    let business =
        format!("business rows         {ORDERS} demo_orders · {ORDERS} demo_order_views complete");
    assert_eq!(out.contains(&business), on_database, "{run}");
    assert!(out.contains("\nresult: ok"), "{run}");
}

#[test]
fn demo_in_memory_delivers_every_event_once_in_key_order() {
    let run = run_demo(None, &demo_args("memory"));
    assert!(run.stdout.contains("storage: in-memory"), "{run}");
    assert_success(&run, false);
}

#[test]
fn demo_on_the_default_sqlite_file_delivers_and_starts_clean_every_time() {
    let dir = temp_dir("demo_sqlite_default");
    let mut args = demo_args("");
    args.drain(1..3); // no --database-url: the default, in the current directory
    let run = run_demo(Some(&dir), &args);
    let file = dir.join("outbox-demo.db");
    assert!(
        run.stdout
            .contains(&format!("storage: SQLite file {}", file.display())),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("DELETE FROM outbox_messages, outbox_inbox, demo_orders, demo_order_views"),
        "{run}"
    );
    assert_success(&run, true);
    assert!(file.exists());

    // A second run on the same file starts from empty tables again.
    let run = run_demo(Some(&dir), &args);
    assert_success(&run, true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_on_a_sqlite_url_delivers_every_event_once_in_key_order() {
    let dir = temp_dir("demo_sqlite_url");
    let url = format!("sqlite:{}", dir.join("orders.db").display());
    assert_success(&run_demo(None, &demo_args(&url)), true);
    let _ = std::fs::remove_dir_all(&dir);
}

fn demo_on(server: Server, case: &str) {
    let Some(db) = server.fresh_database(case) else {
        return;
    };
    assert_success(&run_demo(None, &demo_args(&db.url)), true);
}

#[test]
fn demo_on_postgres_delivers_every_event_once_in_key_order() {
    demo_on(Server::Postgres, "demo_postgres");
}

#[test]
fn demo_on_mariadb_delivers_every_event_once_in_key_order() {
    demo_on(Server::MariaDb, "demo_mariadb");
}

#[test]
fn demo_rejects_settings_that_cannot_finish() {
    let run = outbox(&["demo", "--database-url", "memory", "--fail-every", "1"]);
    assert!(!run.ok());
    assert!(
        run.stderr
            .contains("--fail-every 1 would fail every publish forever"),
        "{run}"
    );
    let run = outbox(&["demo", "--database-url", "memory", "--orders", "0"]);
    assert!(!run.ok());
    assert!(run.stderr.contains("must be at least 1"), "{run}");
}

#[test]
fn demo_rejects_an_unsupported_database_url_with_exit_code_2() {
    let run = outbox(&["demo", "--database-url", "redis://localhost/0"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("unsupported database url"), "{run}");
}
