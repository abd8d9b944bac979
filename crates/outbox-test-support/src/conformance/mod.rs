//! Conformance suites: the contract of each port, written once, run against every
//! adapter.
//!
//! An adapter crate runs a suite by invoking its macro inside a test module, with an
//! async factory that builds a fresh, empty adapter for the named test case (so each
//! case can get its own database schema or topic and cases can run in parallel):
//!
//! ```
//! mod conformance {
//!     use outbox_test_support::{InMemoryStore, InMemoryPublisher};
//!
//!     outbox_test_support::store_conformance_tests!(|_case: &'static str| async {
//!         InMemoryStore::with_max_attempts(3)
//!     });
//!
//!     outbox_test_support::publisher_conformance_tests!(|case: &'static str| async move {
//!         let broker = InMemoryPublisher::new();
//!         (broker.clone(), broker, format!("conformance.{case}"))
//!     });
//! }
//! # fn main() {}
//! ```
//!
//! The generated tests use `#[tokio::test]`, so the calling crate needs `tokio` with
//! the `macros` and `rt-multi-thread` features as a dev-dependency.

pub mod publisher;
pub mod store;

use async_trait::async_trait;
use outbox_domain::OutboxMessage;
use std::collections::BTreeMap;
use std::time::Duration;

/// A message as a consumer of the broker receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The topic it was read from.
    pub topic: String,
    /// The broker message key.
    pub key: Option<String>,
    /// Headers or properties.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub payload: Vec<u8>,
}

impl ReceivedMessage {
    /// What a correct publisher delivers for `message`: key from the partition key,
    /// headers from [`outbox_ports::wire_headers`], payload bytes.
    pub fn from_message(message: &OutboxMessage) -> Self {
        Self {
            topic: message.topic.clone(),
            key: Some(message.partition_key.clone()),
            headers: outbox_ports::wire_headers(message).into_iter().collect(),
            payload: message.payload.to_bytes().into_owned(),
        }
    }
}

/// Reads back what a publisher under test delivered (a broker consumer).
#[async_trait]
pub trait PublishedReader: Send + Sync {
    /// Every message on `topic`, in the broker's order, waiting up to `timeout` until at
    /// least `count` have arrived.
    async fn read(&self, topic: &str, count: usize, timeout: Duration) -> Vec<ReceivedMessage>;
}

/// Generates one `#[tokio::test]` per store conformance case.
///
/// `$factory` is a closure `|case: &'static str| async { store }` returning a fresh,
/// empty [`MessageStore`](outbox_ports::MessageStore) that gives each message **3**
/// attempts.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:expr) => {
        $crate::store_conformance_tests!(@cases $factory;
            enqueue_claim_settle,
            enqueue_is_atomic_and_rejects_duplicates,
            retry_waits_for_backoff,
            dead_after_max_attempts,
            permanent_failure_is_dead_at_once,
            replay_of_dead,
            lease_expiry_and_reclaim,
            stale_lease_cannot_settle_after_reclaim,
            settle_with_unknown_id_records_nothing,
            per_key_order_under_head_failure,
            kill_unparks_a_key,
            no_double_claim_by_concurrent_relays,
            consumed_and_stats,
            list_filters_and_pages,
            bad_claim_requests_are_rejected,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = ($factory)(stringify!($case)).await;
                $crate::conformance::store::$case(&store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per publisher conformance case.
///
/// `$factory` is a closure `|case: &'static str| async { (publisher, reader, topic) }`
/// returning a [`Publisher`](outbox_ports::Publisher), a [`PublishedReader`] of the
/// same broker, and a topic no other case uses.
#[macro_export]
macro_rules! publisher_conformance_tests {
    ($factory:expr) => {
        $crate::publisher_conformance_tests!(@cases $factory;
            round_trip_keeps_key_headers_and_payload,
            one_outcome_per_message_in_order,
            per_key_order_across_batches,
            empty_batch,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (publisher, reader, topic) = ($factory)(stringify!($case)).await;
                $crate::conformance::publisher::$case(&publisher, &reader, &topic).await;
            }
        )*
    };
}
