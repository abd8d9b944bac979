//! Setting up outbox states for the admin command tests (`status`, `dead`, `cursor`)
//! through the library, as a relay would leave them: enqueue, claim, settle.

#![allow(dead_code)] // each test binary uses part of this module

use crate::common::{Run, block_on, outbox};
use chrono::{DateTime, Utc};
use outbox_domain::{ErrorText, Identifier, MessageId, OutboxMessage, Payload};
use outbox_ports::{ClaimRequest, Disposition, MessageStore, Settlement, StoredMessage};
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use std::time::Duration;

/// Runs `outbox ARGS --database-url URL`.
pub(crate) fn run(url: &str, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--database-url", url]);
    outbox(&all)
}

/// Like [`run`], and it must succeed.
pub(crate) fn ok(url: &str, args: &[&str]) -> Run {
    let run = run(url, args);
    assert!(run.ok(), "outbox {args:?} failed:\n{run}");
    run
}

/// Like [`run`] with `--json`: it must succeed and print one JSON document.
pub(crate) fn json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let run = ok(url, &all);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout of {all:?} is not one JSON document ({e}):\n{run}"))
}

/// Fails with `code` and says `why` on stderr, in one line, without a panic.
pub(crate) fn fails(url: &str, args: &[&str], code: i32, why: &str) -> Run {
    let run = run(url, args);
    assert_eq!(run.code, Some(code), "outbox {args:?}:\n{run}");
    assert!(run.stderr.contains(why), "expected {why:?}:\n{run}");
    assert!(!run.stderr.contains("panicked"), "{run}");
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "one line on stderr:\n{run}"
    );
    run
}

/// `outbox migrate up` (with `--routes FILE` when given).
pub(crate) fn migrate(url: &str, routes: Option<&str>) {
    let mut args = vec!["migrate", "up"];
    if let Some(r) = routes {
        args.extend_from_slice(&["--routes", r]);
    }
    ok(url, &args);
}

/// A store on `table` of `url`.
pub(crate) async fn store(url: &str, table: &str) -> SeaOrmStore {
    let db = outbox_sea_orm::connect(url).await.expect("connect");
    let table = Identifier::parse("table", table).expect("a table name");
    SeaOrmStore::new(db, StoreConfig::default().with_table(table)).expect("a store")
}

/// A message whose JSON payload records `n`, created at `created`.
pub(crate) fn message(
    service: &str,
    event_type: &str,
    key: &str,
    n: usize,
    created: DateTime<Utc>,
) -> OutboxMessage {
    OutboxMessage::new(
        service,
        event_type,
        format!("{service}.events"),
        key,
        Payload::Json(serde_json::json!({ "n": n, "key": key })),
        created,
    )
    .with_header("x-test", "admin")
}

fn request(now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        owner: "test-relay".into(),
        limit: 100,
        lease_for: Duration::from_secs(30),
        now,
    }
}

/// Enqueues `messages` and makes every one dead as a relay would: claim the heads,
/// settle them dead with `error: <n>`, again until nothing is left to claim. The store
/// must hold no other claimable message.
pub(crate) async fn enqueue_dead(
    store: &SeaOrmStore,
    messages: Vec<OutboxMessage>,
) -> Vec<MessageId> {
    let ids = store.enqueue(messages).await.expect("enqueue");
    loop {
        let claimed = store.claim(&request(Utc::now())).await.expect("claim");
        if claimed.is_empty() {
            break;
        }
        let settlements = claimed
            .iter()
            .map(|c| Settlement {
                id: c.message.id,
                token: c.lease.token,
                disposition: Disposition::Dead {
                    error: ErrorText::new(format!("broker rejected {}", c.message.id)),
                },
            })
            .collect();
        store.settle(settlements, Utc::now()).await.expect("settle");
    }
    ids
}

/// Enqueues `head` and `behind` of one key; `head` fails once and waits an hour for
/// its retry, parking the key.
pub(crate) async fn park(store: &SeaOrmStore, head: OutboxMessage, behind: OutboxMessage) {
    let key = head.partition_key.clone();
    store.enqueue(vec![head, behind]).await.expect("enqueue");
    let claimed = store.claim(&request(Utc::now())).await.expect("claim");
    let c = claimed
        .iter()
        .find(|c| c.message.partition_key == key)
        .expect("the head is claimed");
    store
        .settle(
            vec![Settlement {
                id: c.message.id,
                token: c.lease.token,
                disposition: Disposition::Retry {
                    error: ErrorText::new("broker unavailable"),
                    at: Utc::now() + chrono::Duration::hours(1),
                },
            }],
            Utc::now(),
        )
        .await
        .expect("settle");
}

/// Enqueues `m` and publishes it.
pub(crate) async fn publish(store: &SeaOrmStore, m: OutboxMessage) {
    let id = store.enqueue(vec![m]).await.expect("enqueue")[0];
    let claimed = store.claim(&request(Utc::now())).await.expect("claim");
    let c = claimed
        .iter()
        .find(|c| c.message.id == id)
        .expect("the message is claimed");
    store
        .settle(
            vec![Settlement {
                id,
                token: c.lease.token,
                disposition: Disposition::Published,
            }],
            Utc::now(),
        )
        .await
        .expect("settle");
}

/// The message `id` as stored.
pub(crate) fn get(url: &str, table: &str, id: MessageId) -> Option<StoredMessage> {
    block_on(async { store(url, table).await.get(id).await.expect("get") })
}

/// The ids in a `--json` document's `messages` array.
pub(crate) fn ids(doc: &serde_json::Value) -> Vec<String> {
    doc["messages"]
        .as_array()
        .expect("a messages array")
        .iter()
        .map(|m| m["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// `ids` as strings, to compare with [`ids`].
pub(crate) fn strings(ids: &[MessageId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// A routing file: `orders` in its own table, `mail` in the shared default one.
pub(crate) const ROUTES: &str = r#"
[[services]]
name = "orders"
table = "orders_outbox"
topic = "orders.events"
consumer_group = "billing"

[[services]]
name = "mail"
table = "outbox_messages"
topic = "mail.events"
consumer_group = "mailers"

[[events]]
event_type = "order.created"
service = "orders"
"#;
