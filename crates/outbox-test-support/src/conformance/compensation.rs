//! The [`CompensationStore`] contract. Run it with
//! [`compensation_conformance_tests!`](crate::compensation_conformance_tests).
//!
//! "Oldest first" is by creation time for [`CompensationStore::list`] and by
//! `next_retry_at` for [`CompensationStore::claim_due`]; the suite never depends on the
//! order of items with equal times. An item is due when `next_retry_at <= now`.

use super::store::{at, t0};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use outbox_domain::{
    CompensationEvent, CompensationItem, CompensationStatus, ErrorText, NewCompensationItem,
};
use outbox_ports::{CompensationFilter, CompensationStore, StoreError};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// Retries every item of the suite gets.
const MAX_RETRIES: u32 = 3;

const RESERVE: Duration = Duration::from_secs(60);

fn new_item(batch: &str, index: u32) -> NewCompensationItem {
    NewCompensationItem {
        batch_id: batch.to_owned(),
        operation_type: "conformance.refund".to_owned(),
        item_index: index,
        payload: serde_json::json!({ "batch": batch, "index": index, "amount": 5 }),
        failure_reason: ErrorText::new("gateway timeout"),
    }
}

async fn record<C: CompensationStore + ?Sized>(
    store: &C,
    items: Vec<NewCompensationItem>,
    now: DateTime<Utc>,
) -> Vec<Uuid> {
    let n = items.len();
    let ids = store.record(items, MAX_RETRIES, now).await.expect("record");
    assert_eq!(ids.len(), n, "one id per item");
    ids
}

async fn get<C: CompensationStore + ?Sized>(store: &C, id: Uuid) -> CompensationItem {
    store.get(id).await.expect("get").expect("item exists")
}

async fn list<C: CompensationStore + ?Sized>(
    store: &C,
    status: Option<CompensationStatus>,
    batch: Option<&str>,
    limit: usize,
) -> Vec<Uuid> {
    let filter = CompensationFilter {
        status,
        batch_id: batch.map(str::to_owned),
        limit,
    };
    let items = store.list(&filter).await.expect("list");
    for w in items.windows(2) {
        assert!(w[0].created_at <= w[1].created_at, "list is oldest first");
    }
    items.iter().map(|i| i.id).collect()
}

async fn claim_due<C: CompensationStore + ?Sized>(
    store: &C,
    now: DateTime<Utc>,
    limit: usize,
) -> Vec<CompensationItem> {
    store
        .claim_due(now, limit, RESERVE)
        .await
        .expect("claim_due")
}

fn ids(items: &[CompensationItem]) -> Vec<Uuid> {
    items.iter().map(|i| i.id).collect()
}

fn set(ids: &[Uuid]) -> HashSet<Uuid> {
    ids.iter().copied().collect()
}

fn fail(retry_at: Option<DateTime<Utc>>) -> CompensationEvent {
    CompensationEvent::AttemptFailed {
        error: ErrorText::new("still down"),
        retry_at,
    }
}

fn operator(resolve: bool) -> CompensationEvent {
    let (by, note) = ("alice".to_owned(), "fixed by hand".to_owned());
    if resolve {
        CompensationEvent::Resolve { by, note }
    } else {
        CompensationEvent::Abandon { by, note }
    }
}

/// Moves the stored item through `event` at `now` with a compare-and-set update.
async fn transition<C: CompensationStore + ?Sized>(
    store: &C,
    id: Uuid,
    event: CompensationEvent,
    now: DateTime<Utc>,
) -> CompensationItem {
    let current = get(store, id).await;
    let next = current.apply(event, now).expect("legal transition");
    store.update(&next, current.version).await.expect("update");
    next
}

