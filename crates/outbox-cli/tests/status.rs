//! `outbox status` on SQLite, PostgreSQL and MariaDB: the per-service counters as a
//! table and as JSON, the heads of parked keys, `--routes` over several tables, and
//! one clear line with exit code 2 (usage) or 1 (failure) for every refusal.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod admin;
mod common;

use admin::{enqueue_dead, fails, json, message, migrate, ok, park, publish, store};
use chrono::{Duration, Utc};
use common::{Server, block_on, outbox, temp_dir};
use outbox_ports::MessageStore;
use serde_json::Value;

/// The row of `service` in a `status --json` document.
fn service<'a>(doc: &'a Value, table: &str, service: &str) -> &'a Value {
    doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["table"] == table && s["service"] == service)
        .unwrap_or_else(|| panic!("no row for {table}/{service} in {doc:#}"))
}

/// orders: two dead letters, a parked key (a failed head and one message behind it),
/// one published and one fresh message; billing: one fresh message and one audit
/// record. Returns the parked head's id.
fn seed(url: &str) -> String {
    migrate(url, None);
    block_on(async {
        let s = store(url, "outbox_messages").await;
        let hour_ago = Utc::now() - Duration::hours(1);
        enqueue_dead(
            &s,
            vec![
                message("orders", "order.created", "a", 0, hour_ago),
                message("orders", "order.created", "b", 1, hour_ago),
            ],
        )
        .await;
        let head = message("orders", "order.created", "parked", 2, Utc::now());
        let id = head.id.to_string();
        park(
            &s,
            head,
            message("orders", "order.paid", "parked", 3, Utc::now()),
        )
        .await;
        publish(&s, message("orders", "order.created", "c", 4, Utc::now())).await;
        s.enqueue(vec![
            message("orders", "order.created", "d", 5, Utc::now()),
            message("billing", "invoice.sent", "x", 6, Utc::now()),
        ])
        .await
        .unwrap();
        s.record(vec![message(
            "billing",
            "invoice.audited",
            "x",
            7,
            Utc::now(),
        )])
        .await
        .unwrap();
        id
    })
}

