//! Database failures reach callers as port errors that say what to do.

use crate::{Backend, fresh_db_url};
use chrono::Utc;
use outbox_domain::{OutboxMessage, Payload};
use outbox_ports::MessageStore;
use outbox_sea_orm::{ConnectError, SeaOrmStore, StoreConfig};
use sea_orm::ConnectionTrait;
use std::time::Duration;

/// Every server connection of the store is killed, as a database restart would. The
/// calls that hit a dead connection fail as retryable, the pool reconnects, and nothing
/// committed is lost.
async fn lost_connections_are_retryable_and_recovered(backend: Backend) {
    let url = fresh_db_url(backend, "lost_conn").await;
    let name = url.rsplit_once('/').unwrap().1.to_owned();
    let store = SeaOrmStore::new(
        outbox_sea_orm::connect(&url).await.unwrap(),
        StoreConfig::default(),
    )
    .unwrap();
    let m = OutboxMessage::new(
        "orders",
        "order.created",
        "orders.events",
        "k",
        Payload::Json(serde_json::json!({})),
        Utc::now(),
    );
    store.enqueue(vec![m.clone()]).await.unwrap();

    let admin = outbox_sea_orm::connect(&backend_admin_url(backend))
        .await
        .unwrap();
    let kill = match backend {
        Backend::Postgres => format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ),
        _ => format!(
            "SELECT GROUP_CONCAT(CONCAT('KILL ', id) SEPARATOR ';') AS k \
             FROM information_schema.processlist WHERE db = '{name}'"
        ),
    };
    match backend {
        Backend::Postgres => {
            admin.execute_unprepared(&kill).await.unwrap();
        }
        _ => {
            let row = admin
                .query_one_raw(sea_orm::Statement::from_string(
                    admin.get_database_backend(),
                    kill,
                ))
                .await
                .unwrap()
                .unwrap();
            let kills: Option<String> = row.try_get("", "k").unwrap();
            for statement in kills
                .unwrap_or_default()
                .split(';')
                .filter(|s| !s.is_empty())
            {
                // A connection may have closed since the list was read.
                if let Err(e) = admin.execute_unprepared(statement).await {
                    assert!(e.to_string().contains("Unknown thread id"), "{e}");
                }
            }
        }
    }

    let mut failures = 0;
    let mut recovered = None;
    for _ in 0..20 {
        match store.get(m.id).await {
            Ok(found) => {
                recovered = found;
                break;
            }
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "a lost connection must be retryable: {e:?}"
                );
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(failures < 20, "the pool reconnects");
    assert_eq!(
        recovered.unwrap().message,
        m,
        "the committed message survived"
    );
}

fn backend_admin_url(backend: Backend) -> String {
    let var = match backend {
        Backend::Postgres => "OUTBOX_TEST_POSTGRES_URL",
        _ => "OUTBOX_TEST_MYSQL_URL",
    };
    std::env::var(var).unwrap()
}

#[tokio::test]
async fn postgres_lost_connections_are_retryable_and_recovered() {
    lost_connections_are_retryable_and_recovered(Backend::Postgres).await;
}

#[tokio::test]
async fn mysql_lost_connections_are_retryable_and_recovered() {
    lost_connections_are_retryable_and_recovered(Backend::MySql).await;
}

#[tokio::test]
async fn an_unreachable_server_is_reported_with_a_masked_url() {
    // Port 1 on loopback: nothing listens there.
    let err = outbox_sea_orm::connect("postgres://app:s3cret@127.0.0.1:1/app")
        .await
        .unwrap_err();
    match err {
        ConnectError::Unavailable { url, .. } => assert!(!url.contains("s3cret"), "{url}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_bad_configuration_is_rejected() {
    let db = outbox_sea_orm::connect("sqlite::memory:").await.unwrap();
    let err = SeaOrmStore::new(db, StoreConfig::default().with_max_attempts(0)).unwrap_err();
    assert!(
        matches!(err, outbox_ports::StoreError::InvalidInput(_)),
        "{err}"
    );
}
