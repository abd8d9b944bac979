//! `outbox compensation list / resolve / abandon` on SQLite, PostgreSQL and MariaDB: the
//! table, the filters, the recorded decisions, and a clear non-zero exit for every
//! refusal (unknown id, a state the domain refuses, a stale version, no operator name).

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod common;

use chrono::Utc;
use common::{Run, Server, block_on, outbox, temp_dir};
use outbox_domain::{
    CompensationEvent, CompensationItem, CompensationStatus, ErrorText, NewCompensationItem,
};
use outbox_ports::CompensationStore;
use outbox_sea_orm::SeaOrmCompensationStore;
use uuid::Uuid;

fn compensation(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["compensation"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--database-url", url]);
    outbox(&all)
}

fn ok(url: &str, args: &[&str]) -> Run {
    let run = compensation(url, args);
    assert!(run.ok(), "outbox compensation {args:?} failed:\n{run}");
    run
}

/// Fails with exit code 1 and says `why` on stderr.
fn refused(url: &str, args: &[&str], why: &str) -> Run {
    let run = compensation(url, args);
    assert_eq!(run.code, Some(1), "outbox compensation {args:?}:\n{run}");
    assert!(run.stderr.contains(why), "expected {why:?}:\n{run}");
    run
}

fn get(url: &str, id: Uuid) -> CompensationItem {
    block_on(async {
        let store = SeaOrmCompensationStore::new(outbox_sea_orm::connect(url).await.unwrap());
        store.get(id).await.unwrap().unwrap()
    })
}

/// Four items: batch `b-1` items 0 and 1 and batch `b-2` item 0 need an operator (their
/// retry failed for good), batch `b-1` item 2 is still pending.
fn seed(url: &str) -> [Uuid; 4] {
    let run = outbox(&["migrate", "up", "--database-url", url]);
    assert!(run.ok(), "{run}");
    block_on(async {
        let store = SeaOrmCompensationStore::new(outbox_sea_orm::connect(url).await.unwrap());
        let item = |batch: &str, index: u32, op: &str| NewCompensationItem {
            batch_id: batch.into(),
            operation_type: op.into(),
            item_index: index,
            payload: serde_json::json!({ "order": index }),
            failure_reason: ErrorText::new("gateway timeout"),
        };
        let ids = store
            .record(
                vec![
                    item("b-1", 0, "refund"),
                    item("b-1", 1, "refund"),
                    item("b-1", 2, "refund"),
                    item("b-2", 0, "reship"),
                ],
                3,
                Utc::now(),
            )
            .await
            .unwrap();
        for id in [ids[0], ids[1], ids[3]] {
            let it = store.get(id).await.unwrap().unwrap();
            let failed = CompensationEvent::AttemptFailed {
                error: ErrorText::new("account closed"),
                retry_at: None,
            };
            let next = it.apply(failed, Utc::now()).unwrap();
            assert_eq!(next.status, CompensationStatus::ManualRequired);
            store.update(&next, it.version).await.unwrap();
        }
        [ids[0], ids[1], ids[2], ids[3]]
    })
}

/// The rows of `list`'s table whose first cell is one of `ids`.
fn listed(run: &Run, ids: &[Uuid]) -> Vec<Uuid> {
    run.stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .filter(|id| ids.contains(id))
        .collect()
}

fn list_resolve_abandon(url: &str) {
    let ids = seed(url);
    let [a, b, pending, other] = ids;

    // The table: a header, one row per item, oldest first, with the latest failure.
    let run = ok(url, &["list"]);
    assert_eq!(listed(&run, &ids), ids, "{run}");
    for column in [
        "ID",
        "BATCH",
        "INDEX",
        "OPERATION",
        "STATUS",
        "RETRIES",
        "VERSION",
    ] {
        assert!(run.stdout.contains(column), "{run}");
    }
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&a.to_string()))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[1..7],
        ["b-1", "0", "refund", "manual_required", "1/3", "2"],
        "{run}"
    );
    assert!(row.ends_with("account closed"), "{row}");
    assert!(run.stdout.contains("4 item(s)"), "{run}");

    // JSON: one document on stdout, stable field names.
    let run = ok(url, &["list", "--json", "--status", "manual_required"]);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{run}"));
    let items = doc["items"].as_array().unwrap();
    let json_ids: Vec<Uuid> = items
        .iter()
        .map(|i| i["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(json_ids, [a, b, other], "{doc:#}");
    assert_eq!(
        (
            &items[0]["batch_id"],
            &items[0]["item_index"],
            &items[0]["status"],
            &items[0]["retry_count"],
            &items[0]["version"],
            &items[0]["failure_reason"],
        ),
        (
            &"b-1".into(),
            &0.into(),
            &"manual_required".into(),
            &1.into(),
            &2.into(),
            &"account closed".into(),
        ),
        "{doc:#}"
    );
    assert_eq!(items[0]["payload"]["order"], 0);
    assert_eq!(doc["limit_reached"], false);

    // Filters.
    let run = ok(
        url,
        &["list", "--status", "manual_required", "--batch", "b-1"],
    );
    assert_eq!(listed(&run, &ids), [a, b], "{run}");
    let run = ok(url, &["list", "--status", "pending"]);
    assert_eq!(listed(&run, &ids), [pending], "{run}");
    let run = ok(url, &["list", "--limit", "1"]);
    assert_eq!(listed(&run, &ids), [a], "{run}");
    assert!(run.stdout.contains("there may be more"), "{run}");
    let run = ok(url, &["list", "--batch", "none-such"]);
    assert!(run.stdout.contains("no compensation items match"), "{run}");

    // Resolve: recorded with who, why and a new version.
    let run = ok(
        url,
        &[
            "resolve",
            &a.to_string(),
            "--by",
            "alice",
            "--note",
            "refunded by hand",
        ],
    );
    assert!(run.stdout.contains("resolved compensation item"), "{run}");
    let done = get(url, a);
    assert_eq!(
        (
            done.status,
            done.resolved_by.as_deref(),
            done.resolution_note.as_deref(),
            done.version
        ),
        (
            CompensationStatus::Resolved,
            Some("alice"),
            Some("refunded by hand"),
            3
        )
    );
    refused(
        url,
        &["abandon", &a.to_string(), "--by", "bob", "--note", "n"],
        "cannot abandon a compensation item that is resolved",
    );

    // A stale --expected-version changes nothing; the current one works.
    let before = get(url, b);
    refused(
        url,
        &[
            "abandon",
            &b.to_string(),
            "--by",
            "bob",
            "--note",
            "customer left",
            "--expected-version",
            &(before.version - 1).to_string(),
        ],
        "someone else changed it",
    );
    assert_eq!(get(url, b), before, "a refused decision writes nothing");
    ok(
        url,
        &[
            "abandon",
            &b.to_string(),
            "--by",
            "bob",
            "--note",
            "customer left",
            "--expected-version",
            &before.version.to_string(),
        ],
    );
    let gone = get(url, b);
    assert_eq!(
        (gone.status, gone.resolved_by.as_deref(), gone.version),
        (
            CompensationStatus::Abandoned,
            Some("bob"),
            before.version + 1
        )
    );
    let run = ok(url, &["list", "--status", "abandoned"]);
    assert_eq!(listed(&run, &ids), [b], "{run}");
    assert!(run.stdout.contains("by bob: customer left"), "{run}");

    // No operator name; an unknown id.
    let before = get(url, other);
    refused(
        url,
        &["abandon", &other.to_string(), "--by", " ", "--note", "n"],
        "without naming the operator",
    );
    assert_eq!(get(url, other), before);
    refused(
        url,
        &[
            "resolve",
            &Uuid::now_v7().to_string(),
            "--by",
            "alice",
            "--note",
            "n",
        ],
        "no such item",
    );
}

#[test]
fn compensation_on_a_sqlite_file() {
    let dir = temp_dir("compensation_sqlite");
    let url = format!("sqlite:{}", dir.join("app.db").display());
    list_resolve_abandon(&url);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compensation_on_postgres() {
    if let Some(db) = Server::Postgres.fresh_database("compensation_postgres") {
        list_resolve_abandon(&db.url);
    }
}

#[test]
fn compensation_on_mariadb() {
    if let Some(db) = Server::MariaDb.fresh_database("compensation_mariadb") {
        list_resolve_abandon(&db.url);
    }
}

#[test]
fn compensation_usage_errors() {
    let run = outbox(&["compensation", "list"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--database-url"), "{run}");

    let dir = temp_dir("compensation_usage");
    let missing = dir.join("missing.db");
    let url = format!("sqlite:{}", missing.display());
    refused(&url, &["list"], "no SQLite database at");
    assert!(!missing.exists(), "listing must not create the database");

    let run = compensation(&url, &["list", "--status", "done"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("manual_required"), "{run}");
    let run = compensation(&url, &["resolve", "not-a-uuid", "--by", "a", "--note", "n"]);
    assert_eq!(run.code, Some(2), "{run}");
    let run = compensation(
        &url,
        &["resolve", &Uuid::now_v7().to_string(), "--note", "n"],
    );
    assert_eq!(run.code, Some(2), "--by is required:\n{run}");
    let _ = std::fs::remove_dir_all(&dir);
}
