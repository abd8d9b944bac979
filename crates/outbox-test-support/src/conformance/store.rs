//! The [`MessageStore`] contract. Run it with
//! [`store_conformance_tests!`](crate::store_conformance_tests); the store under test
//! must give each message [`MAX_ATTEMPTS`] attempts and use the default
//! [`MessageLimits`](outbox_domain::MessageLimits).
//!
//! Times are whole seconds after [`t0`] so that every database keeps them exactly.

use chrono::{DateTime, TimeZone, Utc};
use futures::future::join_all;
use outbox_domain::validation::DEFAULT_MAX_PAYLOAD_BYTES;
use outbox_domain::{ErrorText, InvalidMessage, MessageId, MessageStatus, OutboxMessage, Payload};
use outbox_ports::{
    ClaimRequest, ClaimedMessage, Disposition, ListFilter, MessageStore, OutboxStats, Settlement,
    StoreError,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Attempts per message that the store under test must be configured with.
pub const MAX_ATTEMPTS: u32 = 3;

const LEASE: Duration = Duration::from_secs(30);

/// The instant every case starts at.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// `t0` plus `secs` seconds.
pub fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

/// The counters of `s` (without the oldest-unsent time), for one assertion.
fn counts(s: &OutboxStats) -> (u64, u64, u64, u64, u64, u64) {
    (
        s.pending,
        s.retrying,
        s.in_flight,
        s.published,
        s.consumed,
        s.dead,
    )
}

/// A test message of `key`, created at `t0`, whose payload records `n`.
pub fn message(key: &str, n: usize) -> OutboxMessage {
    OutboxMessage::new(
        "conformance",
        "conformance.happened",
        "conformance.events",
        key,
        Payload::Json(serde_json::json!({ "key": key, "n": n })),
        t0(),
    )
    .with_header("x-case", "conformance")
}

fn request(owner: &str, limit: usize, now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit,
        lease_for: LEASE,
        now,
    }
}

pub(crate) async fn claim<S: MessageStore + ?Sized>(
    store: &S,
    limit: usize,
    now: DateTime<Utc>,
) -> Vec<ClaimedMessage> {
    store
        .claim(&request("relay-a", limit, now))
        .await
        .expect("claim")
}

pub(crate) fn settle(c: &ClaimedMessage, disposition: Disposition) -> Settlement {
    Settlement {
        id: c.message.id,
        token: c.lease.token,
        disposition,
    }
}

fn retry_at(secs: i64) -> Disposition {
    Disposition::Retry {
        error: ErrorText::new("broker unavailable"),
        at: at(secs),
    }
}

async fn status<S: MessageStore + ?Sized>(store: &S, id: MessageId) -> MessageStatus {
    store
        .get(id)
        .await
        .expect("get")
        .expect("message exists")
        .delivery
        .status
}

pub(crate) fn payload_n(m: &OutboxMessage) -> u64 {
    match &m.payload {
        Payload::Json(v) => v["n"].as_u64().unwrap_or(u64::MAX),
        Payload::Bytes { .. } => u64::MAX,
    }
}

/// Enqueued messages are claimed once, with their envelope intact, and settle as published.
pub async fn enqueue_claim_settle<S: MessageStore + ?Sized>(store: &S) {
    let msgs: Vec<_> = (0..3).map(|n| message(&format!("k{n}"), n)).collect();
    let ids = store.enqueue(msgs.clone()).await.expect("enqueue");
    assert_eq!(ids, msgs.iter().map(|m| m.id).collect::<Vec<_>>());

    let claimed = claim(store, 10, at(0)).await;
    assert_eq!(claimed.len(), 3, "all three are heads of their keys");
    for (c, m) in claimed.iter().zip(&msgs) {
        assert_eq!(&c.message, m, "envelope survives storage");
        assert_eq!(c.attempts, 1);
        assert_eq!(c.max_attempts, MAX_ATTEMPTS);
        assert_eq!(c.lease.owner, "relay-a");
        assert_eq!(c.lease.expires_at, at(30));
        let stored = store.get(c.message.id).await.expect("get").expect("exists");
        assert_eq!(c.seq, stored.seq, "the claim carries the stored position");
        assert_eq!(status(store, c.message.id).await, MessageStatus::InFlight);
    }
    assert!(
        claimed.windows(2).all(|w| w[0].seq < w[1].seq),
        "positions grow in write order"
    );
    assert!(
        claim(store, 10, at(1)).await.is_empty(),
        "in-flight messages are not claimed twice"
    );

    let report = store
        .settle(
            claimed
                .iter()
                .map(|c| settle(c, Disposition::Published))
                .collect(),
            at(1),
        )
        .await
        .expect("settle");
    assert_eq!((report.settled, report.lease_lost.len()), (3, 0));
    for m in &msgs {
        let stored = store.get(m.id).await.expect("get").expect("exists");
        assert_eq!(stored.delivery.status, MessageStatus::Published);
        assert_eq!(stored.delivery.published_at, Some(at(1)));
    }
    assert!(
        claim(store, 10, at(100)).await.is_empty(),
        "published messages are never claimed"
    );
}

