//! `outbox dead list / show / replay / purge / kill` on SQLite, PostgreSQL and MariaDB:
//! the filters, text and JSON output, replay in write order, the confirmation a purge
//! needs, `--routes` over several tables, and exit codes 2 (usage) and 1 (unknown id,
//! refused step).

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod admin;
mod common;

use admin::{
    enqueue_dead, fails, get, ids, json, message, migrate, ok, park, publish, store, strings,
};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use common::{Server, block_on, outbox, temp_dir};
use outbox_domain::{MessageId, MessageStatus};
use outbox_ports::{ClaimRequest, MessageStore};

const T: &str = "outbox_messages";

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

struct Seeded {
    /// Dead, in write order: orders/order.created/k1 (3 h ago), orders/order.created/k1
    /// (2 h ago), orders/order.paid/k2 (1 h ago), billing/invoice.sent/k1 (30 min ago).
    dead: Vec<MessageId>,
    /// The head of a parked key (pending, failed once).
    parked: MessageId,
    /// A published message.
    published: MessageId,
    now: DateTime<Utc>,
}

fn seed(url: &str) -> Seeded {
    migrate(url, None);
    block_on(async {
        let s = store(url, T).await;
        let now = Utc::now();
        let ago = |minutes| now - Duration::minutes(minutes);
        let dead = enqueue_dead(
            &s,
            vec![
                message("orders", "order.created", "k1", 0, ago(180)),
                message("orders", "order.created", "k1", 1, ago(120)),
                message("orders", "order.paid", "k2", 2, ago(60)),
                message("billing", "invoice.sent", "k1", 3, ago(30)),
            ],
        )
        .await;
        let head = message("orders", "order.created", "p", 4, now);
        let parked = head.id;
        park(&s, head, message("orders", "order.created", "p", 5, now)).await;
        let done = message("orders", "order.created", "k9", 6, now);
        let published = done.id;
        publish(&s, done).await;
        Seeded {
            dead,
            parked,
            published,
            now,
        }
    })
}

fn status(url: &str, id: MessageId) -> MessageStatus {
    get(url, T, id).unwrap().delivery.status
}

fn list_and_show(url: &str, s: &Seeded) {
    // The table, in write order.
    let run = ok(url, &["dead", "list"]);
    let listed: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<MessageId>().is_ok())
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, strings(&s.dead), "{run}");
    for column in [
        "ID",
        "TABLE",
        "SEQ",
        "SERVICE",
        "EVENT_TYPE",
        "KEY",
        "LAST_ERROR",
    ] {
        assert!(run.stdout.contains(column), "{run}");
    }
    assert!(run.stdout.contains("4 dead message(s)"), "{run}");
    assert!(run.stdout.contains("broker rejected"), "{run}");

    // JSON.
    let doc = json(url, &["dead", "list"]);
    assert_eq!(ids(&doc), strings(&s.dead));
    let first = &doc["messages"][0];
    assert_eq!(first["service"], "orders");
    assert_eq!(first["event_type"], "order.created");
    assert_eq!(first["partition_key"], "k1");
    assert_eq!(first["status"], "dead");
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["table"], T);
    assert!(first["seq"].as_u64().unwrap() > 0);
    assert_eq!(
        first["last_error"],
        format!("broker rejected {}", s.dead[0]).as_str()
    );
    assert_eq!(doc["limit_reached"], false);

    // Filters, alone and together.
    let d = &s.dead;
    let cases: [(&[&str], Vec<MessageId>); 6] = [
        (&["--service", "orders"], vec![d[0], d[1], d[2]]),
        (&["--event-type", "order.paid"], vec![d[2]]),
        (&["--key", "k1"], vec![d[0], d[1], d[3]]),
        (&["--service", "orders", "--key", "k1"], vec![d[0], d[1]]),
        (&["--service", "nobody"], vec![]),
        (&["--service", "orders' OR '1'='1"], vec![]),
    ];
    for (filter, expected) in cases {
        let mut args = vec!["dead", "list"];
        args.extend_from_slice(filter);
        assert_eq!(ids(&json(url, &args)), strings(&expected), "{filter:?}");
    }
    let since = rfc3339(s.now - Duration::minutes(150));
    let until = rfc3339(s.now - Duration::minutes(45));
    let doc = json(url, &["dead", "list", "--since", &since, "--until", &until]);
    assert_eq!(ids(&doc), strings(&[d[1], d[2]]));
    let doc = json(url, &["dead", "list", "--limit", "1"]);
    assert_eq!(
        (ids(&doc), &doc["limit_reached"]),
        (strings(&[d[0]]), &true.into())
    );
    let run = ok(url, &["dead", "list", "--limit", "2"]);
    assert!(run.stdout.contains("there may be more"), "{run}");
    let run = ok(url, &["dead", "list", "--service", "nobody"]);
    assert!(run.stdout.contains("no dead messages match"), "{run}");

    // Show: everything about one message, any status.
    let id = d[0].to_string();
    let run = ok(url, &["dead", "show", &id]);
    for line in [
        format!("message {id}"),
        "service         orders".to_owned(),
        "partition key   k1".to_owned(),
        "status          dead".to_owned(),
        "attempts        1/".to_owned(),
        format!("last error      broker rejected {id}"),
        "x-test: admin".to_owned(),
        "  \"n\": 0".to_owned(),
    ] {
        assert!(run.stdout.contains(&line), "{line:?}:\n{run}");
    }
    let doc = json(url, &["dead", "show", &id]);
    assert_eq!(doc["message"]["id"], id.as_str());
    assert_eq!(doc["message"]["headers"]["x-test"], "admin");
    assert_eq!(doc["message"]["payload"]["kind"], "json");
    assert_eq!(doc["message"]["payload"]["value"]["n"], 0);
    assert_eq!(doc["delivery"]["status"], "dead");
    assert_eq!(doc["delivery"]["lease"], serde_json::Value::Null);
    assert_eq!(doc["table"], T);
    let doc = json(url, &["dead", "show", &s.parked.to_string()]);
    assert_eq!(doc["delivery"]["status"], "pending");
    assert_eq!(doc["delivery"]["last_error"], "broker unavailable");

    let unknown = MessageId::new_v7(Utc::now()).to_string();
    fails(url, &["dead", "show", &unknown], 1, "no message");
    let run = admin::run(url, &["dead", "show", "not-an-id"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("invalid value 'not-an-id'"), "{run}");
}

