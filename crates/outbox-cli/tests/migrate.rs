//! `outbox migrate` applies, rolls back, lists and refreshes the outbox-rs migrations on
//! SQLite, PostgreSQL and MariaDB, and leaves the application's own tables alone.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod common;

use common::{Run, Server, outbox, sql, temp_dir};

const MIGRATION: &str = "m20261121_000001_create_outbox_tables";
const DEAD_LETTERS: &str = "m20261121_000002_create_consumer_dead_letters";
const LOG_POSITIONS: &str = "m20261122_000003_outbox_log_positions";
const KEY_IN_FLIGHT: &str = "m20261123_000004_outbox_key_in_flight";
const LEASE_PREDICATE: &str = "m20261124_000005_outbox_lease_predicate";
const STATUS_FIRST: &str = "m20261125_000006_outbox_key_unfinished_status_first";
const FINISHED: &str = "m20261126_000007_outbox_finished_index";
/// Every migration, oldest first.
const ALL: [&str; 7] = [
    MIGRATION,
    DEAD_LETTERS,
    LOG_POSITIONS,
    KEY_IN_FLIGHT,
    LEASE_PREDICATE,
    STATUS_FIRST,
    FINISHED,
];

fn migrate(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--database-url", url]);
    let run = outbox(&all);
    assert!(run.ok(), "outbox {all:?} failed:\n{run}");
    run
}

/// `outbox migrate status` reports the first `applied` migrations as applied and the
/// others as pending.
fn assert_status(url: &str, applied: usize) {
    let run = migrate(url, &["status"]);
    for (i, migration) in ALL.into_iter().enumerate() {
        let status = if i < applied { "Applied" } else { "Pending" };
        assert!(
            run.stdout.contains(&format!("{migration}  {status}\n")),
            "expected {migration} {status}:\n{run}"
        );
    }
}

/// status → up → status → down one step at a time to none, with the status after each
/// → up one step, an application table, fresh.
fn up_down_status_fresh(url: &str) {
    assert_status(url, 0);
    let run = migrate(url, &["up"]);
    for migration in ALL {
        assert!(
            run.stdout.contains(&format!("applied      {migration}")),
            "{run}"
        );
    }
    assert_status(url, ALL.len());
    sql(url, "SELECT 1 FROM outbox_messages").expect("up creates the outbox table");
    sql(url, "SELECT 1 FROM outbox_consumer_dead_letters").expect("and the dead letters");

    let run = migrate(url, &["up"]);
    assert!(run.stdout.contains("nothing to apply"), "{run}");

    // Down one step at a time, newest first.
    for applied in (0..ALL.len()).rev() {
        let run = migrate(url, &["down"]);
        assert!(
            run.stdout
                .contains(&format!("rolled back  {}", ALL[applied])),
            "down rolls back one step: {run}"
        );
        assert_status(url, applied);
        if applied == 1 {
            assert!(sql(url, "SELECT 1 FROM outbox_consumer_dead_letters").is_err());
            sql(url, "SELECT 1 FROM outbox_messages").expect("the first migration stays");
        }
    }
    assert!(
        sql(url, "SELECT 1 FROM outbox_messages").is_err(),
        "down drops the outbox table"
    );

    migrate(url, &["up", "--steps", "1"]);
    sql(url, "CREATE TABLE app_rows (id INTEGER PRIMARY KEY)").unwrap();
    sql(url, "INSERT INTO app_rows (id) VALUES (7)").unwrap();
    let run = migrate(url, &["fresh"]);
    assert!(
        run.stdout
            .contains("rolled back and re-applied 1 migration(s), applied 6 pending one(s)"),
        "{run}"
    );
    assert_status(url, ALL.len());
    sql(url, "SELECT 1 FROM outbox_messages").expect("fresh re-creates the outbox table");
    sql(url, "DELETE FROM app_rows WHERE id = 7").expect("fresh keeps the application's table");
}