/// A failed enqueue writes nothing; duplicate ids are rejected with a typed error.
pub async fn enqueue_is_atomic_and_rejects_duplicates<S: MessageStore + ?Sized>(store: &S) {
    let a = message("a", 0);
    store.enqueue(vec![a.clone()]).await.expect("enqueue");
    let b = message("b", 1);
    let err = store
        .enqueue(vec![b.clone(), a.clone()])
        .await
        .expect_err("duplicate must fail");
    assert!(
        matches!(err, StoreError::DuplicateMessage(id) if id == a.id),
        "got {err:?}"
    );
    assert!(
        store.get(b.id).await.expect("get").is_none(),
        "nothing of a failed enqueue is kept"
    );
    let err = store
        .enqueue(vec![b.clone(), b.clone()])
        .await
        .expect_err("duplicate within a batch");
    assert!(
        matches!(err, StoreError::DuplicateMessage(_)),
        "got {err:?}"
    );
    assert!(store.get(b.id).await.expect("get").is_none());
    assert_eq!(
        store.enqueue(Vec::new()).await.expect("empty enqueue"),
        Vec::<MessageId>::new()
    );
}

/// A retried message is invisible until its backoff has passed.
pub async fn retry_waits_for_backoff<S: MessageStore + ?Sized>(store: &S) {
    let m = message("k", 0);
    store.enqueue(vec![m.clone()]).await.expect("enqueue");
    let c = claim(store, 1, at(0)).await;
    store
        .settle(vec![settle(&c[0], retry_at(10))], at(1))
        .await
        .expect("settle");

    let stored = store.get(m.id).await.expect("get").expect("exists");
    assert_eq!(stored.delivery.status, MessageStatus::Pending);
    assert_eq!(stored.delivery.next_attempt_at, at(10));
    assert_eq!(
        stored.delivery.last_error.as_ref().map(ErrorText::as_str),
        Some("broker unavailable")
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.retrying), (0, 1));

    assert!(
        claim(store, 1, at(9)).await.is_empty(),
        "not due before its backoff"
    );
    let again = claim(store, 1, at(10)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 2);
}

/// The last allowed failure makes a message dead, and dead messages are never claimed.
pub async fn dead_after_max_attempts<S: MessageStore + ?Sized>(store: &S) {
    let m = message("k", 0);
    store.enqueue(vec![m.clone()]).await.expect("enqueue");
    let mut now = 0;
    for attempt in 1..=MAX_ATTEMPTS {
        let c = claim(store, 1, at(now)).await;
        assert_eq!(c.len(), 1, "attempt {attempt} is claimable");
        assert_eq!(c[0].attempts, attempt);
        store
            .settle(vec![settle(&c[0], retry_at(now + 5))], at(now))
            .await
            .expect("settle");
        now += 5;
    }
    let stored = store.get(m.id).await.expect("get").expect("exists");
    assert_eq!(
        stored.delivery.status,
        MessageStatus::Dead,
        "attempts are used up"
    );
    assert_eq!(stored.delivery.attempts, MAX_ATTEMPTS);
    assert!(claim(store, 1, at(now + 1000)).await.is_empty());
    assert_eq!(store.stats().await.expect("stats").dead, 1);
}

/// A permanent failure makes a message dead on its first attempt.
pub async fn permanent_failure_is_dead_at_once<S: MessageStore + ?Sized>(store: &S) {
    let m = message("k", 0);
    store.enqueue(vec![m.clone()]).await.expect("enqueue");
    let c = claim(store, 1, at(0)).await;
    let dead = Disposition::Dead {
        error: ErrorText::new("message too large"),
    };
    store
        .settle(vec![settle(&c[0], dead)], at(1))
        .await
        .expect("settle");
    let stored = store.get(m.id).await.expect("get").expect("exists");
    assert_eq!(stored.delivery.status, MessageStatus::Dead);
    assert_eq!(
        stored.delivery.last_error.as_ref().map(ErrorText::as_str),
        Some("message too large")
    );
}

/// An operator's replay sends a dead message back with fresh attempts; other states are
/// left alone.
pub async fn replay_of_dead<S: MessageStore + ?Sized>(store: &S) {
    let dead = message("a", 0);
    let pending = message("b", 1);
    store
        .enqueue(vec![dead.clone(), pending.clone()])
        .await
        .expect("enqueue");
    let c = claim(store, 1, at(0)).await;
    assert_eq!(c[0].message.id, dead.id);
    let err = Disposition::Dead {
        error: ErrorText::new("rejected"),
    };
    store
        .settle(vec![settle(&c[0], err)], at(1))
        .await
        .expect("settle");

    let replayed = store
        .replay_dead(&[dead.id, pending.id], at(2))
        .await
        .expect("replay");
    assert_eq!(replayed, 1, "only the dead message is replayed");
    assert_eq!(status(store, dead.id).await, MessageStatus::Pending);
    let c = claim(store, 10, at(2)).await;
    let again = c
        .iter()
        .find(|c| c.message.id == dead.id)
        .expect("replayed message is claimable");
    assert_eq!(again.attempts, 1, "replay grants fresh attempts");
}

/// An expired lease returns the message to the pool, where another relay claims it.
pub async fn lease_expiry_and_reclaim<S: MessageStore + ?Sized>(store: &S) {
    let m = message("k", 0);
    store.enqueue(vec![m.clone()]).await.expect("enqueue");
    let first = claim(store, 1, at(0)).await;
    assert_eq!(
        store.release_expired(at(29), 100).await.expect("release"),
        0,
        "lease still valid"
    );
    assert_eq!(
        store.release_expired(at(30), 100).await.expect("release"),
        1
    );
    let stored = store.get(m.id).await.expect("get").expect("exists");
    assert_eq!(stored.delivery.status, MessageStatus::Pending);
    assert!(
        stored.delivery.last_error.is_some(),
        "the expiry is recorded"
    );

    let second = store
        .claim(&request("relay-b", 1, at(30)))
        .await
        .expect("claim");
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].lease.token, first[0].lease.token);
    assert_eq!(second[0].lease.owner, "relay-b");
    assert_eq!(second[0].attempts, 2, "the lost attempt counts");

    // On the last attempt an expired lease makes the message dead instead.
    store.release_expired(at(60), 100).await.expect("release");
    claim(store, 1, at(60)).await;
    assert_eq!(
        store.release_expired(at(90), 100).await.expect("release"),
        1
    );
    assert_eq!(status(store, m.id).await, MessageStatus::Dead);
}

