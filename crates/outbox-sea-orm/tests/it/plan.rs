//! The claim's plan on PostgreSQL when the table's statistics are missing or stale:
//! it must still walk the `_due` index in order and stop after the batch, not read and
//! sort the whole backlog (docs/benchmarks.md, scenario 5).

use crate::{Backend, fresh_db_url, store_at};
use sea_orm::ConnectionTrait;

/// Pending rows in the backlog, over 1 000 keys: far more than a claim of [`LIMIT`]
/// should ever read. (With fewer the planner happens to pick the index walk anyway.)
const BACKLOG: u64 = 200_000;
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
             'key-' || (g % 1000), 'application/json', '{{}}', '{{}}', 1, now(), now(), \
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

fn assert_walks_the_due_index(plan: &str) {
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