/// Recorded items are stored pending, due at once, at version 1 with every field
/// intact; listing is oldest first and filters by status, batch and limit.
pub async fn record_and_list<C: CompensationStore + ?Sized>(store: &C) {
    let a = record(store, vec![new_item("b1", 0)], t0()).await;
    let b = record(store, vec![new_item("b2", 0)], at(1)).await;
    let c = record(store, vec![new_item("b1", 1), new_item("b1", 2)], at(2)).await;
    assert_ne!(c[0], c[1], "ids are unique");

    for (id, item, now) in [
        (a[0], new_item("b1", 0), t0()),
        (b[0], new_item("b2", 0), at(1)),
        (c[0], new_item("b1", 1), at(2)),
        (c[1], new_item("b1", 2), at(2)),
    ] {
        assert_eq!(
            get(store, id).await,
            CompensationItem::new(id, item, MAX_RETRIES, now),
            "stored as recorded"
        );
    }
    assert_eq!(store.get(Uuid::nil()).await.expect("get"), None);

    let all = list(store, None, None, 10).await;
    assert_eq!(all.len(), 4);
    assert_eq!(&all[..2], &[a[0], b[0]], "oldest first");
    assert_eq!(set(&all[2..]), set(&c));
    assert_eq!(list(store, None, None, 2).await, vec![a[0], b[0]], "limit");
    assert_eq!(
        list(store, None, None, 0).await,
        Vec::<Uuid>::new(),
        "limit 0"
    );
    let b1 = list(store, None, Some("b1"), 10).await;
    assert_eq!((b1.len(), b1[0]), (3, a[0]));
    assert_eq!(set(&b1[1..]), set(&c));
    assert_eq!(list(store, None, Some("b1"), 1).await, vec![a[0]]);
    assert_eq!(list(store, None, Some("b3"), 10).await, Vec::<Uuid>::new());

    transition(store, b[0], CompensationEvent::AttemptSucceeded, at(3)).await;
    assert_eq!(
        list(store, Some(CompensationStatus::Resolved), None, 10).await,
        vec![b[0]]
    );
    let pending = list(store, Some(CompensationStatus::Pending), None, 10).await;
    assert_eq!(pending[0], a[0]);
    assert_eq!(set(&pending[1..]), set(&c));
    assert_eq!(
        list(store, Some(CompensationStatus::Resolved), Some("b1"), 10).await,
        Vec::<Uuid>::new(),
        "status and batch filters combine"
    );
}

/// `max_retries` of 0 is refused with [`StoreError::InvalidInput`] and records
/// nothing; an empty batch records nothing and succeeds.
pub async fn record_rejects_bad_input<C: CompensationStore + ?Sized>(store: &C) {
    let err = store
        .record(vec![new_item("b1", 0), new_item("b1", 1)], 0, t0())
        .await;
    assert!(
        matches!(err, Err(StoreError::InvalidInput(_))),
        "got {err:?}"
    );
    assert_eq!(list(store, None, None, 10).await, Vec::<Uuid>::new());
    assert_eq!(
        store
            .record(Vec::new(), MAX_RETRIES, t0())
            .await
            .expect("empty record"),
        Vec::<Uuid>::new()
    );
    assert_eq!(list(store, None, None, 10).await, Vec::<Uuid>::new());
}

/// `claim_due` returns only due items, oldest due first, up to `limit`; it reserves
/// them (moves `next_retry_at` to `now + reserve_for` and bumps the version, and returns
/// what it stored), so they are not claimed again until the reservation ends.
pub async fn claim_due_reserves_oldest_due_first<C: CompensationStore + ?Sized>(store: &C) {
    let x = record(store, vec![new_item("b", 0)], t0()).await[0];
    let y = record(store, vec![new_item("b", 1)], at(1)).await[0];
    let z = record(store, vec![new_item("b", 2)], at(2)).await[0];
    let w = record(store, vec![new_item("b", 3)], at(100)).await[0];

    assert_eq!(
        ids(&claim_due(store, t0(), 10).await),
        vec![x],
        "due at its time"
    );
    // x is now reserved until at(60).
    let first = claim_due(store, at(50), 2).await;
    assert_eq!(ids(&first), vec![y, z], "oldest due first, up to the limit");
    for item in &first {
        assert_eq!(item.next_retry_at, at(110), "reserved for 60 s");
        assert_eq!(item.version, 2, "the reservation bumps the version");
        assert_eq!(item.status, CompensationStatus::Pending);
        assert_eq!(&get(store, item.id).await, item, "returns what it stored");
    }
    assert_eq!(
        claim_due(store, at(50), 10).await,
        Vec::new(),
        "reserved and not yet due items are not claimed"
    );
    let second = claim_due(store, at(100), 10).await;
    assert_eq!(
        ids(&second),
        vec![x, w],
        "x's reservation ended at(60), w is due"
    );
    assert_eq!(second[0].version, 3, "every reservation bumps the version");
    assert_eq!(
        set(&ids(&claim_due(store, at(110), 10).await)),
        set(&[y, z])
    );
}

