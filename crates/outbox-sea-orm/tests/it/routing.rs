//! Service-level routing and persistence strategies on every database: per-service
//! tables with their own relays (a failing service does not hold back another), the
//! shared-table compatibility mode, the three strategies, and routing errors that write
//! nothing.

use crate::Backend;
use crate::enqueue::on_every_backend;
use outbox_domain::{BackoffPolicy, MessageStatus, Payload, PersistenceStrategy, RouteRegistry};
use outbox_ports::{ListFilter, MessageStore, PublishErrorKind};
use outbox_runtime::{CancellationToken, DirectPublisher, Relay, RelayConfig};
use outbox_sea_orm::{RoutedOutbox, RoutedWriteError, StoreConfig};
use outbox_test_support::{FaultyPublisher, InMemoryPublisher};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUTES: &str = r#"
    [[services]]
    name = "orders"
    table = "orders_outbox"
    topic = "orders.events"
    consumer_group = "billing"

    [[services]]
    name = "payments"
    table = "payments_outbox"
    topic = "payments.events"
    consumer_group = "ledger"

    # Compatibility mode: two small services share the default table.
    [[services]]
    name = "mail"
    table = "outbox_messages"
    topic = "mail.events"
    consumer_group = "mailers"

    [[services]]
    name = "audit"
    table = "outbox_messages"
    topic = "audit.events"
    consumer_group = "auditors"
    strategy = "db_only"

    [[events]]
    event_type = "order.created"
    service = "orders"

    [[events]]
    event_type = "payment.captured"
    service = "payments"

    [[events]]
    event_type = "mail.sent"
    service = "mail"

    [[events]]
    event_type = "login.failed"
    service = "audit"

    [[events]]
    event_type = "order.viewed"
    service = "orders"
    strategy = "publish_only"
"#;

async fn outbox(backend: Backend, case: &str) -> (DatabaseConnection, RoutedOutbox) {
    let db = crate::fresh_db(backend, case).await;
    let registry = RouteRegistry::from_toml(ROUTES).unwrap();
    let outbox = RoutedOutbox::new(db.clone(), registry, StoreConfig::default()).unwrap();
    outbox.create_tables().await.unwrap();
    (db, outbox)
}

fn json(n: usize) -> Payload {
    Payload::Json(serde_json::json!({ "n": n }))
}