fn replay_purge_kill(url: &str, s: &Seeded) {
    let d = &s.dead;
    // Replay by id refuses as a whole when one id is not dead, or unknown.
    fails(
        url,
        &[
            "dead",
            "replay",
            &d[1].to_string(),
            &s.published.to_string(),
        ],
        1,
        "is published, not dead",
    );
    let unknown = MessageId::new_v7(Utc::now()).to_string();
    fails(
        url,
        &["dead", "replay", &d[1].to_string(), &unknown],
        1,
        "no message",
    );
    assert_eq!(
        status(url, d[1]),
        MessageStatus::Dead,
        "nothing was replayed"
    );

    // Replay by id, named newest first: applied oldest first, one batch at a time.
    let doc = json(
        url,
        &[
            "dead",
            "replay",
            &d[1].to_string(),
            &d[0].to_string(),
            "--batch-size",
            "1",
        ],
    );
    assert_eq!((&doc["matched"], &doc["replayed"]), (&2.into(), &2.into()));
    assert_eq!(ids(&doc), strings(&[d[0], d[1]]), "write order");
    let (a, b) = (get(url, T, d[0]).unwrap(), get(url, T, d[1]).unwrap());
    assert_eq!(
        (a.delivery.status, b.delivery.status, a.delivery.attempts),
        (MessageStatus::Pending, MessageStatus::Pending, 0)
    );
    assert!(
        a.delivery.next_attempt_at <= b.delivery.next_attempt_at,
        "the older message was replayed first"
    );
    // A relay takes the key's messages in their original order.
    block_on(async {
        let st = store(url, T).await;
        let claimed = st
            .claim(&ClaimRequest {
                owner: "check".into(),
                limit: 10,
                lease_for: std::time::Duration::from_secs(30),
                now: Utc::now(),
            })
            .await
            .unwrap();
        let of_k1: Vec<MessageId> = claimed
            .iter()
            .filter(|c| c.message.service == "orders" && c.message.partition_key == "k1")
            .map(|c| c.message.id)
            .collect();
        assert_eq!(of_k1, [d[0]], "only the older one, the head of its key");
    });

    // Replay by filter needs confirmation; without a terminal it is refused.
    fails(
        url,
        &["dead", "replay", "--service", "billing"],
        1,
        "refusing to replay 1 dead message(s) without confirmation",
    );
    assert_eq!(status(url, d[3]), MessageStatus::Dead);
    let doc = json(url, &["dead", "replay", "--service", "billing", "--yes"]);
    assert_eq!(ids(&doc), strings(&[d[3]]));
    assert_eq!(doc["replayed"], 1);
    assert_eq!(status(url, d[3]), MessageStatus::Pending);
    let run = ok(url, &["dead", "replay", "--service", "billing", "--yes"]);
    assert!(run.stdout.contains("no dead messages match"), "{run}");

    // Kill the parked head: dead now, and its key flows.
    fails(
        url,
        &["dead", "kill", &s.parked.to_string(), "--reason", " "],
        2,
        "--reason",
    );
    let run = admin::run(url, &["dead", "kill", &s.parked.to_string()]);
    assert_eq!(run.code, Some(2), "--reason is required:\n{run}");
    let doc = json(
        url,
        &[
            "dead",
            "kill",
            &s.parked.to_string(),
            "--reason",
            "poison message",
        ],
    );
    assert_eq!(
        (&doc["status"], &doc["reason"]),
        (&"dead".into(), &"poison message".into())
    );
    let killed = get(url, T, s.parked).unwrap();
    assert_eq!(killed.delivery.status, MessageStatus::Dead);
    assert_eq!(
        killed.delivery.last_error.unwrap().as_str(),
        "poison message"
    );
    let doc = json(url, &["status"]);
    let parked: Vec<&serde_json::Value> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["parked_keys"])
        .collect();
    assert!(
        parked.iter().all(|p| **p == 0),
        "the key flows again: {doc:#}"
    );
    fails(
        url,
        &["dead", "kill", &s.parked.to_string(), "--reason", "again"],
        1,
        "cannot kill a message that is dead",
    );
    fails(
        url,
        &["dead", "kill", &unknown, "--reason", "x"],
        1,
        "no message",
    );

    // Purge always needs confirmation.
    let victim = d[2].to_string();
    fails(
        url,
        &["dead", "purge", &victim],
        1,
        "refusing to purge 1 dead message(s) without confirmation",
    );
    assert!(
        get(url, T, d[2]).is_some(),
        "a refused purge deletes nothing"
    );
    let run = ok(url, &["dead", "purge", &victim, "--yes"]);
    assert!(run.stdout.contains("purged 1 dead message(s)"), "{run}");
    assert!(get(url, T, d[2]).is_none());
    fails(
        url,
        &["dead", "purge", &s.published.to_string(), "--yes"],
        1,
        "not dead",
    );
    // By filter: what is dead now is the killed head.
    let doc = json(url, &["dead", "purge", "--service", "orders", "--yes"]);
    assert_eq!(
        (ids(&doc), &doc["purged"]),
        (strings(&[s.parked]), &1.into())
    );
    assert!(get(url, T, s.parked).is_none());
    assert!(get(url, T, s.published).is_some(), "only dead messages go");
    assert_eq!(ids(&json(url, &["dead", "list"])), Vec::<String>::new());
}

