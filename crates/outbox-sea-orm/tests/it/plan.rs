//! The claim's plan on PostgreSQL when the table's statistics are missing or stale:
//! it must still walk the `_due` index in order and stop after the batch, not read and
//! sort the whole backlog (docs/benchmarks.md, scenario 5). And when every key is in
//! flight already, it must not read the whole backlog to find nothing.

use crate::{Backend, fresh_db_url, store_at};
use chrono::Utc;
use outbox_ports::{ClaimRequest, MessageStore};
use outbox_sea_orm::KEY_HEADS_PLAN;
use sea_orm::ConnectionTrait;
use std::time::Duration;

/// Pending rows in the backlog, over 1 000 keys: far more than a claim of [`LIMIT`]
/// should ever read. (With fewer the planner happens to pick the index walk anyway.)
const BACKLOG: u64 = 200_000;
/// The keys the backlog is spread over.
const KEYS: u64 = 1_000;
/// The claim's batch.
const LIMIT: usize = 500;

async fn fill(store: &outbox_sea_orm::SeaOrmStore, status: &str, n: u64) {
    store
        .connection()
        .execute_unprepared(&format!(
            "INSERT INTO outbox_messages (id, service, event_type, topic, partition_key, \
             content_type, payload_json, headers, schema_version, occurred_at, created_at, \
             status, attempts, max_attempts, next_attempt_at) \
             SELECT gen_random_uuid(), 'orders', 'order.changed', 'orders.events', \
             'key-' || (g % {KEYS}), 'application/json', '{{}}', '{{}}', 1, now(), now(), \
             '{status}', 0, 10, now() FROM generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
}

/// The `actual … rows=N` of the plan line that scans `_due`.
fn due_rows(plan: &str) -> u64 {
    let line = plan
        .lines()
        .find(|l| l.contains("Index Scan using outbox_messages_due"))
        .unwrap_or_else(|| panic!("the claim does not walk the _due index:\n{plan}"));
    let actual = line.split("actual").nth(1).unwrap();
    let rows = actual.split("rows=").nth(1).unwrap();
    rows.split_whitespace().next().unwrap().parse().unwrap()
}

/// The shared buffers the whole claim touched (its plan's first `Buffers:` line).
fn buffers(plan: &str) -> u64 {
    let line = plan.lines().find(|l| l.contains("Buffers:")).unwrap();
    let hit = |kind: &str| -> u64 {
        line.split(&format!("{kind}="))
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map_or(0, |n| n.parse().unwrap())
    };
    hit("hit") + hit("read")
}

/// The walk's plan and the plan of the heads key by key, of one `explain_claim`.
fn split(plan: &str) -> (&str, &str) {
    plan.split_once(KEY_HEADS_PLAN)
        .unwrap_or_else(|| panic!("no plan of the heads key by key:\n{plan}"))
}

/// The heads key by key skip through `_key_unfinished`, a few buffers per key, and
/// read each head by its `ctid`.
fn assert_skips_key_by_key(by_key: &str) {
    for bad in ["Seq Scan", "Bitmap", "Hash"] {
        assert!(
            !by_key.contains(bad),
            "the heads key by key use a {bad}:\n{by_key}"
        );
    }
    for scan in ["Index Cond: (ROW(", "Tid Scan"] {
        assert!(
            by_key.contains(scan),
            "the heads key by key have no {scan}:\n{by_key}"
        );
    }
    let touched = buffers(by_key);
    assert!(
        touched <= 20 * KEYS,
        "the heads of {KEYS} keys touched {touched} buffers:\n{by_key}"
    );
}

fn assert_walks_the_due_index(plan: &str) {
    let (plan, by_key) = split(plan);
    assert_skips_key_by_key(by_key);
    // A probe that is a lookup per candidate has an index condition, never a join
    // filter over a whole index.
    for bad in ["Sort", "Seq Scan", "Bitmap", "Hash", "Join Filter"] {
        assert!(!plan.contains(bad), "the claim plan has a {bad}:\n{plan}");
    }
    assert!(
        plan.contains("outbox_messages_key_in_flight"),
        "the in-flight probe does not use _key_in_flight:\n{plan}"
    );
    let touched = buffers(plan);
    assert!(
        touched <= 20 * LIMIT as u64,
        "a claim of {LIMIT} touched {touched} buffers:\n{plan}"
    );
    let read = due_rows(plan);
    assert!(
        read <= 2 * LIMIT as u64,
        "a claim of {LIMIT} read {read} rows of {BACKLOG} from _due:\n{plan}"
    );
}

#[tokio::test]
async fn a_claim_on_a_never_analysed_table_walks_the_due_index() {
    let url = fresh_db_url(Backend::Postgres, "plan_cold").await;
    let store = store_at(&url).await;
    store
        .connection()
        .execute_unprepared("ALTER TABLE outbox_messages SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    fill(&store, "pending", BACKLOG).await;
    assert_walks_the_due_index(&store.explain_claim(LIMIT, true).await.unwrap());
}

#[tokio::test]
async fn a_claim_on_statistics_taken_with_nothing_pending_walks_the_due_index() {
    let url = fresh_db_url(Backend::Postgres, "plan_stale").await;
    let store = store_at(&url).await;
    let db = store.connection();
    db.execute_unprepared("ALTER TABLE outbox_messages SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    fill(&store, "published", BACKLOG).await;
    db.execute_unprepared("ANALYZE outbox_messages")
        .await
        .unwrap();
    fill(&store, "pending", BACKLOG).await;
    assert_walks_the_due_index(&store.explain_claim(LIMIT, true).await.unwrap());
}

/// Two relays hold the heads of all [`KEYS`] keys; a third claims. Every pending row
/// is blocked, and the claim must learn that without reading the backlog: its walk
/// stops after two rows per message of the batch, and the heads key by key cost a few
/// buffers per key.
#[tokio::test]
async fn a_claim_with_every_key_in_flight_reads_a_bounded_share_of_the_backlog() {
    let url = fresh_db_url(Backend::Postgres, "plan_keys_busy").await;
    let store = store_at(&url).await;
    fill(&store, "pending", BACKLOG).await;
    store
        .connection()
        .execute_unprepared("ANALYZE outbox_messages")
        .await
        .unwrap();
    let claim = |owner: &str| ClaimRequest {
        owner: owner.into(),
        limit: LIMIT,
        lease_for: Duration::from_secs(300),
        now: Utc::now(),
    };
    let a = store.claim(&claim("relay-a")).await.unwrap();
    let b = store.claim(&claim("relay-b")).await.unwrap();
    assert_eq!(
        a.len() + b.len(),
        KEYS as usize,
        "the first two claims take every key"
    );
    assert!(store.claim(&claim("relay-c")).await.unwrap().is_empty());

    let plan = store.explain_claim(LIMIT, true).await.unwrap();
    let (walk, by_key) = split(&plan);
    let read = due_rows(walk);
    assert!(
        read <= 2 * LIMIT as u64,
        "the walk read {read} rows of {BACKLOG} from _due:\n{walk}"
    );
    assert_skips_key_by_key(by_key);
}
