//! The claim's plan on PostgreSQL when the table's statistics are missing or stale:
//! it must still walk the `_due` index in order and stop after the batch, not read and
//! sort the whole backlog (docs/benchmarks.md, scenario 5). And when every key is in
//! flight already, it must not read the whole backlog to find nothing. On MariaDB, a
//! claim over fewer keys than its batch must not read the whole backlog either, nor one
//! that finds every key blocked; on SQLite the heads beyond the walk are read key by key.

use crate::{Backend, fresh_db_url, order_message, store_at};
use chrono::Utc;
use outbox_ports::{ClaimRequest, MessageStore};
use outbox_sea_orm::KEY_HEADS_PLAN;
use sea_orm::{ConnectionTrait, TransactionTrait};
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

/// The `actual … rows=N` of the first line of a PostgreSQL `EXPLAIN ANALYZE` plan that
/// `is_scan` picks; `None` without such a line.
pub(crate) fn actual_rows(plan: &str, is_scan: impl Fn(&str) -> bool) -> Option<u64> {
    let line = plan.lines().find(|l| is_scan(l))?;
    let actual = line.split("actual").nth(1).unwrap();
    let rows = actual.split("rows=").nth(1).unwrap();
    Some(rows.split_whitespace().next().unwrap().parse().unwrap())
}

/// The `actual … rows=N` of the plan line that scans `_due`.
fn due_rows(plan: &str) -> u64 {
    actual_rows(plan, |l| l.contains("Index Scan using outbox_messages_due"))
        .unwrap_or_else(|| panic!("the claim does not walk the _due index:\n{plan}"))
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

/// The index and row reads of the session so far (`Handler_read_%`), on MySQL/MariaDB.
pub(crate) async fn handler_reads(db: &sea_orm::DatabaseConnection) -> u64 {
    db.query_all_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        "SHOW SESSION STATUS LIKE 'Handler_read%'",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| {
        r.try_get::<String>("", "Value")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    })
    .sum()
}

/// Pending messages of [`few_keys_on_mariadb`].
const MESSAGES: usize = 20_000;
/// The keys they are spread over.
const FEW_KEYS: usize = 10;

/// A MariaDB database with [`MESSAGES`] pending messages over [`FEW_KEYS`] keys, and a
/// store over one connection (that connection too), so that the session's read
/// counters are the claim's.
async fn few_keys_on_mariadb(
    case: &str,
) -> (
    String,
    sea_orm::DatabaseConnection,
    outbox_sea_orm::SeaOrmStore,
) {
    let url = fresh_db_url(Backend::MySql, case).await;
    let mut options = sea_orm::ConnectOptions::new(url.clone());
    options.max_connections(1).min_connections(1);
    let db = sea_orm::Database::connect(options).await.unwrap();
    let store = outbox_sea_orm::SeaOrmStore::new(db.clone(), Default::default()).unwrap();
    for chunk in 0..MESSAGES / 1_000 {
        let messages = (0..1_000)
            .map(|i| {
                let n = chunk * 1_000 + i;
                order_message(&format!("key-{}", n % FEW_KEYS), n)
            })
            .collect();
        store.enqueue(messages).await.unwrap();
    }
    (url, db, store)
}