fn dead_letters(url: &str) {
    let s = seed(url);
    list_and_show(url, &s);
    replay_purge_kill(url, &s);
}

/// Many dead messages of one key, replayed by filter in batches smaller than the set:
/// every one is replayed, and in write order.
fn replay_in_batches(url: &str) {
    migrate(url, None);
    let dead = block_on(async {
        let s = store(url, T).await;
        let start = Utc::now() - Duration::hours(1);
        let messages = (0..7)
            .map(|n| {
                message(
                    "orders",
                    "order.created",
                    "k",
                    n,
                    start + Duration::seconds(n as i64),
                )
            })
            .collect();
        enqueue_dead(&s, messages).await
    });
    let doc = json(
        url,
        &[
            "dead",
            "replay",
            "--yes",
            "--batch-size",
            "3",
            "--limit",
            "5",
        ],
    );
    assert_eq!(
        ids(&doc),
        strings(&dead[..5]),
        "the oldest five, in write order"
    );
    assert_eq!(doc["replayed"], 5);
    let times: Vec<_> = dead[..5]
        .iter()
        .map(|&id| get(url, T, id).unwrap().delivery.next_attempt_at)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(status(url, dead[5]), MessageStatus::Dead);
}

/// `--routes`: every table the routes name.
fn dead_with_routes(url: &str) {
    let dir = temp_dir("dead_routes");
    let routes = dir.join("routes.toml");
    std::fs::write(&routes, admin::ROUTES).unwrap();
    let routes = routes.to_str().unwrap();
    migrate(url, Some(routes));
    let (order, mail) = block_on(async {
        let orders = store(url, "orders_outbox").await;
        let order = enqueue_dead(
            &orders,
            vec![message("orders", "order.created", "a", 0, Utc::now())],
        )
        .await;
        let shared = store(url, T).await;
        let mail = enqueue_dead(
            &shared,
            vec![message("mail", "mail.sent", "m", 1, Utc::now())],
        )
        .await;
        (order[0], mail[0])
    });
    let doc = json(url, &["dead", "list", "--routes", routes]);
    assert_eq!(
        ids(&doc),
        strings(&[order, mail]),
        "table by table: {doc:#}"
    );
    assert_eq!(doc["messages"][0]["table"], "orders_outbox");
    let doc = json(url, &["dead", "list", "--table", "orders_outbox"]);
    assert_eq!(ids(&doc), strings(&[order]));
    assert_eq!(ids(&json(url, &["dead", "list"])), strings(&[mail]));
    let doc = json(
        url,
        &["dead", "show", &order.to_string(), "--routes", routes],
    );
    assert_eq!(doc["table"], "orders_outbox");
    fails(url, &["dead", "show", &order.to_string()], 1, "no message");

    let doc = json(
        url,
        &[
            "dead",
            "replay",
            &order.to_string(),
            &mail.to_string(),
            "--routes",
            routes,
        ],
    );
    assert_eq!(doc["replayed"], 2);
    assert_eq!(
        get(url, "orders_outbox", order).unwrap().delivery.status,
        MessageStatus::Pending
    );
    assert_eq!(
        get(url, T, mail).unwrap().delivery.status,
        MessageStatus::Pending
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dead_on_a_sqlite_file() {
    let dir = temp_dir("dead_sqlite");
    dead_letters(&format!("sqlite:{}", dir.join("app.db").display()));
    replay_in_batches(&format!("sqlite:{}", dir.join("batches.db").display()));
    dead_with_routes(&format!("sqlite:{}", dir.join("routed.db").display()));
    let _ = std::fs::remove_dir_all(&dir);
}

fn dead_on(server: Server, case: &str) {
    if let Some(db) = server.fresh_database(case) {
        dead_letters(&db.url);
    }
    if let Some(db) = server.fresh_database(&format!("{case}_batches")) {
        replay_in_batches(&db.url);
    }
    if let Some(db) = server.fresh_database(&format!("{case}_routes")) {
        dead_with_routes(&db.url);
    }
}

#[test]
fn dead_on_postgres() {
    dead_on(Server::Postgres, "dead_postgres");
}

#[test]
fn dead_on_mariadb() {
    dead_on(Server::MariaDb, "dead_mariadb");
}

#[test]
fn dead_usage_errors() {
    let run = outbox(&["dead", "list"]);
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("--database-url"), "{run}");

    let dir = temp_dir("dead_usage");
    let url = format!("sqlite:{}", dir.join("app.db").display());
    migrate(&url, None);
    let id = MessageId::new_v7(Utc::now()).to_string();
    for (args, why) in [
        (&["dead", "list", "--since", "yesterday"][..], "RFC 3339"),
        (
            &[
                "dead",
                "list",
                "--since",
                "2027-01-02T00:00:00Z",
                "--until",
                "2027-01-01T00:00:00Z",
            ][..],
            "--since must be earlier than --until",
        ),
        (&["dead", "list", "--limit", "0"][..], "invalid value"),
        (
            &["dead", "replay", &id, "--service", "x"][..],
            "cannot be used with",
        ),
        (&["dead", "purge", "--batch-size", "0"][..], "invalid value"),
        (&["dead", "list", "--table", "a-b"][..], "a-z, 0-9 and _"),
        (&["dead", "frobnicate"][..], "unrecognized subcommand"),
    ] {
        let run = admin::run(&url, args);
        assert_eq!(run.code, Some(2), "{args:?}:\n{run}");
        assert!(
            run.stderr.contains(why),
            "{args:?}: expected {why:?}:\n{run}"
        );
        assert!(run.stdout.is_empty() || !run.stdout.contains('{'), "{run}");
    }
    let missing = dir.join("missing.db");
    fails(
        &format!("sqlite:{}", missing.display()),
        &["dead", "list"],
        1,
        "no SQLite database at",
    );
    assert!(!missing.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