/// After a reclaim, the first relay's late settlement is refused and changes nothing.
pub async fn stale_lease_cannot_settle_after_reclaim<S: MessageStore + ?Sized>(store: &S) {
    let m = message("k", 0);
    store.enqueue(vec![m.clone()]).await.expect("enqueue");
    let old = claim(store, 1, at(0)).await;
    store.release_expired(at(30), 100).await.expect("release");
    let new = claim(store, 1, at(31)).await;

    let report = store
        .settle(vec![settle(&old[0], Disposition::Published)], at(32))
        .await
        .expect("settle");
    assert_eq!(report.settled, 0);
    assert_eq!(report.lease_lost, vec![m.id]);
    assert_eq!(
        status(store, m.id).await,
        MessageStatus::InFlight,
        "the newer claim still owns it"
    );

    let report = store
        .settle(vec![settle(&new[0], Disposition::Published)], at(33))
        .await
        .expect("settle");
    assert_eq!(report.settled, 1);
    assert_eq!(status(store, m.id).await, MessageStatus::Published);
}

/// A settlement batch naming an unknown message fails whole: nothing is recorded.
pub async fn settle_with_unknown_id_records_nothing<S: MessageStore + ?Sized>(store: &S) {
    let m = message("k", 0);
    store.enqueue(vec![m.clone()]).await.expect("enqueue");
    let c = claim(store, 1, at(0)).await;
    let unknown = Settlement {
        id: message("other", 1).id,
        token: c[0].lease.token,
        disposition: Disposition::Published,
    };
    let err = store
        .settle(vec![settle(&c[0], Disposition::Published), unknown], at(1))
        .await
        .expect_err("unknown id");
    assert!(matches!(err, StoreError::NotFound { .. }), "got {err:?}");
    assert_eq!(
        status(store, m.id).await,
        MessageStatus::InFlight,
        "the valid settlement was not applied either"
    );
}

/// A failing head parks its key only; the key resumes in order once the head succeeds.
pub async fn per_key_order_under_head_failure<S: MessageStore + ?Sized>(store: &S) {
    let a: Vec<_> = (0..3).map(|n| message("a", n)).collect();
    let b: Vec<_> = (0..2).map(|n| message("b", 10 + n)).collect();
    // Interleave the two keys in write order.
    store
        .enqueue(vec![
            a[0].clone(),
            b[0].clone(),
            a[1].clone(),
            b[1].clone(),
            a[2].clone(),
        ])
        .await
        .expect("enqueue");

    let c = claim(store, 10, at(0)).await;
    let ids: Vec<_> = c.iter().map(|c| c.message.id).collect();
    assert_eq!(ids, vec![a[0].id, b[0].id], "only the head of each key");
    let (ca, cb) = (&c[0], &c[1]);
    store
        .settle(
            vec![settle(ca, retry_at(60)), settle(cb, Disposition::Published)],
            at(1),
        )
        .await
        .expect("settle");

    let c = claim(store, 10, at(2)).await;
    assert_eq!(
        c.iter().map(|c| c.message.id).collect::<Vec<_>>(),
        vec![b[1].id],
        "key a is parked, b flows"
    );
    store
        .settle(vec![settle(&c[0], Disposition::Published)], at(3))
        .await
        .expect("settle");
    assert!(
        claim(store, 10, at(30)).await.is_empty(),
        "a stays parked until its head is due"
    );

    let mut order = Vec::new();
    let mut seqs = Vec::new();
    let mut now = 60;
    loop {
        let c = claim(store, 10, at(now)).await;
        if c.is_empty() {
            break;
        }
        assert_eq!(c.len(), 1, "one message of key a at a time");
        order.push(c[0].message.id);
        seqs.push(c[0].seq);
        store
            .settle(vec![settle(&c[0], Disposition::Published)], at(now))
            .await
            .expect("settle");
        now += 1;
    }
    assert_eq!(order, a.iter().map(|m| m.id).collect::<Vec<_>>());
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "a key's positions grow from one delivery to the next, the head retried \
         included: {seqs:?}"
    );
}

/// A long run of one key at the front of the backlog, blocked behind its head (in
/// flight, then parked), does not hide the keys queued after it from a claim. (A store
/// that stops looking after a fixed number of rows must look key by key then.)
pub async fn a_blocked_run_does_not_hide_the_keys_behind_it<S: MessageStore + ?Sized>(store: &S) {
    let run: Vec<_> = (0..20).map(|n| message("a", n)).collect();
    store.enqueue(run.clone()).await.expect("enqueue");
    let (b, c) = (message("b", 100), message("c", 200));
    store
        .enqueue(vec![b.clone(), c.clone()])
        .await
        .expect("enqueue");
    let ids = |c: &[ClaimedMessage]| c.iter().map(|c| c.message.id).collect::<Vec<_>>();

    let head = claim(store, 1, at(0)).await;
    assert_eq!(ids(&head), vec![run[0].id]);
    let behind = claim(store, 2, at(0)).await;
    assert_eq!(
        ids(&behind),
        vec![b.id, c.id],
        "the keys behind a run whose head is in flight"
    );
    let mut settlements = vec![settle(&head[0], retry_at(60))];
    settlements.extend(behind.iter().map(|m| settle(m, Disposition::Published)));
    store.settle(settlements, at(1)).await.expect("settle");

    let later = message("b", 101);
    store.enqueue(vec![later.clone()]).await.expect("enqueue");
    assert_eq!(
        ids(&claim(store, 2, at(2)).await),
        vec![later.id],
        "a key behind a run whose head is parked"
    );
}

