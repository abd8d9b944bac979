//! The [`Inbox`] contract. Run it with
//! [`inbox_conformance_tests!`](crate::inbox_conformance_tests).

use super::store::{at, t0};
use futures::future::join_all;
use outbox_domain::MessageId;
use outbox_ports::{Inbox, InboxOutcome};
use std::collections::HashMap;

fn id() -> MessageId {
    MessageId::new_v7(t0())
}

async fn record<I: Inbox + ?Sized>(
    inbox: &I,
    group: &str,
    id: MessageId,
    secs: i64,
) -> InboxOutcome {
    inbox.record(group, id, at(secs)).await.expect("record")
}

/// The first record of an id is [`InboxOutcome::First`], every later one
/// [`InboxOutcome::Duplicate`]; other ids are unaffected.
pub async fn first_then_duplicate<I: Inbox + ?Sized>(inbox: &I) {
    let a = id();
    let b = id();
    assert_eq!(record(inbox, "billing", a, 0).await, InboxOutcome::First);
    assert_eq!(
        record(inbox, "billing", a, 1).await,
        InboxOutcome::Duplicate
    );
    assert_eq!(
        record(inbox, "billing", a, 2).await,
        InboxOutcome::Duplicate,
        "still a duplicate later"
    );
    assert_eq!(
        record(inbox, "billing", b, 3).await,
        InboxOutcome::First,
        "another id is new"
    );
    assert_eq!(
        record(inbox, "billing", b, 4).await,
        InboxOutcome::Duplicate
    );

    let many: Vec<_> = (0..50).map(|_| id()).collect();
    for &m in &many {
        assert_eq!(record(inbox, "billing", m, 5).await, InboxOutcome::First);
    }
    for &m in &many {
        assert_eq!(
            record(inbox, "billing", m, 6).await,
            InboxOutcome::Duplicate,
            "every recorded id is remembered"
        );
    }
}

/// Consumer groups keep separate records: an id seen by one group is new to another.
pub async fn groups_are_independent<I: Inbox + ?Sized>(inbox: &I) {
    let a = id();
    assert_eq!(record(inbox, "billing", a, 0).await, InboxOutcome::First);
    assert_eq!(record(inbox, "shipping", a, 1).await, InboxOutcome::First);
    assert_eq!(
        record(inbox, "billing", a, 2).await,
        InboxOutcome::Duplicate
    );
    assert_eq!(
        record(inbox, "shipping", a, 3).await,
        InboxOutcome::Duplicate
    );
    assert_eq!(
        record(inbox, "billing-2", a, 4).await,
        InboxOutcome::First,
        "group names are compared whole, not by prefix"
    );
}

/// Concurrent records of the same (group, id) yield exactly one
/// [`InboxOutcome::First`]; the rest are duplicates, never errors.
pub async fn concurrent_records_yield_one_first<I: Inbox + ?Sized>(inbox: &I) {
    const IDS: usize = 10;
    const RECORDERS: usize = 8;
    let ids: Vec<_> = (0..IDS).map(|_| id()).collect();
    let calls: Vec<_> = (0..RECORDERS).flat_map(|_| ids.iter().copied()).collect();
    let outcomes = join_all(calls.iter().map(|&m| inbox.record("billing", m, at(0)))).await;
    let mut firsts: HashMap<MessageId, usize> = HashMap::new();
    for (m, outcome) in calls.iter().zip(outcomes) {
        match outcome.expect("a concurrent duplicate is not an error") {
            InboxOutcome::First => *firsts.entry(*m).or_default() += 1,
            InboxOutcome::Duplicate => {}
        }
    }
    for m in &ids {
        assert_eq!(
            firsts.get(m).copied().unwrap_or(0),
            1,
            "exactly one recorder of {m} saw it first"
        );
    }
}