/// `update` is a compare-and-set on the version: the right version stores the whole
/// item; a stale one (for example from before a reservation) fails with
/// [`StoreError::Conflict`] and changes nothing; an unknown id fails with
/// [`StoreError::NotFound`] and creates nothing.
pub async fn update_is_compare_and_set<C: CompensationStore + ?Sized>(store: &C) {
    let id = record(store, vec![new_item("b", 0)], t0()).await[0];
    let before = get(store, id).await;
    let claimed = claim_due(store, at(1), 1).await;
    assert_eq!(ids(&claimed), vec![id]);
    let claimed = claimed[0].clone();

    let late = before
        .apply(CompensationEvent::AttemptSucceeded, at(2))
        .expect("legal");
    match store.update(&late, before.version).await {
        Err(StoreError::Conflict {
            id: cid, expected, ..
        }) => {
            assert_eq!((cid, expected), (id.to_string(), before.version));
        }
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert_eq!(get(store, id).await, claimed, "nothing changed");

    let failed = claimed.apply(fail(Some(at(120))), at(2)).expect("legal");
    store
        .update(&failed, claimed.version)
        .await
        .expect("update");
    assert_eq!(get(store, id).await, failed, "the whole item is stored");
    assert_eq!(
        (failed.status, failed.retry_count, failed.next_retry_at),
        (CompensationStatus::Retrying, 1, at(120))
    );

    let racing = claimed
        .apply(CompensationEvent::AttemptSucceeded, at(3))
        .expect("legal");
    assert!(
        matches!(
            store.update(&racing, claimed.version).await,
            Err(StoreError::Conflict { .. })
        ),
        "the second writer of the same version loses"
    );
    assert_eq!(get(store, id).await, failed, "nothing changed");

    let resolved = failed.apply(operator(true), at(4)).expect("legal");
    store
        .update(&resolved, failed.version)
        .await
        .expect("update");
    let stored = get(store, id).await;
    assert_eq!(stored, resolved);
    assert_eq!(
        (stored.resolved_by.as_deref(), stored.resolved_at),
        (Some("alice"), Some(at(4)))
    );

    let unknown = CompensationItem::new(Uuid::now_v7(), new_item("b", 9), MAX_RETRIES, t0());
    match store.update(&unknown, unknown.version).await {
        Err(StoreError::NotFound { id: nid, .. }) => assert_eq!(nid, unknown.id.to_string()),
        other => panic!("update of an unknown item must be NotFound, got {other:?}"),
    }
    assert_eq!(store.get(unknown.id).await.expect("get"), None);
}

/// Resolved, abandoned and manual-required items are never claimed; retrying items
/// are claimed once due.
pub async fn finished_items_are_never_claimed<C: CompensationStore + ?Sized>(store: &C) {
    let resolved = record(store, vec![new_item("b", 0)], t0()).await[0];
    let abandoned = record(store, vec![new_item("b", 1)], at(1)).await[0];
    let manual = record(store, vec![new_item("b", 2)], at(2)).await[0];
    let retrying = record(store, vec![new_item("b", 3)], at(3)).await[0];
    let exhausted = record(store, vec![new_item("b", 4)], at(4)).await[0];

    transition(store, resolved, CompensationEvent::AttemptSucceeded, at(5)).await;
    transition(store, abandoned, operator(false), at(5)).await;
    let m = transition(store, manual, fail(None), at(5)).await;
    assert_eq!(m.status, CompensationStatus::ManualRequired);
    let r = transition(store, retrying, fail(Some(at(30))), at(5)).await;
    assert_eq!(r.status, CompensationStatus::Retrying);
    for _ in 0..MAX_RETRIES {
        transition(store, exhausted, fail(Some(at(30))), at(5)).await;
    }
    assert_eq!(
        get(store, exhausted).await.status,
        CompensationStatus::ManualRequired,
        "retries used up"
    );

    assert_eq!(
        claim_due(store, at(29), 10).await,
        Vec::new(),
        "the retrying item is not due yet"
    );
    assert_eq!(ids(&claim_due(store, at(30), 10).await), vec![retrying]);
    assert_eq!(
        ids(&claim_due(store, at(10_000), 10).await),
        vec![retrying],
        "only the retryable item, again after its reservation"
    );
    for (id, status) in [
        (resolved, CompensationStatus::Resolved),
        (abandoned, CompensationStatus::Abandoned),
        (manual, CompensationStatus::ManualRequired),
        (exhausted, CompensationStatus::ManualRequired),
    ] {
        assert_eq!(
            get(store, id).await.status,
            status,
            "claiming left it alone"
        );
    }
}

/// Workers claiming concurrently never get the same item twice, and together get every
/// due item.
pub async fn concurrent_claims_never_overlap<C: CompensationStore + ?Sized>(store: &C) {
    const ITEMS: u32 = 24;
    let recorded = record(store, (0..ITEMS).map(|i| new_item("b", i)).collect(), t0()).await;
    let mut claimed = Vec::new();
    for _round in 0..ITEMS {
        let batches = join_all((0..4).map(|_| store.claim_due(at(10), 3, RESERVE))).await;
        let mut any = false;
        for batch in batches {
            let batch = batch.expect("claim_due");
            any |= !batch.is_empty();
            claimed.extend(ids(&batch));
        }
        if !any {
            break;
        }
    }
    let unique = set(&claimed);
    assert_eq!(unique.len(), claimed.len(), "an item was claimed twice");
    assert_eq!(unique, set(&recorded), "every due item was claimed");
}