/// A retried head whose key's later messages were enqueued while it waited comes after
/// them in due order (they are due since their enqueue, it since its backoff): a claim
/// whose walk sees only those followers must still find it, and must not take it before
/// it is due.
pub async fn a_due_head_behind_its_own_followers_is_claimed<S: MessageStore + ?Sized>(store: &S) {
    let head = message("a", 0);
    store.enqueue(vec![head.clone()]).await.expect("enqueue");
    let c = claim(store, 1, at(0)).await;
    store
        .settle(vec![settle(&c[0], retry_at(60))], at(1))
        .await
        .expect("settle");
    let followers: Vec<_> = (1..=20).map(|n| message("a", n)).collect();
    store.enqueue(followers.clone()).await.expect("enqueue");

    assert!(
        claim(store, 1, at(30)).await.is_empty(),
        "the head is parked until its retry"
    );
    let c = claim(store, 1, at(61)).await;
    assert_eq!(
        c.iter().map(|c| c.message.id).collect::<Vec<_>>(),
        vec![head.id],
        "the head, due after its followers"
    );
}

/// Killing a parked head lets the rest of its key flow.
pub async fn kill_unparks_a_key<S: MessageStore + ?Sized>(store: &S) {
    let head = message("k", 0);
    let next = message("k", 1);
    store
        .enqueue(vec![head.clone(), next.clone()])
        .await
        .expect("enqueue");
    let c = claim(store, 10, at(0)).await;
    store
        .settle(vec![settle(&c[0], retry_at(3600))], at(1))
        .await
        .expect("settle");
    assert!(claim(store, 10, at(2)).await.is_empty());
    assert_eq!(
        store.stats().await.expect("stats").parked_keys,
        1,
        "the failed head parks its key"
    );

    store
        .kill(head.id, ErrorText::new("skipped by operator"), at(3))
        .await
        .expect("kill");
    assert_eq!(status(store, head.id).await, MessageStatus::Dead);
    assert_eq!(store.stats().await.expect("stats").parked_keys, 0);
    let c = claim(store, 10, at(3)).await;
    assert_eq!(
        c.iter().map(|c| c.message.id).collect::<Vec<_>>(),
        vec![next.id]
    );

    let err = store
        .kill(next.id, ErrorText::new("x"), at(4))
        .await
        .expect_err("in flight");
    assert!(matches!(err, StoreError::Transition { .. }), "got {err:?}");
}

/// Relays claiming concurrently never get the same message, and never two of one key.
pub async fn no_double_claim_by_concurrent_relays<S: MessageStore + ?Sized>(store: &S) {
    const KEYS: usize = 20;
    const PER_KEY: usize = 5;
    let msgs: Vec<_> = (0..KEYS * PER_KEY)
        .map(|n| message(&format!("k{}", n % KEYS), n))
        .collect();
    store.enqueue(msgs.clone()).await.expect("enqueue");

    let mut claimed_ids = Vec::new();
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for round in 0..(PER_KEY * 4) {
        let now = at(round as i64);
        let owners = ["relay-a", "relay-b", "relay-c", "relay-d"];
        let requests: Vec<_> = owners.iter().map(|o| request(o, 8, now)).collect();
        let claims = join_all(requests.iter().map(|r| store.claim(r))).await;
        let mut round_keys = HashSet::new();
        let mut settlements = Vec::new();
        for c in claims.into_iter().flat_map(|r| r.expect("claim")) {
            assert!(
                round_keys.insert(c.message.partition_key.clone()),
                "two messages of one key in flight"
            );
            claimed_ids.push(c.message.id);
            per_key
                .entry(c.message.partition_key.clone())
                .or_default()
                .push(payload_n(&c.message));
            settlements.push(settle(&c, Disposition::Published));
        }
        if settlements.is_empty() {
            break;
        }
        store.settle(settlements, now).await.expect("settle");
    }
    let unique: HashSet<_> = claimed_ids.iter().collect();
    assert_eq!(
        unique.len(),
        claimed_ids.len(),
        "a message was claimed twice"
    );
    assert_eq!(claimed_ids.len(), msgs.len(), "every message was claimed");
    for (key, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "key {key} delivered out of order");
    }
}

/// Consumption is recorded, and the stats count every state.
pub async fn consumed_and_stats<S: MessageStore + ?Sized>(store: &S) {
    let msgs: Vec<_> = (0..5).map(|n| message(&format!("k{n}"), n)).collect();
    store.enqueue(msgs.clone()).await.expect("enqueue");
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.unfinished()), (5, 5));
    assert_eq!(stats.oldest_unsent_at, Some(t0()));

    let c = claim(store, 4, at(0)).await;
    store
        .settle(
            vec![
                settle(&c[0], Disposition::Published),
                settle(&c[1], Disposition::Published),
                settle(&c[2], retry_at(50)),
                settle(
                    &c[3],
                    Disposition::Dead {
                        error: ErrorText::new("bad"),
                    },
                ),
            ],
            at(1),
        )
        .await
        .expect("settle");
    assert_eq!(
        store
            .mark_consumed(&[c[0].message.id, c[3].message.id], at(2))
            .await
            .expect("consume"),
        1
    );
    assert_eq!(
        store
            .mark_consumed(&[c[0].message.id], at(3))
            .await
            .expect("consume"),
        0,
        "idempotent"
    );
    assert_eq!(
        status(store, c[0].message.id).await,
        MessageStatus::Consumed
    );

    let s = store.stats().await.expect("stats");
    assert_eq!(counts(&s), (1, 1, 0, 1, 1, 1));
    assert_eq!(s.oldest_unsent_at, Some(t0()));
}