async fn count(db: &DatabaseConnection, table: &str) -> i64 {
    db.query_one_raw(Statement::from_string(
        db.get_database_backend(),
        format!("SELECT COUNT(*) FROM {table}"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<i64>(0)
    .unwrap()
}

fn relay(
    store: &outbox_sea_orm::SeaOrmStore,
    publisher: Arc<dyn outbox_ports::Publisher>,
    id: &str,
) -> Relay {
    let mut config = RelayConfig::default();
    config.relay_id = id.to_owned();
    config.poll_interval = Duration::from_millis(20);
    config.backoff = BackoffPolicy::new(
        Duration::from_millis(50),
        2.0,
        Duration::from_millis(200),
        1_000,
    )
    .unwrap();
    Relay::new(Arc::new(store.clone()), publisher, config).unwrap()
}

/// Each service's messages land in its own table; each table has its own relay. The
/// orders relay's broker fails every publish, and the payments relay delivers all of
/// its messages meanwhile. The two services sharing the default table are relayed by
/// one relay, each row with its service.
async fn per_service_tables_are_isolated(backend: Backend) {
    let (db, outbox) = outbox(backend, "isolated").await;
    let txn = db.begin().await.unwrap();
    let mut messages = Vec::new();
    for n in 0..20 {
        messages.push(
            outbox
                .message("order.created", format!("o{}", n % 4), json(n))
                .unwrap(),
        );
        messages.push(
            outbox
                .message("payment.captured", format!("p{}", n % 4), json(n))
                .unwrap(),
        );
        messages.push(
            outbox
                .message("mail.sent", format!("m{}", n % 4), json(n))
                .unwrap(),
        );
    }
    let written = outbox.write_in(&txn, messages, None).await.unwrap();
    assert_eq!(written.enqueued.len(), 60);
    txn.commit().await.unwrap();
    assert_eq!(count(&db, "orders_outbox").await, 20);
    assert_eq!(count(&db, "payments_outbox").await, 20);
    assert_eq!(count(&db, "outbox_messages").await, 20);

    let failing = FaultyPublisher::new(InMemoryPublisher::new());
    failing.fail_always(PublishErrorKind::Transient);
    let payments_broker = InMemoryPublisher::new();
    let shared_broker = InMemoryPublisher::new();
    let shutdown = CancellationToken::new();
    let relays = [
        relay(
            outbox.store_for("orders").unwrap(),
            Arc::new(failing.clone()),
            "orders",
        )
        .spawn(shutdown.clone()),
        relay(
            outbox.store_for("payments").unwrap(),
            Arc::new(payments_broker.clone()),
            "payments",
        )
        .spawn(shutdown.clone()),
        relay(
            outbox.store_for("mail").unwrap(),
            Arc::new(shared_broker.clone()),
            "shared",
        )
        .spawn(shutdown.clone()),
    ];
    let started = Instant::now();
    while payments_broker.len() < 20 || shared_broker.len() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "payments {} / 20, shared table {} / 20",
            payments_broker.len(),
            shared_broker.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failing.messages_seen() > 0, "the orders relay kept trying");
    for handle in relays {
        assert!(handle.shutdown().await);
    }
    let orders = outbox.store_for("orders").unwrap().stats().await.unwrap();
    assert_eq!(orders.published, 0);
    assert_eq!(orders.unfinished(), 20, "{orders:?}");
    let payments = outbox.store_for("payments").unwrap().stats().await.unwrap();
    assert_eq!((payments.published, payments.unfinished()), (20, 0));
    assert!(
        payments_broker
            .messages()
            .iter()
            .all(|m| m.service == "payments" && m.topic == "payments.events")
    );
    assert!(shared_broker.messages().iter().all(|m| m.service == "mail"));
}

/// An unknown event type, or a message whose service or topic is not its route's,
/// fails the call before any SQL: no table gets a row, and the caller's transaction
/// still commits its business row.
async fn routing_errors_write_nothing(backend: Backend) {
    let (db, outbox) = outbox(backend, "route_errors").await;
    db.execute_unprepared("CREATE TABLE business_rows (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    // Written before (for the duplicate below).
    let payment = outbox.message("payment.captured", "p2", json(3)).unwrap();
    outbox
        .write_in(&db, vec![payment.clone()], None)
        .await
        .unwrap();
    let txn = db.begin().await.unwrap();
    let good = outbox.message("order.created", "o1", json(1)).unwrap();
    let mut unknown = good.clone();
    unknown.id = outbox_domain::MessageId::new_v7(chrono::Utc::now());
    unknown.event_type = "order.exploded".into();
    let err = outbox
        .write_in(&txn, vec![good.clone(), unknown], None)
        .await
        .unwrap_err();
    assert!(matches!(err, RoutedWriteError::Route { .. }), "{err}");
    assert!(err.to_string().contains("order.exploded"), "{err}");

    let mut elsewhere = outbox.message("payment.captured", "p1", json(2)).unwrap();
    elsewhere.topic = "orders.events".into();
    let err = outbox
        .write_in(&txn, vec![good.clone(), elsewhere], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RoutedWriteError::Mismatch { field: "topic", .. }),
        "{err}"
    );

    // One id for two messages of different tables, or a publish-only message over the
    // limits: refused before any SQL, like a stored one.
    let mut twin = outbox.message("payment.captured", "p1", json(4)).unwrap();
    twin.id = good.id;
    let err = outbox
        .write_in(&txn, vec![good.clone(), twin], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RoutedWriteError::Store(outbox_ports::StoreError::DuplicateMessage(id)) if id == good.id),
        "{err}"
    );
    let huge = outbox
        .message(
            "order.viewed",
            "o1",
            Payload::Bytes {
                content_type: "application/octet-stream".into(),
                data: vec![0; 2 * outbox_domain::validation::DEFAULT_MAX_PAYLOAD_BYTES],
            },
        )
        .unwrap();
    let err = outbox
        .write_in(&txn, vec![good.clone(), huge], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RoutedWriteError::Store(outbox_ports::StoreError::InvalidMessage { .. })
        ),
        "{err}"
    );

    // A store error in the second table (a duplicate id, found by the database) rolls
    // back the rows already written to the first.
    let err = outbox
        .write_in(&txn, vec![good.clone(), payment.clone()], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RoutedWriteError::Store(outbox_ports::StoreError::DuplicateMessage(id)) if id == payment.id),
        "{err}"
    );

    txn.execute_unprepared("INSERT INTO business_rows (id) VALUES (1)")
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(count(&db, "business_rows").await, 1);
    for table in ["orders_outbox", "outbox_messages"] {
        assert_eq!(count(&db, table).await, 0, "{table}");
    }
    assert_eq!(
        count(&db, "payments_outbox").await,
        1,
        "only the payment written before"
    );
}

