//! `outbox cursor status / init / reset` on SQLite, PostgreSQL and MariaDB: positions
//! of the outbox log (`start`, `unfinished`, `end` or a position), lag as entries after
//! the cursor, text and JSON, and exit codes 2 (usage) and 1 (unknown or existing
//! cursor, missing table).

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod admin;
mod common;

use admin::{fails, json, message, migrate, ok, store};
use chrono::Utc;
use common::{Server, block_on, outbox, temp_dir};
use outbox_ports::{CursorPosition, CursorStore, MessageStore};
use outbox_sea_orm::SeaOrmCursorStore;
use outbox_test_support::conformance::log::settled;
use serde_json::Value;

/// Five messages in the default table, two in `orders_outbox`, the first two of the
/// default table published. Returns the default table's log positions, in order.
fn seed(url: &str, dir: &std::path::Path) -> Vec<String> {
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, admin::ROUTES).unwrap();
    migrate(url, Some(routes.to_str().unwrap()));
    block_on(async {
        let s = store(url, "outbox_messages").await;
        s.enqueue(
            (0..5)
                .map(|n| message("mail", "mail.sent", &format!("k{n}"), n, Utc::now()))
                .collect(),
        )
        .await
        .unwrap();
        let o = store(url, "orders_outbox").await;
        o.enqueue(
            (0..2)
                .map(|n| message("orders", "order.created", "k", n, Utc::now()))
                .collect(),
        )
        .await
        .unwrap();
        let entries = settled(&s, 10).await;
        outbox_test_support::mark_published(&s, "test", 2, Utc::now())
            .await
            .unwrap();
        settled(&o, 10).await;
        entries.into_iter().map(|e| e.position.0).collect()
    })
}

fn cursors_on(url: &str, dir: &std::path::Path) {
    let positions = seed(url, dir);
    let end = positions.last().unwrap().clone();

    // Unknown cursors: reported, exit 1, the known ones still shown.
    let run = fails(
        url,
        &["cursor", "status", "sub-a"],
        1,
        "no cursor named sub-a",
    );
    assert!(run.stdout.contains(&format!("log end {end}")), "{run}");

    // init: at the start by default, lagging by the whole log.
    let doc = json(url, &["cursor", "init", "sub-a"]);
    assert_eq!(doc["action"], "init");
    assert_eq!(doc["end"], end.as_str());
    assert_eq!(doc["previous"], Value::Null);
    let c = &doc["cursor"];
    let start = c["position"].as_str().unwrap().to_owned();
    assert!(start == "0" || start == "0:0", "{doc:#}");
    assert_eq!(
        (&c["name"], &c["version"], &c["lag"]),
        (&"sub-a".into(), &1.into(), &5.into()),
        "{doc:#}"
    );
    assert!(c["updated_at"].is_string() && c["oldest_unread_at"].is_string());
    assert!(c["lag_seconds"].as_i64().unwrap() >= 0);
    fails(url, &["cursor", "init", "sub-a"], 1, "exists already");

    // init --at end: nothing to read yet.
    let run = ok(url, &["cursor", "init", "sub-b", "--at", "end"]);
    assert!(
        run.stdout
            .contains(&format!("created cursor sub-b at {end} (version 1)")),
        "{run}"
    );
    assert!(run.stdout.contains("lag 0 behind outbox_messages"), "{run}");

    // init --at unfinished: before the first message the relay has not published.
    let doc = json(url, &["cursor", "init", "sub-c", "--at", "unfinished"]);
    assert_eq!(doc["cursor"]["lag"], 3, "{doc:#}");

    // reset: a compare-and-set move from what it was, to a position of the log.
    let doc = json(url, &["cursor", "reset", "sub-a", "--to", &positions[2]]);
    assert_eq!(doc["previous"]["position"], start.as_str());
    assert_eq!(doc["cursor"]["position"], positions[2].as_str());
    assert_eq!(doc["cursor"]["version"], 2);
    assert_eq!(doc["cursor"]["lag"], 2);
    let run = ok(url, &["cursor", "reset", "sub-b"]);
    assert!(
        run.stdout.contains(&format!(
            "moved cursor sub-b from {end} to {start} (version 2)"
        )),
        "{run}"
    );
    fails(url, &["cursor", "reset", "nobody"], 1, "no cursor nobody");
    fails(
        url,
        &["cursor", "reset", "sub-a", "--to", "soon"],
        2,
        "not a position of the outbox log",
    );

    // status: a table of the named cursors, and JSON.
    let run = ok(url, &["cursor", "status", "sub-a", "sub-b"]);
    for column in [
        "NAME",
        "POSITION",
        "LAG",
        "OLDEST UNREAD",
        "VERSION",
        "UPDATED",
    ] {
        assert!(run.stdout.contains(column), "{run}");
    }
    let row = run.stdout.lines().find(|l| l.starts_with("sub-a")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["sub-a", positions[2].as_str(), "2"], "{run}");
    let doc = json(url, &["cursor", "status", "sub-a", "sub-b"]);
    assert_eq!(doc["table"], "outbox_messages");
    assert_eq!(doc["missing"], Value::Array(Vec::new()));
    let names: Vec<&str> = doc["cursors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sub-a", "sub-b"]);
    assert_eq!(doc["cursors"][1]["lag"], 5);

    // --json with a missing cursor: the document still says what was found.
    let run = admin::run(url, &["cursor", "status", "sub-a", "ghost", "--json"]);
    assert_eq!(run.code, Some(1), "{run}");
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["missing"], serde_json::json!(["ghost"]));
    assert_eq!(doc["cursors"][0]["name"], "sub-a");

    // Lag against another table: its own log.
    let doc = json(
        url,
        &["cursor", "status", "sub-b", "--table", "orders_outbox"],
    );
    assert_eq!(doc["cursors"][0]["lag"], 2);

    // A position that is not one of the log's: shown, lag unknown.
    block_on(async {
        let db = outbox_sea_orm::connect(url).await.unwrap();
        SeaOrmCursorStore::new(db)
            .save("opaque", CursorPosition("tx:9".into()), None, Utc::now())
            .await
            .unwrap();
    });
    let doc = json(url, &["cursor", "status", "opaque"]);
    assert_eq!(doc["cursors"][0]["position"], "tx:9");
    assert_eq!(doc["cursors"][0]["lag"], Value::Null);

    fails(
        url,
        &["cursor", "status", "sub-a", "--table", "nowhere_outbox"],
        1,
        "the outbox table nowhere_outbox",
    );
}

