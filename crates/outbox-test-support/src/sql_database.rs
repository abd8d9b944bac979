//! Throw-away PostgreSQL databases for end-to-end tests (feature `sea-orm`).

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

/// The variable holding the test server's admin URL (set by `cargo xtask test`).
pub const POSTGRES_URL_VAR: &str = "OUTBOX_TEST_POSTGRES_URL";

/// A new, empty database `{prefix}_{random}` on the test PostgreSQL server at
/// [`POSTGRES_URL_VAR`], and a connection to it. Panics (it is for tests) when the
/// variable is unset or the server refuses. Needs sea-orm's PostgreSQL driver, which
/// `outbox-sea-orm`'s `postgres` feature enables.
pub async fn fresh_postgres(prefix: &str) -> DatabaseConnection {
    let admin_url = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VAR} is not set: run the tests with `cargo xtask test`")
    });
    let admin = Database::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let (base, _) = admin_url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("{POSTGRES_URL_VAR} names no database"));
    Database::connect(format!("{base}/{name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {name}: {e}"))
}

/// The first column of the first row `sql` returns, as an integer (`COUNT(*)` and
/// the like). Panics on any error.
pub async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: no row"))
        .try_get_by_index::<i64>(0)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