/// Ten keys and 20 000 pending messages: a claim of 50 takes the ten heads. Unbounded,
/// its walk read every due row (each with its probes) looking for more heads; bounded,
/// it reads two rows per message of the batch.
#[tokio::test]
async fn on_mariadb_a_claim_over_few_keys_reads_a_bounded_share_of_the_backlog() {
    let (_, db, store) = few_keys_on_mariadb("plan_few_keys").await;
    let request = ClaimRequest {
        owner: "relay-a".into(),
        limit: 50,
        lease_for: Duration::from_secs(300),
        now: Utc::now(),
    };
    // What reading the counters costs by itself (`SHOW STATUS` fills a temporary table).
    let before = handler_reads(&db).await;
    let overhead = handler_reads(&db).await - before;

    let before = handler_reads(&db).await;
    let claimed = store.claim(&request).await.unwrap();
    let read = handler_reads(&db).await - before - overhead;
    assert_eq!(claimed.len(), FEW_KEYS, "one head per key");
    assert!(
        read < 5_000,
        "the claim read {read} index entries and rows for {MESSAGES} pending messages"
    );

    // Every key blocked: one head parked for an hour, the nine others in flight. The
    // walk finds nothing; looking further, the claim leaves the blocked keys' rows out
    // (it used to walk every due row with its probes: about 40,000 reads).
    let parked = claimed.iter().find(|c| c.message.partition_key == "key-0");
    db.execute_unprepared(&format!(
        "UPDATE outbox_messages SET status = 'pending', lease_owner = NULL, \
         lease_token = NULL, lease_expires_at = NULL, \
         next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE seq = {}",
        parked.unwrap().seq
    ))
    .await
    .unwrap();
    let before = handler_reads(&db).await;
    let claimed = store
        .claim(&ClaimRequest {
            owner: "relay-b".into(),
            now: Utc::now(),
            ..request
        })
        .await
        .unwrap();
    let read = handler_reads(&db).await - before - overhead;
    assert!(claimed.is_empty(), "every key is blocked: {claimed:?}");
    assert!(
        read < 2_000,
        "a claim with every key blocked read {read} index entries and rows for \
         {MESSAGES} pending messages"
    );
}

/// Another relay is claiming the head of every key (its transaction holds their row
/// locks). A claim skips them (`SKIP LOCKED`) and its walk finds only their followers;
/// looking further, it leaves out the keys whose heads it walked past, rather than read
/// their whole backlogs (40 616 reads when it left out only parked keys).
#[tokio::test]
async fn on_mariadb_a_claim_racing_another_for_every_key_reads_a_bounded_share() {
    let (url, db, store) = few_keys_on_mariadb("plan_racing").await;
    let other = sea_orm::Database::connect(url).await.unwrap();
    let heads: Vec<String> = other
        .query_all_raw(sea_orm::Statement::from_string(
            other.get_database_backend(),
            "SELECT MIN(seq) AS seq FROM outbox_messages GROUP BY partition_key",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<i64>("", "seq").unwrap().to_string())
        .collect();
    assert_eq!(heads.len(), FEW_KEYS);
    let claiming = other.begin().await.unwrap();
    claiming
        .execute_unprepared(&format!(
            "SELECT seq FROM outbox_messages WHERE seq IN ({}) FOR UPDATE",
            heads.join(", ")
        ))
        .await
        .unwrap();

    let before = handler_reads(&db).await;
    let overhead = handler_reads(&db).await - before;
    let before = handler_reads(&db).await;
    let claimed = store
        .claim(&ClaimRequest {
            owner: "relay-b".into(),
            limit: 50,
            lease_for: Duration::from_secs(300),
            now: Utc::now(),
        })
        .await
        .unwrap();
    let read = handler_reads(&db).await - before - overhead;
    claiming.rollback().await.unwrap();
    assert!(claimed.is_empty(), "every head is locked: {claimed:?}");
    assert!(
        read < 2_000,
        "a claim racing another for every key read {read} index entries and rows for \
         {MESSAGES} pending messages"
    );
}

/// On MariaDB the heads beyond the walk drive their join: the first pending message
/// of each key that is not blocked, then that row by its primary key. MariaDB preferred
/// to walk every pending row through `_due` and look each up among the heads when it
/// expected many of them (the claim benchmark's plan, 2 000 keys).
#[tokio::test]
async fn on_mariadb_the_heads_beyond_the_walk_drive_their_join() {
    let url = fresh_db_url(Backend::MySql, "plan_join_order").await;
    let store = store_at(&url).await;
    for chunk in 0..10 {
        let messages = (0..2_000)
            .map(|i| {
                let n = chunk * 2_000 + i;
                order_message(&format!("key-{}", n % 2_000), n)
            })
            .collect();
        store.enqueue(messages).await.unwrap();
    }
    let plan = store.explain_claim(100, false).await.unwrap();
    let (_, by_key) = split(&plan);
    let first = by_key.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        first.contains("<derived"),
        "the heads key by key start from {first}:\n{by_key}"
    );
}

