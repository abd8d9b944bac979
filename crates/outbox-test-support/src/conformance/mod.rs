//! Conformance suites: the contract of each port, written once, run against every
//! adapter.
//!
//! | Port | Suite | Macro |
//! |---|---|---|
//! | [`MessageStore`](outbox_ports::MessageStore) | [`store`] | [`store_conformance_tests!`](crate::store_conformance_tests) |
//! | [`Publisher`](outbox_ports::Publisher) | [`publisher`] | [`publisher_conformance_tests!`](crate::publisher_conformance_tests) |
//! | [`Inbox`](outbox_ports::Inbox) | [`inbox`] | [`inbox_conformance_tests!`](crate::inbox_conformance_tests) |
//! | [`CursorStore`](outbox_ports::CursorStore) | [`cursor`] | [`cursor_conformance_tests!`](crate::cursor_conformance_tests) |
//! | [`OutboxLog`](outbox_ports::OutboxLog) | [`log`] | [`log_conformance_tests!`](crate::log_conformance_tests) |
//! | [`CompensationStore`](outbox_ports::CompensationStore) | [`compensation`] | [`compensation_conformance_tests!`](crate::compensation_conformance_tests) |
//!
//! An adapter crate runs a suite by invoking its macro inside a test module, with an
//! async factory that builds a fresh, empty adapter for the named test case (so each
//! case can get its own database schema or topic and cases can run in parallel):
//!
//! ```
//! mod conformance {
//!     use outbox_test_support::{InMemoryStore, InMemoryPublisher, InMemoryInbox};
//!
//!     outbox_test_support::store_conformance_tests!(|_case: &'static str| async {
//!         InMemoryStore::with_max_attempts(3)
//!     });
//!
//!     outbox_test_support::publisher_conformance_tests!(|case: &'static str| async move {
//!         let broker = InMemoryPublisher::new();
//!         (broker.clone(), broker, format!("conformance.{case}"))
//!     });
//!
//!     mod inbox {
//!         outbox_test_support::inbox_conformance_tests!(|_case: &'static str| async {
//!             super::InMemoryInbox::new()
//!         });
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! Each macro defines one function per case, named after the case, so invoke different
//! suites in different modules when their case names could clash.
//!
//! The suites are written for real databases too: times are whole seconds (see
//! [`store::t0`] and [`store::at`]), they never depend on the order of rows with equal
//! timestamps beyond a documented tie-breaker, and every case expects a fresh, empty
//! adapter.
//!
//! The generated tests use `#[tokio::test]`, so the calling crate needs `tokio` with
//! the `macros` and `rt-multi-thread` features as a dev-dependency.

pub mod compensation;
pub mod cursor;
pub mod inbox;
pub mod log;
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
            a_blocked_run_does_not_hide_the_keys_behind_it,
            a_due_head_behind_its_own_followers_is_claimed,
            no_double_claim_by_concurrent_relays,
            consumed_and_stats,
            list_filters_and_pages,
            bad_claim_requests_are_rejected,
            enqueue_rejects_invalid_messages,
            purge_finished_keeps_dead_and_unfinished,
            recorded_messages_are_never_claimed,
            list_filters_by_envelope,
            delete_dead_deletes_only_dead,
            parked_keys_and_stats_by_service,
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

/// Generates one `#[tokio::test]` per inbox conformance case.
///
/// `$factory` is a closure `|case: &'static str| async { inbox }` returning a fresh,
/// empty [`Inbox`](outbox_ports::Inbox).
#[macro_export]
macro_rules! inbox_conformance_tests {
    ($factory:expr) => {
        $crate::inbox_conformance_tests!(@cases $factory;
            first_then_duplicate,
            groups_are_independent,
            concurrent_records_yield_one_first,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let inbox = ($factory)(stringify!($case)).await;
                $crate::conformance::inbox::$case(&inbox).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per cursor store conformance case.
///
/// `$factory` is a closure `|case: &'static str| async { store }` returning a fresh,
/// empty [`CursorStore`](outbox_ports::CursorStore).
#[macro_export]
macro_rules! cursor_conformance_tests {
    ($factory:expr) => {
        $crate::cursor_conformance_tests!(@cases $factory;
            load_of_unknown_is_none,
            create_then_load,
            save_with_current_version_moves_it,
            stale_version_conflicts_and_changes_nothing,
            create_and_move_mismatches_conflict,
            concurrent_creates_one_wins,
            concurrent_moves_one_wins,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = ($factory)(stringify!($case)).await;
                $crate::conformance::cursor::$case(&store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per outbox log conformance case.
///
/// `$factory` is a closure `|case: &'static str| async { store }` returning a fresh,
/// empty store that implements both [`MessageStore`](outbox_ports::MessageStore) and
/// [`OutboxLog`](outbox_ports::OutboxLog).
#[macro_export]
macro_rules! log_conformance_tests {
    ($factory:expr) => {
        $crate::log_conformance_tests!(@cases $factory;
            empty_log,
            reads_in_write_order_in_pages,
            holds_every_status,
            end_reads_only_what_comes_next,
            unfinished_start_is_before_the_earliest_unfinished,
            lag_counts_unread_entries,
            positions_parse_and_garbage_is_refused,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = ($factory)(stringify!($case)).await;
                $crate::conformance::log::$case(&store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per compensation store conformance case.
///
/// `$factory` is a closure `|case: &'static str| async { store }` returning a fresh,
/// empty [`CompensationStore`](outbox_ports::CompensationStore).
#[macro_export]
macro_rules! compensation_conformance_tests {
    ($factory:expr) => {
        $crate::compensation_conformance_tests!(@cases $factory;
            record_and_list,
            record_rejects_bad_input,
            claim_due_reserves_oldest_due_first,
            update_is_compare_and_set,
            finished_items_are_never_claimed,
            concurrent_claims_never_overlap,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = ($factory)(stringify!($case)).await;
                $crate::conformance::compensation::$case(&store).await;
            }
        )*
    };
}