/// `DbAndPublish` rows are relayed; `DbOnly` rows (the audit service's default, or any
/// call's choice) are recorded and never claimed; `PublishOnly` messages (a route's
/// override, or a call's) are not stored, and `DirectPublisher` publishes them after
/// the commit with bounded retries.
async fn the_three_strategies(backend: Backend) {
    let (db, outbox) = outbox(backend, "strategies").await;
    let txn = db.begin().await.unwrap();
    let relayed = outbox.message("order.created", "o1", json(1)).unwrap();
    let audit = outbox.message("login.failed", "u1", json(2)).unwrap();
    let viewed = outbox.message("order.viewed", "o1", json(3)).unwrap();
    let written = outbox
        .write_in(
            &txn,
            vec![relayed.clone(), audit.clone(), viewed.clone()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(written.enqueued, vec![relayed.id]);
    assert_eq!(written.recorded, vec![audit.id]);
    assert_eq!(written.publish_only, vec![viewed.clone()]);
    // The call's choice overrides the routes.
    let forced = outbox.message("order.created", "o2", json(4)).unwrap();
    let written = outbox
        .write_in(
            &txn,
            vec![forced.clone()],
            Some(PersistenceStrategy::DbOnly),
        )
        .await
        .unwrap();
    assert_eq!(written.recorded, vec![forced.id]);
    txn.commit().await.unwrap();

    let broker = InMemoryPublisher::new();
    let direct = DirectPublisher::new(
        Arc::new(broker.clone()),
        BackoffPolicy::new(Duration::from_millis(10), 2.0, Duration::from_millis(40), 3).unwrap(),
    );
    assert!(direct.publish(std::slice::from_ref(&viewed)).await[0].is_ok());
    assert_eq!(broker.messages(), vec![viewed.clone()]);
    let orders = outbox.store_for("orders").unwrap();
    assert!(
        orders.get(viewed.id).await.unwrap().is_none(),
        "publish-only is not stored"
    );

    // The relays publish only the relayed message.
    let relay_broker = InMemoryPublisher::new();
    for service in ["orders", "audit"] {
        let relay = relay(
            outbox.store_for(service).unwrap(),
            Arc::new(relay_broker.clone()),
            service,
        );
        while relay.run_once().await.unwrap().claimed > 0 {}
    }
    assert_eq!(relay_broker.messages(), vec![relayed.clone()]);
    for id in [audit.id, forced.id] {
        let store = if id == audit.id {
            outbox.store_for("audit").unwrap()
        } else {
            orders
        };
        let stored = store.get(id).await.unwrap().unwrap();
        assert_eq!(stored.delivery.status, MessageStatus::Recorded);
    }
    let recorded = outbox
        .store_for("audit")
        .unwrap()
        .list(&ListFilter::status(MessageStatus::Recorded, 10))
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(orders.stats().await.unwrap().recorded, 1);

    // A publish-only message whose broker keeps failing: bounded attempts, the failure
    // returned to the caller, nothing stored.
    let failing = FaultyPublisher::new(InMemoryPublisher::new());
    failing.fail_always(PublishErrorKind::Transient);
    let direct = DirectPublisher::new(
        Arc::new(failing.clone()),
        BackoffPolicy::new(Duration::from_millis(10), 2.0, Duration::from_millis(40), 3).unwrap(),
    );
    let again = outbox.message("order.viewed", "o9", json(5)).unwrap();
    assert!(direct.publish(std::slice::from_ref(&again)).await[0].is_err());
    assert_eq!(failing.messages_seen(), 3);
    assert!(orders.get(again.id).await.unwrap().is_none());
}

on_every_backend!(
    per_service_tables_are_isolated,
    routing_errors_write_nothing,
    the_three_strategies
);