fn status_of(url: &str) {
    let head = seed(url);

    // The table: a header and a row per service.
    let run = ok(url, &["status"]);
    for column in [
        "TABLE",
        "SERVICE",
        "BACKLOG",
        "OLDEST_UNSENT",
        "RETRYING",
        "IN_FLIGHT",
        "PARKED_KEYS",
        "DEAD",
        "PUBLISHED",
        "RECORDED",
    ] {
        assert!(run.stdout.contains(column), "{column}:\n{run}");
    }
    let row = |service: &str| -> Vec<String> {
        run.stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| cells.len() > 2 && cells[1] == service)
            .unwrap_or_else(|| panic!("no row for {service}:\n{run}"))
    };
    let orders = row("orders");
    // table, service, backlog, oldest, retrying, in flight, parked, dead, published,
    // consumed, recorded
    assert_eq!(orders[0], "outbox_messages");
    assert_eq!(
        orders[2], "2",
        "backlog: the one behind the parked head, and d"
    );
    assert!(
        orders[3].ends_with('s') || orders[3].ends_with('m'),
        "an age: {orders:?}"
    );
    assert_eq!(&orders[4..], ["1", "0", "1", "2", "1", "0", "0"], "{run}");
    let billing = row("billing");
    assert_eq!(&billing[4..], ["0", "0", "0", "0", "0", "0", "1"], "{run}");

    // JSON: the same counters with stable names.
    let doc = json(url, &["status"]);
    let o = service(&doc, "outbox_messages", "orders");
    assert_eq!(
        [
            &o["pending"],
            &o["retrying"],
            &o["in_flight"],
            &o["parked_keys"],
            &o["dead"],
            &o["published"],
            &o["consumed"],
            &o["recorded"]
        ],
        [2, 1, 0, 1, 2, 1, 0, 0].map(Value::from).each_ref(),
        "{doc:#}"
    );
    assert!(o["oldest_unsent_at"].is_string(), "{doc:#}");
    assert!(o["oldest_unsent_age_seconds"].as_i64().unwrap() >= 0);
    let b = service(&doc, "outbox_messages", "billing");
    assert_eq!(
        (&b["pending"], &b["recorded"]),
        (&Value::from(1), &Value::from(1))
    );
    assert!(doc.get("parked").is_none(), "only with --parked: {doc:#}");

    // --parked: the head that holds its key back.
    let doc = json(url, &["status", "--parked"]);
    let parked = doc["parked"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{doc:#}");
    assert_eq!(parked[0]["id"], head.as_str());
    assert_eq!(parked[0]["partition_key"], "parked");
    assert_eq!(parked[0]["last_error"], "broker unavailable");
    let run = ok(url, &["status", "--parked"]);
    assert!(run.stdout.contains("heads of parked keys"), "{run}");
    assert!(run.stdout.contains(&head), "{run}");

    // A table nobody created.
    fails(
        url,
        &["status", "--table", "nowhere_outbox"],
        1,
        "the outbox table nowhere_outbox",
    );
}

/// `--routes`: every table the routes name, each service in the table it lives in.
fn status_with_routes(url: &str) {
    let dir = temp_dir("status_routes");
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, admin::ROUTES).unwrap();
    let routes = routes.to_str().unwrap();
    migrate(url, Some(routes));
    block_on(async {
        let orders = store(url, "orders_outbox").await;
        enqueue_dead(
            &orders,
            vec![message("orders", "order.created", "a", 0, Utc::now())],
        )
        .await;
        let shared = store(url, "outbox_messages").await;
        shared
            .enqueue(vec![message("mail", "mail.sent", "m", 1, Utc::now())])
            .await
            .unwrap();
    });
    let doc = json(url, &["status", "--routes", routes]);
    assert_eq!(service(&doc, "orders_outbox", "orders")["dead"], 1);
    assert_eq!(service(&doc, "outbox_messages", "mail")["pending"], 1);
    assert_eq!(doc["services"].as_array().unwrap().len(), 2, "{doc:#}");

    let run = ok(url, &["status", "--routes", routes]);
    assert!(run.stdout.contains("orders_outbox"), "{run}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, admin::ROUTES.replace("orders_outbox", "orders; DROP")).unwrap();
    fails(
        url,
        &["status", "--routes", bad.to_str().unwrap()],
        1,
        "orders; DROP",
    );
    let run = admin::run(url, &["status", "--routes", routes, "--table", "x"]);
    assert_eq!(
        run.code,
        Some(2),
        "--table and --routes exclude each other:\n{run}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_on_a_sqlite_file() {
    let dir = temp_dir("status_sqlite");
    status_of(&format!("sqlite:{}", dir.join("app.db").display()));
    status_with_routes(&format!("sqlite:{}", dir.join("routed.db").display()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_on_postgres() {
    if let Some(db) = Server::Postgres.fresh_database("status_postgres") {
        status_of(&db.url);
    }
    if let Some(db) = Server::Postgres.fresh_database("status_postgres_routes") {
        status_with_routes(&db.url);
    }
}

#[test]
fn status_on_mariadb() {
    if let Some(db) = Server::MariaDb.fresh_database("status_mariadb") {
        status_of(&db.url);
    }
    if let Some(db) = Server::MariaDb.fresh_database("status_mariadb_routes") {
        status_with_routes(&db.url);
    }
}

#[test]
fn status_of_an_empty_outbox() {
    let dir = temp_dir("status_empty");
    let url = format!("sqlite:{}", dir.join("app.db").display());
    migrate(&url, None);
    let run = ok(&url, &["status"]);
    assert!(
        run.stdout.contains("no messages in outbox_messages"),
        "{run}"
    );
    let doc = json(&url, &["status", "--parked"]);
    assert_eq!(doc["services"], Value::Array(Vec::new()));
    assert_eq!(doc["parked"], Value::Array(Vec::new()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_usage_errors() {
    let run = outbox(&["status"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--database-url"), "{run}");
    assert_eq!(run.stderr.trim().lines().count(), 1, "{run}");

    let run = outbox(&["status", "--json"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stdout.is_empty(), "{run}");

    fails(
        "redis://localhost/0",
        &["status"],
        2,
        "unsupported database url",
    );
    let dir = temp_dir("status_usage");
    let missing = dir.join("missing.db");
    let url = format!("sqlite:{}", missing.display());
    fails(&url, &["status"], 1, "no SQLite database at");
    assert!(!missing.exists(), "status must not create the database");
    let run = admin::run(&url, &["status", "--table", "orders; DROP TABLE x"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr.contains("a-z, 0-9 and _"),
        "names the rule:\n{run}"
    );
    let run = admin::run(&url, &["status", "--parked", "0"]);
    assert_eq!(run.code, Some(2), "{run}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_reports_an_unreachable_server_with_exit_code_1() {
    // Port 1 refuses connections; the pool gives up after its timeouts.
    fails(
        "postgres://outbox:secret@127.0.0.1:1/outbox",
        &["status", "--json"],
        1,
        "cannot connect to postgres://outbox:***@127.0.0.1:1/outbox",
    );
}