/// Listing filters by status and pages in write order.
pub async fn list_filters_and_pages<S: MessageStore + ?Sized>(store: &S) {
    let msgs: Vec<_> = (0..6).map(|n| message(&format!("k{n}"), n)).collect();
    store.enqueue(msgs.clone()).await.expect("enqueue");
    let c = claim(store, 2, at(0)).await;
    let dead = Disposition::Dead {
        error: ErrorText::new("bad"),
    };
    store
        .settle(c.iter().map(|c| settle(c, dead.clone())).collect(), at(1))
        .await
        .expect("settle");

    let dead_list = store
        .list(&ListFilter::status(MessageStatus::Dead, 10))
        .await
        .expect("list");
    assert_eq!(
        dead_list.iter().map(|m| m.message.id).collect::<Vec<_>>(),
        vec![msgs[0].id, msgs[1].id]
    );

    let page1 = store.list(&ListFilter::all(4)).await.expect("list");
    assert_eq!(page1.len(), 4);
    let last = page1.last().map(|m| m.seq);
    let page2 = store
        .list(&ListFilter::all(4).with_after_seq(last.expect("a first page")))
        .await
        .expect("list");
    let all: Vec<_> = page1.iter().chain(&page2).map(|m| m.message.id).collect();
    assert_eq!(
        all,
        msgs.iter().map(|m| m.id).collect::<Vec<_>>(),
        "pages cover the log in write order"
    );
}

