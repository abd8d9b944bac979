//! `outbox cursor status / init / reset` on SQLite, PostgreSQL and MariaDB: positions
//! and lag against the outbox's newest message, text and JSON, and exit codes 2
//! (usage) and 1 (unknown or existing cursor, missing table).

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod admin;
mod common;

use admin::{fails, json, message, migrate, ok, store};
use chrono::Utc;
use common::{Server, block_on, outbox, temp_dir};
use outbox_ports::{CursorPosition, CursorStore, MessageStore};
use outbox_sea_orm::SeaOrmCursorStore;
use serde_json::Value;

/// Five messages in the default table, two in `orders_outbox`. Returns the default
/// table's newest seq.
fn seed(url: &str, dir: &std::path::Path) -> u64 {
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, admin::ROUTES).unwrap();
    migrate(url, Some(routes.to_str().unwrap()));
    block_on(async {
        let s = store(url, "outbox_messages").await;
        s.enqueue(
            (0..5)
                .map(|n| message("mail", "mail.sent", "k", n, Utc::now()))
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
        s.latest_seq().await.unwrap().unwrap()
    })
}

fn cursors_on(url: &str, dir: &std::path::Path) {
    let latest = seed(url, dir);

    // Unknown cursors: reported, exit 1, the known ones still shown.
    let run = fails(
        url,
        &["cursor", "status", "sub-a"],
        1,
        "no cursor named sub-a",
    );
    assert!(
        run.stdout.contains(&format!("latest seq {latest}")),
        "{run}"
    );

    // init: at 0 by default, lagging by the whole log.
    let doc = json(url, &["cursor", "init", "sub-a"]);
    assert_eq!(doc["action"], "init");
    assert_eq!(doc["latest_seq"], latest);
    assert_eq!(doc["previous"], Value::Null);
    let c = &doc["cursor"];
    assert_eq!(
        (&c["name"], &c["position"], &c["version"], &c["lag"]),
        (
            &"sub-a".into(),
            &"0".into(),
            &1.into(),
            &Value::from(latest)
        ),
        "{doc:#}"
    );
    assert!(c["updated_at"].is_string());
    fails(url, &["cursor", "init", "sub-a"], 1, "exists already");

    // init --at latest: nothing to read yet.
    let run = ok(url, &["cursor", "init", "sub-b", "--at", "latest"]);
    assert!(
        run.stdout
            .contains(&format!("created cursor sub-b at {latest} (version 1)")),
        "{run}"
    );
    assert!(run.stdout.contains("lag 0 behind outbox_messages"), "{run}");

    // reset: a compare-and-set move from what it was.
    let doc = json(url, &["cursor", "reset", "sub-a", "--to", "3"]);
    assert_eq!(doc["previous"]["position"], "0");
    assert_eq!(doc["cursor"]["position"], "3");
    assert_eq!(doc["cursor"]["version"], 2);
    assert_eq!(doc["cursor"]["lag"], latest - 3);
    let run = ok(url, &["cursor", "reset", "sub-b"]);
    assert!(
        run.stdout.contains(&format!(
            "moved cursor sub-b from {latest} to 0 (version 2)"
        )),
        "{run}"
    );
    fails(url, &["cursor", "reset", "nobody"], 1, "no cursor nobody");

    // status: a table of the named cursors, and JSON.
    let run = ok(url, &["cursor", "status", "sub-a", "sub-b"]);
    for column in ["NAME", "POSITION", "LAG", "VERSION", "UPDATED"] {
        assert!(run.stdout.contains(column), "{run}");
    }
    let row = run.stdout.lines().find(|l| l.starts_with("sub-a")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..4],
        ["sub-a", "3", &(latest - 3).to_string(), "2"],
        "{run}"
    );
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
    assert_eq!(doc["cursors"][1]["lag"], latest);

    // --json with a missing cursor: the document still says what was found.
    let run = admin::run(url, &["cursor", "status", "sub-a", "ghost", "--json"]);
    assert_eq!(run.code, Some(1), "{run}");
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["missing"], serde_json::json!(["ghost"]));
    assert_eq!(doc["cursors"][0]["name"], "sub-a");

    // Lag against another table.
    let doc = json(
        url,
        &["cursor", "status", "sub-a", "--table", "orders_outbox"],
    );
    let orders_latest = doc["latest_seq"].as_u64().unwrap();
    assert_eq!(doc["cursors"][0]["lag"], orders_latest.saturating_sub(3));

    // A position that is not a sequence number: shown, lag unknown.
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
    let doc = json(&url, &["cursor", "init", "fresh", "--at", "latest"]);
    assert_eq!(doc["latest_seq"], Value::Null);
    assert_eq!(
        (&doc["cursor"]["position"], &doc["cursor"]["lag"]),
        (&"0".into(), &0.into())
    );
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
        (&["cursor", "init", "a", "--at=-5"][..], "sequence number"),
        (
            &["cursor", "reset", "a", "--to", "soon"][..],
            "sequence number",
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
