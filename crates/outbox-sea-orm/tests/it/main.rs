//! The sea-orm adapters against real PostgreSQL, MariaDB/MySQL and SQLite.
//!
//! Every test gets a fresh database (server backends) or file, so tests run in
//! parallel. The server URLs come from `OUTBOX_TEST_POSTGRES_URL` and
//! `OUTBOX_TEST_MYSQL_URL`, which `cargo xtask test` sets after starting the servers;
//! a test whose backend is not configured fails and says how to start it.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

mod compensation;
mod concurrency;
mod conformance;
mod consumer;
mod enqueue;
mod errors;
mod inbox;
mod log;
mod migrate;
mod plan;
mod retention;
mod routing;
mod wake;

use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use std::sync::atomic::{AtomicU32, Ordering};

/// A database backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, from `OUTBOX_TEST_POSTGRES_URL`.
    Postgres,
    /// MariaDB or MySQL, from `OUTBOX_TEST_MYSQL_URL`.
    MySql,
    /// A SQLite file in the temp dir.
    SqliteFile,
    /// An in-memory SQLite database.
    SqliteMemory,
}

impl Backend {
    /// Every backend, for tests that loop over them.
    pub const ALL: [Backend; 4] = [
        Backend::Postgres,
        Backend::MySql,
        Backend::SqliteFile,
        Backend::SqliteMemory,
    ];

    fn admin_url(self) -> Option<String> {
        let var = match self {
            Backend::Postgres => "OUTBOX_TEST_POSTGRES_URL",
            Backend::MySql => "OUTBOX_TEST_MYSQL_URL",
            _ => return None,
        };
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Some(url),
            _ => panic!(
                "{var} is not set: run the tests with `cargo xtask test`, which starts \
                 PostgreSQL and MariaDB on 127.0.0.1, or start them with \
                 `cargo xtask backends start` and `source target/xtask-backends/dev/env`"
            ),
        }
    }
}

/// A fresh, empty database of `backend` with the outbox schema, named after `case`.
pub async fn fresh_db(backend: Backend, case: &str) -> DatabaseConnection {
    if backend == Backend::SqliteMemory {
        // Each in-memory pool is a database of its own.
        let db = outbox_sea_orm::connect("sqlite::memory:").await.unwrap();
        migrate(&db).await;
        return db;
    }
    let url = fresh_db_url(backend, case).await;
    outbox_sea_orm::connect(&url).await.unwrap()
}

async fn migrate(db: &DatabaseConnection) {
    SeaOrmStore::new(db.clone(), StoreConfig::default())
        .unwrap()
        .create_tables()
        .await
        .unwrap();
}

/// The URL of a fresh, empty database of `backend` with the outbox schema, for tests
/// that open several pools on it (one per simulated host).
pub async fn fresh_db_url(backend: Backend, case: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "it_{}_{}_{}",
        case.chars().take(30).collect::<String>(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let url = match backend {
        Backend::SqliteMemory => unreachable!("in-memory SQLite has no shareable URL"),
        Backend::SqliteFile => {
            let dir = std::env::temp_dir().join("outbox-sea-orm-it");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}.db"));
            let _ = std::fs::remove_file(&path);
            format!("sqlite:{}", path.display())
        }
        Backend::Postgres | Backend::MySql => {
            let admin_url = backend.admin_url().unwrap();
            let admin = outbox_sea_orm::connect(&admin_url).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await.unwrap();
            let base = admin_url.rsplit_once('/').unwrap().0;
            format!("{base}/{name}")
        }
    };
    let db = outbox_sea_orm::connect(&url).await.unwrap();
    migrate(&db).await;
    db.close().await.unwrap();
    url
}

/// A store on the default table of the database at `url`, with a pool of its own (as
/// another process would have).
pub async fn store_at(url: &str) -> SeaOrmStore {
    let db = outbox_sea_orm::connect(url).await.unwrap();
    SeaOrmStore::new(db, StoreConfig::default()).unwrap()
}

/// An `orders` message of `key` whose payload records `n`, written now.
pub fn order_message(key: &str, n: usize) -> outbox_domain::OutboxMessage {
    outbox_domain::OutboxMessage::new(
        "orders",
        "order.changed",
        "orders.events",
        key,
        outbox_domain::Payload::Json(serde_json::json!({ "n": n })),
        chrono::Utc::now(),
    )
}

/// A store on a fresh database.
pub async fn fresh_store(backend: Backend, case: &str, config: StoreConfig) -> SeaOrmStore {
    SeaOrmStore::new(fresh_db(backend, case).await, config).unwrap()
}