/// Requests no store can serve fail as caller bugs.
pub async fn bad_claim_requests_are_rejected<S: MessageStore + ?Sized>(store: &S) {
    store.enqueue(vec![message("k", 0)]).await.expect("enqueue");
    let zero_limit = store.claim(&request("r", 0, at(0))).await;
    assert!(
        matches!(zero_limit, Err(StoreError::InvalidInput(_))),
        "got {zero_limit:?}"
    );
    let mut req = request("r", 1, at(0));
    req.lease_for = Duration::ZERO;
    assert!(matches!(
        store.claim(&req).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(
        claim(store, 1, at(0)).await.len(),
        1,
        "a rejected request claimed nothing"
    );
}

/// A batch holding one invalid message fails whole with
/// [`StoreError::InvalidMessage`] naming that message, and writes nothing; the store
/// stays usable. The store under test must use the default
/// [`MessageLimits`](outbox_domain::MessageLimits) (a payload cap of
/// [`DEFAULT_MAX_PAYLOAD_BYTES`]).
pub async fn enqueue_rejects_invalid_messages<S: MessageStore + ?Sized>(store: &S) {
    let mut empty_topic = message("bad", 1);
    empty_topic.topic = String::new();
    let mut too_large = message("bad", 4);
    too_large.payload = Payload::Bytes {
        content_type: "application/octet-stream".into(),
        data: vec![b'x'; DEFAULT_MAX_PAYLOAD_BYTES + 1],
    };
    type Rule = fn(&InvalidMessage) -> bool;
    let cases: [(&str, OutboxMessage, Rule); 4] = [
        ("empty topic", empty_topic, |e| {
            matches!(e, InvalidMessage::Topic(_))
        }),
        (
            "header name with a space",
            message("bad", 2).with_header("bad name", "v"),
            |e| matches!(e, InvalidMessage::HeaderName(n) if n == "bad name"),
        ),
        (
            "reserved header name",
            message("bad", 3).with_header("outbox-message-id", "forged"),
            |e| matches!(e, InvalidMessage::HeaderName(n) if n == "outbox-message-id"),
        ),
        ("payload over the default limit", too_large, |e| {
            matches!(e, InvalidMessage::PayloadTooLarge { size, .. }
                if *size == DEFAULT_MAX_PAYLOAD_BYTES + 1)
        }),
    ];
    for (kind, bad, rule) in cases {
        let valid = message("good", 0);
        let err = store
            .enqueue(vec![valid.clone(), bad.clone()])
            .await
            .expect_err(kind);
        match &err {
            StoreError::InvalidMessage { id, source } => {
                assert_eq!(*id, bad.id, "{kind}: the error names the bad message");
                assert!(rule(source), "{kind}: wrong rule {source:?}");
            }
            other => panic!("{kind}: expected InvalidMessage, got {other:?}"),
        }
        assert!(
            store.get(valid.id).await.expect("get").is_none(),
            "{kind}: the valid message of the failed batch was not kept"
        );
        assert!(store.get(bad.id).await.expect("get").is_none(), "{kind}");
    }
    assert_eq!(
        store.stats().await.expect("stats"),
        OutboxStats::default(),
        "rejected batches wrote nothing"
    );
    let all = store.list(&ListFilter::all(100)).await.expect("list");
    assert!(all.is_empty(), "rejected batches wrote nothing: {all:?}");

    let valid = message("good", 0);
    assert_eq!(
        store.enqueue(vec![valid.clone()]).await.expect("enqueue"),
        vec![valid.id],
        "the store still accepts valid messages"
    );
    assert_eq!(status(store, valid.id).await, MessageStatus::Pending);
}

/// Retention deletes published and consumed messages published strictly before the
/// cutoff, at most `limit` per call, the earliest published first and ties in write
/// order; dead letters and unfinished messages are kept, and the kept ones still work.
pub async fn purge_finished_keeps_dead_and_unfinished<S: MessageStore + ?Sized>(store: &S) {
    // m0..m6 get claimed; p7, p8 are enqueued later and never claimed.
    let m: Vec<_> = (0..7).map(|n| message(&format!("k{n}"), n)).collect();
    store.enqueue(m.clone()).await.expect("enqueue");
    let claimed = claim(store, 10, at(0)).await;
    assert_eq!(claimed.len(), m.len(), "every key has one message");
    let by_id: HashMap<MessageId, &ClaimedMessage> =
        claimed.iter().map(|c| (c.message.id, c)).collect();
    let c = |i: usize| by_id[&m[i].id];
    let dead = Disposition::Dead {
        error: ErrorText::new("rejected"),
    };
    // m5 is published first, though written last of the purgeable ones.
    store
        .settle(vec![settle(c(5), Disposition::Published)], at(8))
        .await
        .expect("settle");
    store
        .settle(
            vec![
                settle(c(0), Disposition::Published),
                settle(c(1), dead),
                settle(c(2), Disposition::Published),
                settle(c(3), Disposition::Published),
                // m4 stays in flight.
                settle(c(6), retry_at(1000)),
            ],
            at(10),
        )
        .await
        .expect("settle");
    assert_eq!(
        store
            .mark_consumed(&[m[2].id], at(11))
            .await
            .expect("consume"),
        1
    );
    let p: Vec<_> = (7..9).map(|n| message(&format!("k{n}"), n)).collect();
    store.enqueue(p.clone()).await.expect("enqueue");

    // Purgeable: m5, published at at(8); m0, m2 (consumed) and m3, published at at(10).
    assert_eq!(
        store.purge_finished(at(5), 100).await.expect("purge"),
        0,
        "nothing was published before the cutoff"
    );
    assert_eq!(
        store.purge_finished(at(8), 100).await.expect("purge"),
        0,
        "the cutoff is exclusive"
    );
    assert_eq!(store.stats().await.expect("stats").published, 3);

    assert_eq!(
        store.purge_finished(at(20), 3).await.expect("purge"),
        3,
        "at most `limit` per call"
    );
    for gone in [5, 0, 2] {
        assert!(
            store.get(m[gone].id).await.expect("get").is_none(),
            "m{gone} is among the 3 earliest published and was purged"
        );
    }
    assert_eq!(
        status(store, m[3].id).await,
        MessageStatus::Published,
        "published with m0 and m2 but written after them, m3 waits for the next call"
    );
    assert_eq!(store.purge_finished(at(20), 3).await.expect("purge"), 1);
    assert!(store.get(m[3].id).await.expect("get").is_none());
    assert_eq!(store.purge_finished(at(20), 3).await.expect("purge"), 0);

    assert_eq!(status(store, m[1].id).await, MessageStatus::Dead);
    assert_eq!(status(store, m[4].id).await, MessageStatus::InFlight);
    assert_eq!(status(store, m[6].id).await, MessageStatus::Pending);
    for q in &p {
        assert_eq!(status(store, q.id).await, MessageStatus::Pending);
    }
    let s = store.stats().await.expect("stats");
    assert_eq!(counts(&s), (2, 1, 1, 0, 0, 1));
    let left = store.list(&ListFilter::all(100)).await.expect("list");
    assert_eq!(
        left.iter().map(|s| s.message.id).collect::<Vec<_>>(),
        vec![m[1].id, m[4].id, m[6].id, p[0].id, p[1].id],
        "the survivors, in write order"
    );

    // What survived still works: the in-flight message settles, the pending ones flow.
    let report = store
        .settle(vec![settle(c(4), Disposition::Published)], at(21))
        .await
        .expect("settle");
    assert_eq!((report.settled, report.lease_lost.len()), (1, 0));
    let next = claim(store, 10, at(22)).await;
    assert_eq!(
        next.iter().map(|c| c.message.id).collect::<HashSet<_>>(),
        p.iter().map(|m| m.id).collect::<HashSet<_>>()
    );
}

/// Audit records (`DbOnly`) are stored whole, never claimed, do not hold back their
/// key, count in the stats, and outlive retention; recording is all or nothing.
pub async fn recorded_messages_are_never_claimed<S: MessageStore + ?Sized>(store: &S) {
    let audit = vec![message("k", 0), message("audit-only", 1)];
    assert_eq!(
        store.record(audit.clone()).await.expect("record"),
        audit.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    let relayed = message("k", 2);
    store.enqueue(vec![relayed.clone()]).await.expect("enqueue");

    let claimed = claim(store, 10, at(0)).await;
    assert_eq!(
        claimed.iter().map(|c| c.message.id).collect::<Vec<_>>(),
        vec![relayed.id],
        "only the relayed message; the earlier audit record of its key does not block it"
    );
    store
        .settle(vec![settle(&claimed[0], Disposition::Published)], at(1))
        .await
        .expect("settle");
    assert!(claim(store, 10, at(1_000)).await.is_empty());

    for m in &audit {
        let stored = store.get(m.id).await.expect("get").expect("exists");
        assert_eq!(&stored.message, m, "envelope survives storage");
        assert_eq!(stored.delivery.status, MessageStatus::Recorded);
        assert_eq!(stored.delivery.attempts, 0);
    }
    let listed = store
        .list(&ListFilter::status(MessageStatus::Recorded, 10))
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        (stats.recorded, stats.published, stats.unfinished()),
        (2, 1, 0)
    );
    assert_eq!(
        stats.oldest_unsent_at, None,
        "audit records are not a backlog"
    );

    assert_eq!(
        store
            .purge_finished(at(1_000_000), 100)
            .await
            .expect("purge"),
        1,
        "retention takes the published message, never an audit record"
    );
    assert_eq!(store.stats().await.expect("stats").recorded, 2);

    let again = message("x", 3);
    let err = store
        .record(vec![again.clone(), audit[0].clone()])
        .await
        .expect_err("a duplicate id fails the call");
    assert!(
        matches!(err, StoreError::DuplicateMessage(id) if id == audit[0].id),
        "{err}"
    );
    assert!(
        store.get(again.id).await.expect("get").is_none(),
        "nothing written"
    );
}

/// `message(key, n)` of another service and event type, created `secs` after [`t0`].
fn message_of(service: &str, event_type: &str, key: &str, n: usize, secs: i64) -> OutboxMessage {
    let mut m = message(key, n);
    m.service = service.to_owned();
    m.event_type = event_type.to_owned();
    m.created_at = at(secs);
    m.occurred_at = at(secs);
    m
}

async fn ids_of<S: MessageStore + ?Sized>(store: &S, filter: ListFilter) -> Vec<MessageId> {
    store
        .list(&filter)
        .await
        .expect("list")
        .iter()
        .map(|m| m.message.id)
        .collect()
}

/// Listing filters by service, event type, partition key and creation time (from
/// inclusive, before exclusive), each combined with the others, the status and paging;
/// values are bound, never spliced.
pub async fn list_filters_by_envelope<S: MessageStore + ?Sized>(store: &S) {
    let a = message_of("orders", "order.created", "k1", 0, 0);
    let b = message_of("orders", "order.paid", "k1", 1, 10);
    let c = message_of("billing", "order.created", "k1", 2, 20);
    let d = message_of("billing", "invoice.sent", "k2", 3, 30);
    store
        .enqueue(vec![a.clone(), b.clone(), c.clone(), d.clone()])
        .await
        .expect("enqueue");
    let all = || ListFilter::all(100);

    assert_eq!(
        ids_of(store, all().with_service("orders")).await,
        [a.id, b.id]
    );
    assert_eq!(
        ids_of(store, all().with_event_type("order.created")).await,
        [a.id, c.id]
    );
    assert_eq!(
        ids_of(store, all().with_partition_key("k1")).await,
        [a.id, b.id, c.id]
    );
    assert_eq!(
        ids_of(store, all().with_created_from(at(10))).await,
        [b.id, c.id, d.id],
        "from is inclusive"
    );
    assert_eq!(
        ids_of(store, all().with_created_before(at(30))).await,
        [a.id, b.id, c.id],
        "before is exclusive"
    );
    assert_eq!(
        ids_of(
            store,
            all().with_created_from(at(10)).with_created_before(at(30))
        )
        .await,
        [b.id, c.id]
    );
    assert!(
        ids_of(
            store,
            all().with_created_from(at(10)).with_created_before(at(10))
        )
        .await
        .is_empty()
    );
    assert_eq!(
        ids_of(
            store,
            all().with_service("billing").with_partition_key("k1")
        )
        .await,
        [c.id]
    );
    assert_eq!(
        ids_of(store, ListFilter::all(1).with_event_type("order.created")).await,
        [a.id],
        "the limit applies after the filters"
    );
    let c_seq = store.get(c.id).await.expect("get").expect("exists").seq;
    assert_eq!(
        ids_of(store, all().with_service("billing").with_after_seq(c_seq)).await,
        [d.id],
        "pages within a filter"
    );
    assert!(
        ids_of(store, all().with_service("orders' OR '1' = '1"))
            .await
            .is_empty(),
        "a value is compared, never spliced"
    );

    // With the status: make c dead.
    let claimed = claim(store, 10, at(100)).await;
    let dead = Disposition::Dead {
        error: ErrorText::new("rejected"),
    };
    let cc = claimed
        .iter()
        .find(|m| m.message.id == c.id)
        .expect("c is the head of billing/k1");
    store
        .settle(vec![settle(cc, dead)], at(101))
        .await
        .expect("settle");
    let dead_of = |service: &str| ListFilter::status(MessageStatus::Dead, 10).with_service(service);
    assert_eq!(ids_of(store, dead_of("billing")).await, [c.id]);
    assert!(ids_of(store, dead_of("orders")).await.is_empty());
    assert!(
        ids_of(
            store,
            ListFilter::status(MessageStatus::Dead, 10).with_created_before(at(20))
        )
        .await
        .is_empty()
    );
}

/// `delete_dead` deletes exactly the dead messages among the ids and reports how many;
/// every other message and unknown ids are left alone.
pub async fn delete_dead_deletes_only_dead<S: MessageStore + ?Sized>(store: &S) {
    let m: Vec<_> = (0..4).map(|n| message(&format!("k{n}"), n)).collect();
    store.enqueue(m.clone()).await.expect("enqueue");
    let claimed = claim(store, 10, at(0)).await;
    let by_id: HashMap<MessageId, &ClaimedMessage> =
        claimed.iter().map(|c| (c.message.id, c)).collect();
    let dead = || Disposition::Dead {
        error: ErrorText::new("rejected"),
    };
    store
        .settle(
            vec![
                settle(by_id[&m[0].id], dead()),
                settle(by_id[&m[1].id], retry_at(100)),
                settle(by_id[&m[2].id], Disposition::Published),
                settle(by_id[&m[3].id], dead()),
            ],
            at(1),
        )
        .await
        .expect("settle");
    let unknown = message("unknown", 9).id;
    let all: Vec<MessageId> = m.iter().map(|m| m.id).chain([unknown]).collect();
    assert_eq!(store.delete_dead(&all).await.expect("delete"), 2);
    for gone in [0, 3] {
        assert!(
            store.get(m[gone].id).await.expect("get").is_none(),
            "m{gone}"
        );
    }
    assert_eq!(status(store, m[1].id).await, MessageStatus::Pending);
    assert_eq!(status(store, m[2].id).await, MessageStatus::Published);
    assert_eq!(store.delete_dead(&all).await.expect("delete"), 0);
    assert_eq!(store.delete_dead(&[]).await.expect("delete"), 0);
    let s = store.stats().await.expect("stats");
    assert_eq!(counts(&s), (0, 1, 0, 1, 0, 0));
}

/// Parked keys count each (service, key) whose first unfinished message is pending
/// after a failed attempt, once, however many messages wait behind it; the per-service
/// stats split every counter by service and add up to the whole.
pub async fn parked_keys_and_stats_by_service<S: MessageStore + ?Sized>(store: &S) {
    assert!(
        store.stats_by_service().await.expect("stats").is_empty(),
        "an empty store has no services"
    );
    let h1 = message_of("orders", "e", "k1", 0, 0);
    let n1 = message_of("orders", "e", "k1", 1, 0);
    let h2 = message_of("orders", "e", "k2", 2, 0);
    let x3 = message_of("orders", "e", "k3", 3, 0);
    let e1 = message_of("orders", "e", "k5", 4, 0);
    let e2 = message_of("orders", "e", "k5", 5, 0);
    // The same key name in another service is another key.
    let b1 = message_of("billing", "e", "k1", 6, 5);
    let b9 = message_of("billing", "e", "k9", 7, 5);
    let audit = message_of("audit", "e", "k1", 8, 7);
    store
        .enqueue(vec![
            h1.clone(),
            n1.clone(),
            h2.clone(),
            x3.clone(),
            e1.clone(),
            e2.clone(),
            b1.clone(),
            b9.clone(),
        ])
        .await
        .expect("enqueue");
    store.record(vec![audit.clone()]).await.expect("record");

    let claimed = claim(store, 20, at(10)).await;
    let by_id: HashMap<MessageId, &ClaimedMessage> =
        claimed.iter().map(|c| (c.message.id, c)).collect();
    assert_eq!(claimed.len(), 6, "one head per key");
    store
        .settle(
            vec![
                settle(by_id[&h1.id], retry_at(100)),
                settle(by_id[&h2.id], retry_at(100)),
                settle(by_id[&x3.id], Disposition::Published),
                settle(
                    by_id[&e1.id],
                    Disposition::Dead {
                        error: ErrorText::new("rejected"),
                    },
                ),
                settle(by_id[&b1.id], retry_at(100)),
                // b9 stays in flight.
            ],
            at(11),
        )
        .await
        .expect("settle");
    // orders/k1 (with n1 waiting behind), orders/k2, billing/k1.
    assert_eq!(store.stats().await.expect("stats").parked_keys, 3);

    // e2 becomes the head of orders/k5 and fails: a fourth parked key.
    let c = claim(store, 20, at(12)).await;
    assert_eq!(
        c.iter().map(|c| c.message.id).collect::<Vec<_>>(),
        vec![e2.id]
    );
    store
        .settle(vec![settle(&c[0], retry_at(100))], at(13))
        .await
        .expect("settle");
    assert_eq!(store.stats().await.expect("stats").parked_keys, 4);
    // Replaying the dead e1 puts a fresh head before it: the key is not parked (its
    // head has not failed yet), although e2 is still a failed message.
    assert_eq!(
        store.replay_dead(&[e1.id], at(14)).await.expect("replay"),
        1
    );
    let whole = store.stats().await.expect("stats");
    assert_eq!(whole.parked_keys, 3);

    let by_service = store.stats_by_service().await.expect("stats");
    assert_eq!(
        by_service.keys().map(String::as_str).collect::<Vec<_>>(),
        ["audit", "billing", "orders"]
    );
    let orders = &by_service["orders"];
    // pending: n1, e1; retrying: h1, h2, e2; published: x3.
    assert_eq!(counts(orders), (2, 3, 0, 1, 0, 0));
    assert_eq!((orders.parked_keys, orders.recorded), (2, 0));
    assert_eq!(orders.oldest_unsent_at, Some(t0()));
    let billing = &by_service["billing"];
    assert_eq!(counts(billing), (0, 1, 1, 0, 0, 0));
    assert_eq!(billing.parked_keys, 1);
    assert_eq!(billing.oldest_unsent_at, Some(at(5)));
    let audit = &by_service["audit"];
    assert_eq!(
        (audit.recorded, audit.unfinished(), audit.parked_keys),
        (1, 0, 0)
    );
    assert_eq!(audit.oldest_unsent_at, None);

    let mut sum = OutboxStats::default();
    for s in by_service.values() {
        sum.pending += s.pending;
        sum.retrying += s.retrying;
        sum.in_flight += s.in_flight;
        sum.published += s.published;
        sum.consumed += s.consumed;
        sum.dead += s.dead;
        sum.recorded += s.recorded;
        sum.parked_keys += s.parked_keys;
        sum.oldest_unsent_at = match (sum.oldest_unsent_at, s.oldest_unsent_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    assert_eq!(sum, whole, "the services add up to the whole");
}
