//! The in-memory adapters pass the same conformance suites as every other adapter.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod conformance {
    use outbox_test_support::{
        InMemoryCompensationStore, InMemoryCursorStore, InMemoryInbox, InMemoryPublisher,
        InMemoryStore,
    };

    mod store {
        use super::*;
        outbox_test_support::store_conformance_tests!(|_case: &'static str| async {
            InMemoryStore::with_max_attempts(outbox_test_support::conformance::store::MAX_ATTEMPTS)
        });
    }

    mod publisher {
        use super::*;
        outbox_test_support::publisher_conformance_tests!(|case: &'static str| async move {
            let broker = InMemoryPublisher::new();
            (broker.clone(), broker, format!("conformance.{case}"))
        });
    }

    mod inbox {
        use super::*;
        outbox_test_support::inbox_conformance_tests!(|_case: &'static str| async {
            InMemoryInbox::new()
        });
    }

    mod log {
        use super::*;
        outbox_test_support::log_conformance_tests!(|_case: &'static str| async {
            InMemoryStore::with_max_attempts(outbox_test_support::conformance::store::MAX_ATTEMPTS)
        });
    }

    mod cursor {
        use super::*;
        outbox_test_support::cursor_conformance_tests!(|_case: &'static str| async {
            InMemoryCursorStore::new()
        });
    }

    mod compensation {
        use super::*;
        outbox_test_support::compensation_conformance_tests!(|_case: &'static str| async {
            InMemoryCompensationStore::new()
        });
    }
}

mod faults;