#[test]
fn cursor_on_a_sqlite_file() {
    let dir = temp_dir("cursor_sqlite");
    cursors_on(&format!("sqlite:{}", dir.join("app.db").display()), &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cursor_on_postgres() {
    if let Some(db) = Server::Postgres.fresh_database("cursor_postgres") {
        let dir = temp_dir("cursor_postgres");
        cursors_on(&db.url, &dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn cursor_on_mariadb() {
    if let Some(db) = Server::MariaDb.fresh_database("cursor_mariadb") {
        let dir = temp_dir("cursor_mariadb");
        cursors_on(&db.url, &dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn cursor_of_an_empty_outbox() {
    let dir = temp_dir("cursor_empty");
    let url = format!("sqlite:{}", dir.join("app.db").display());
    migrate(&url, None);
    let doc = json(&url, &["cursor", "init", "fresh", "--at", "end"]);
    assert_eq!(doc["end"], "0");
    assert_eq!(
        (&doc["cursor"]["position"], &doc["cursor"]["lag"]),
        (&"0".into(), &0.into())
    );
    assert_eq!(doc["cursor"]["lag_seconds"], Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cursor_usage_errors() {
    let run = outbox(&["cursor", "status", "a"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--database-url"), "{run}");

    let dir = temp_dir("cursor_usage");
    let url = format!("sqlite:{}", dir.join("app.db").display());
    migrate(&url, None);
    for (args, why) in [
        (&["cursor", "status"][..], "required"),
        (
            &["cursor", "init", "a", "--at=-5"][..],
            "not a position of the outbox log",
        ),
        (
            &["cursor", "init", "a", "--at="][..],
            "expected start, unfinished, end",
        ),
        (&["cursor", "init", " "][..], "must not be empty"),
        (
            &["cursor", "init", "a", "--table", "x y"][..],
            "a-z, 0-9 and _",
        ),
        (&["cursor", "rewind", "a"][..], "unrecognized subcommand"),
    ] {
        let run = admin::run(&url, args);
        assert_eq!(run.code, Some(2), "{args:?}:\n{run}");
        assert!(
            run.stderr.contains(why),
            "{args:?}: expected {why:?}:\n{run}"
        );
    }
    fails(
        "mongodb://localhost/x",
        &["cursor", "status", "a"],
        2,
        "unsupported database url",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