/// On SQLite a claim reads by the claim indexes, which its planner, with no statistics,
/// left for `_status` (every pending row, sorted): the walk goes down `_due` in order,
/// the earlier-unfinished probe reads `_key_unfinished` (a partial index SQLite uses
/// only for a query that repeats its predicate), and when the walk found nothing the
/// heads key by key skip through `_key_unfinished`, as on PostgreSQL: each step one
/// descent, never a scan of the table.
#[tokio::test]
async fn on_sqlite_a_claim_reads_by_the_claim_indexes() {
    let url = fresh_db_url(Backend::SqliteFile, "plan_sqlite_keys").await;
    let store = store_at(&url).await;
    let messages = (0..2_000)
        .map(|n| order_message(&format!("key-{}", n % 10), n))
        .collect();
    store.enqueue(messages).await.unwrap();
    let plan = store.explain_claim(50, false).await.unwrap();
    let (walk, by_key) = split(&plan);
    let steps: &[(&str, &[&str])] = &[
        (
            walk,
            &[
                "SEARCH m USING INDEX outbox_messages_due (next_attempt_at<?)",
                "SEARCH e USING INDEX outbox_messages_key_unfinished (service=? AND partition_key=? AND seq<?)",
                "SEARCH f USING COVERING INDEX outbox_messages_key_in_flight",
            ],
        ),
        (
            by_key,
            &[
                "SEARCH e USING INDEX outbox_messages_key_unfinished (service=? AND partition_key>?)",
                "SEARCH e USING INDEX outbox_messages_key_unfinished (service>?)",
                "SEARCH x USING INTEGER PRIMARY KEY",
                "SEARCH m USING INTEGER PRIMARY KEY",
                "SEARCH e USING INDEX outbox_messages_key_unfinished (service=? AND partition_key=? AND seq<?)",
            ],
        ),
    ];
    for (plan, wanted) in steps {
        for step in *wanted {
            assert!(plan.contains(step), "no `{step}`:\n{plan}");
        }
    }
    assert!(!walk.contains("TEMP B-TREE"), "the walk sorts:\n{walk}");
    // The only index scan is the recursion's first key (`LIMIT 1` in index order).
    for line in by_key.lines().filter(|l| l.contains("SCAN")) {
        assert!(
            line.ends_with("SCAN k")
                || line.ends_with("SCAN (subquery-1)")
                || line.ends_with("SCAN e USING INDEX outbox_messages_key_unfinished"),
            "the heads key by key scan a table: {line}\n{by_key}"
        );
    }
}

/// The claim's in-flight probe had a runner-up plan: a scan of every entry of `_lease`
/// (which had the same predicate and is the smaller index) with a heap fetch each.
/// PostgreSQL chose it when its statistics called the partial indexes empty, and whole
/// drains of the history benchmark ran at a quarter of their speed. With
/// `_key_in_flight` gone the runner-up is what the planner shows; `_lease` must not be
/// among the candidates.
#[tokio::test]
async fn the_in_flight_probe_cannot_scan_the_lease_index() {
    let url = fresh_db_url(Backend::Postgres, "plan_lease").await;
    let store = store_at(&url).await;
    fill(&store, "pending", BACKLOG).await;
    let request = ClaimRequest {
        owner: "relay-a".into(),
        limit: LIMIT,
        lease_for: Duration::from_secs(300),
        now: Utc::now(),
    };
    assert_eq!(store.claim(&request).await.unwrap().len(), LIMIT);
    store
        .connection()
        .execute_unprepared("ANALYZE outbox_messages; DROP INDEX outbox_messages_key_in_flight")
        .await
        .unwrap();

    let plan = store.explain_claim(LIMIT, false).await.unwrap();
    assert!(
        !plan.contains("outbox_messages_lease"),
        "a claim plan reads the lease index:\n{plan}"
    );
}
