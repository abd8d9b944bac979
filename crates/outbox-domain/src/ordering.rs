//! The per-key ordering rule.
//!
//! Messages with the same [`OrderingKey`] (service, partition key) must reach the broker
//! in the order they were written. The rule that guarantees it, through retries and
//! across any number of relays:
//!
//! > A message may be handed to a publisher only when no earlier message with the same
//! > key is unfinished (pending or in flight).
//!
//! So at most one message per key is ever in flight, and a failing head message *parks
//! its key*: later messages of that key wait until the head is published, dies, or is
//! killed by an operator. Other keys are unaffected and keep flowing.

use crate::Delivery;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hash::Hash;

/// The scope within which order is preserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderingKey {
    /// Owning service.
    pub service: String,
    /// Partition key within the service.
    pub partition_key: String,
}

impl OrderingKey {
    /// Builds a key.
    pub fn new(service: impl Into<String>, partition_key: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            partition_key: partition_key.into(),
        }
    }
}

/// Applies the ordering rule to a log of messages given **in write order**, returning
/// (in that order) the ids of at most `limit` messages a relay may claim at `now`:
/// for each key, its first unfinished message, if that message is claimable.
///
/// Stores that keep messages in memory use this directly; SQL stores express the same
/// rule in their claim query and are checked against it by the conformance suite.
pub fn select_heads<'a, Id, K>(
    log: impl IntoIterator<Item = (Id, K, &'a Delivery)>,
    now: DateTime<Utc>,
    limit: usize,
) -> Vec<Id>
where
    K: Eq + Hash,
{
    let mut seen_unfinished = HashSet::new();
    let mut heads = Vec::new();
    for (id, key, delivery) in log {
        if heads.len() >= limit {
            break;
        }
        if !delivery.status.is_unfinished() {
            continue;
        }
        // Only the first unfinished message of a key can be a head.
        if seen_unfinished.insert(key) && delivery.is_claimable(now) {
            heads.push(id);
        }
    }
    heads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeliveryEvent, ErrorText, Lease, LeaseToken};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    /// A delivery in an arbitrary state: 0 pending due, 1 pending backing off,
    /// 2 in flight, 3 published, 4 dead.
    fn delivery(state: u8) -> Delivery {
        let pending = Delivery::new(5, t(0));
        let lease = Lease {
            owner: "r".into(),
            token: LeaseToken::from_uuid(uuid::Uuid::nil()),
            expires_at: t(100),
        };
        let in_flight = pending.apply(DeliveryEvent::Claim { lease }, t(0)).unwrap();
        let token = LeaseToken::from_uuid(uuid::Uuid::nil());
        let fail = |retry_at| DeliveryEvent::Fail {
            token,
            error: ErrorText::new("e"),
            retry_at,
        };
        match state {
            0 => pending,
            1 => in_flight.apply(fail(Some(t(50))), t(1)).unwrap(),
            2 => in_flight,
            3 => in_flight
                .apply(DeliveryEvent::Publish { token }, t(1))
                .unwrap(),
            _ => in_flight.apply(fail(None), t(1)).unwrap(),
        }
    }

    #[test]
    fn failing_head_parks_only_its_key() {
        let log = [
            (1, "a", delivery(1)),
            (2, "a", delivery(0)),
            (3, "b", delivery(0)),
            (4, "b", delivery(0)),
        ];
        let heads = select_heads(log.iter().map(|(id, k, d)| (*id, *k, d)), t(10), 10);
        assert_eq!(heads, [3]);
    }

    #[test]
    fn dead_and_published_messages_do_not_block() {
        let log = [
            (1, "a", delivery(4)),
            (2, "a", delivery(3)),
            (3, "a", delivery(0)),
        ];
        let heads = select_heads(log.iter().map(|(id, k, d)| (*id, *k, d)), t(10), 10);
        assert_eq!(heads, [3]);
    }

    proptest! {
        #[test]
        fn never_releases_a_message_behind_an_unfinished_one(
            log in proptest::collection::vec((0u8..4, 0u8..5), 0..80),
            limit in 1usize..100,
        ) {
            let log: Vec<(usize, u8, Delivery)> =
                log.into_iter().enumerate().map(|(i, (k, s))| (i, k, delivery(s))).collect();
            let now = t(10);
            let heads = select_heads(log.iter().map(|(i, k, d)| (*i, *k, d)), now, limit);
            prop_assert!(heads.len() <= limit);
            let mut keys = HashSet::new();
            for &h in &heads {
                let (_, key, d) = &log[h];
                prop_assert!(d.is_claimable(now));
                prop_assert!(keys.insert(*key), "two heads for one key");
                prop_assert!(
                    log[..h].iter().all(|(_, k, e)| k != key || !e.status.is_unfinished()),
                    "message {} released while an earlier one of its key is unfinished", h
                );
            }
            // Liveness: with room to spare, every key whose first unfinished message is
            // claimable gets a head, whatever other keys are doing.
            if limit >= log.len() {
                for key in 0u8..4 {
                    let first = log.iter().find(|(_, k, d)| *k == key && d.status.is_unfinished());
                    if let Some((i, _, d)) = first {
                        prop_assert_eq!(heads.contains(i), d.is_claimable(now));
                    }
                }
            }
        }
    }
}
