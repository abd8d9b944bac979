//! The shared conformance suites, once per backend.

use crate::{Backend, fresh_db, fresh_store};
use outbox_sea_orm::{SeaOrmCompensationStore, SeaOrmCursorStore, SeaOrmInbox, StoreConfig};
use outbox_test_support::conformance::store::MAX_ATTEMPTS;

macro_rules! suites_on {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            mod store {
                use super::*;
                outbox_test_support::store_conformance_tests!(|case: &'static str| async move {
                    fresh_store(
                        $backend,
                        case,
                        StoreConfig::default().with_max_attempts(MAX_ATTEMPTS),
                    )
                    .await
                });
            }

            mod log {
                use super::*;
                outbox_test_support::log_conformance_tests!(|case: &'static str| async move {
                    fresh_store(
                        $backend,
                        case,
                        StoreConfig::default().with_max_attempts(MAX_ATTEMPTS),
                    )
                    .await
                });
            }

            mod inbox {
                use super::*;
                outbox_test_support::inbox_conformance_tests!(|case: &'static str| async move {
                    SeaOrmInbox::new(fresh_db($backend, case).await)
                });
            }

            mod cursor {
                use super::*;
                outbox_test_support::cursor_conformance_tests!(|case: &'static str| async move {
                    SeaOrmCursorStore::new(fresh_db($backend, case).await)
                });
            }

            mod compensation {
                use super::*;
                outbox_test_support::compensation_conformance_tests!(
                    |case: &'static str| async move {
                        SeaOrmCompensationStore::new(fresh_db($backend, case).await)
                    }
                );
            }
        }
    };
}

suites_on!(postgres, Backend::Postgres);
suites_on!(mysql, Backend::MySql);
suites_on!(sqlite_file, Backend::SqliteFile);
suites_on!(sqlite_memory, Backend::SqliteMemory);