const ROUTES: &str = r#"
[[services]]
name = "orders"
table = "orders_outbox"
topic = "orders.events"
consumer_group = "billing"

[[services]]
name = "payments"
table = "payments_outbox"
topic = "payments.events"
consumer_group = "ledger"

[[services]]
name = "mail"
table = "outbox_messages"
topic = "mail.events"
consumer_group = "mailers"

[[events]]
event_type = "order.created"
service = "orders"
"#;

/// `up --routes` creates each service's own outbox table (the shared default one comes
/// from the migrations), `status --routes` reports them, and a second `up` changes
/// nothing. A routes file with an unsafe table name is refused before the database is
/// touched.
fn route_tables(url: &str, dir: &std::path::Path) {
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    let routes = routes.to_str().unwrap();

    let unsafe_routes = dir.join("unsafe.toml");
    std::fs::write(
        &unsafe_routes,
        ROUTES.replace("payments_outbox", "payments; DROP TABLE app_rows"),
    )
    .unwrap();
    let run = outbox(&[
        "migrate",
        "up",
        "--routes",
        unsafe_routes.to_str().unwrap(),
        "--database-url",
        url,
    ]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr.contains("payments; DROP TABLE app_rows"),
        "{run}"
    );
    assert!(
        run.stderr.contains("a-z, 0-9 and _"),
        "names the rule: {run}"
    );
    assert!(
        sql(url, "SELECT 1 FROM outbox_messages").is_err(),
        "nothing was migrated"
    );

    let run = migrate(url, &["status", "--routes", routes]);
    assert!(
        run.stdout.contains("route table orders_outbox  missing"),
        "{run}"
    );
    let run = migrate(url, &["up", "--routes", routes]);
    for table in ["orders_outbox", "payments_outbox"] {
        assert!(
            run.stdout
                .contains(&format!("route table {table}  present")),
            "{run}"
        );
        sql(url, &format!("SELECT seq, status FROM {table}")).expect("an outbox table");
    }
    assert!(
        !run.stdout.contains("route table outbox_messages"),
        "the shared default table comes from the migrations: {run}"
    );
    let run = migrate(url, &["up", "--routes", routes]);
    assert!(run.stdout.contains("nothing to apply"), "{run}");
    assert!(
        run.stdout.contains("route table payments_outbox  present"),
        "{run}"
    );
}

#[test]
fn migrate_on_a_sqlite_file() {
    let dir = temp_dir("migrate_sqlite");
    let url = format!("sqlite:{}", dir.join("app.db").display());
    up_down_status_fresh(&url);
    let url = format!("sqlite:{}", dir.join("routed.db").display());
    route_tables(&url, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

fn migrate_on(server: Server, case: &str) {
    if let Some(db) = server.fresh_database(case) {
        up_down_status_fresh(&db.url);
    }
    if let Some(db) = server.fresh_database(&format!("{case}_routes")) {
        let dir = temp_dir(case);
        route_tables(&db.url, &dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn migrate_on_postgres() {
    migrate_on(Server::Postgres, "migrate_postgres");
}

#[test]
fn migrate_on_mariadb() {
    migrate_on(Server::MariaDb, "migrate_mariadb");
}

#[test]
fn migrate_rejects_a_bad_url_with_exit_code_2() {
    let run = outbox(&["migrate", "status", "--database-url", "redis://localhost/0"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("unsupported database url"), "{run}");

    let run = outbox(&["migrate", "up"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--database-url"), "{run}");
}

#[test]
fn migrate_reports_an_unreachable_server_with_exit_code_1() {
    // Port 1 refuses connections; the pool gives up after its acquire timeout (30 s).
    let run = outbox(&[
        "migrate",
        "status",
        "--database-url",
        "postgres://outbox:secret@127.0.0.1:1/outbox",
    ]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(
        run.stderr
            .contains("cannot connect to postgres://outbox:***@127.0.0.1:1/outbox"),
        "{run}"
    );
}
