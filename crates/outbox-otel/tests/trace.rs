//! One trace from the request that wrote a message to the handler that consumed it:
//! enqueue inside a request span (the routed outbox stamps the message), a relay
//! publishes it (the context travels as the `traceparent` header), and the consumer
//! runner handles it in a span whose parent is the request's.

#![allow(clippy::unwrap_used)] // a test should panic on an unexpected error

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::trace::{TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use outbox_domain::{Payload, RouteRegistry};
use outbox_ports::{HandlerError, IncomingMessage, MessageHandler};
use outbox_runtime::{CancellationToken, ConsumerConfig, ConsumerRunner, Relay, RelayConfig};
use outbox_sea_orm::{RoutedOutbox, StoreConfig};
use outbox_test_support::{
    InMemoryDeadLetters, InMemoryInbox, InMemoryPublisher, InMemorySource, MemoryTx,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

const ROUTES: &str = r#"
[[services]]
name = "orders"
table = "outbox_messages"
topic = "orders.events"
consumer_group = "billing"

[[events]]
event_type = "order.created"
service = "orders"
"#;

/// Records the trace id of the span it handles each message in.
#[derive(Default)]
struct TraceRecorder(Mutex<Vec<TraceId>>);

#[async_trait]
impl MessageHandler<MemoryTx> for TraceRecorder {
    async fn handle(&self, _tx: &mut MemoryTx, _m: &IncomingMessage) -> Result<(), HandlerError> {
        let context = tracing::Span::current().context();
        self.0
            .lock()
            .unwrap()
            .push(context.span().span_context().trace_id());
        Ok(())
    }
}

#[test]
fn one_trace_runs_from_the_request_to_the_handler() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-otel-test")));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (request_trace, request_span, handled) =
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let db = outbox_sea_orm::connect("sqlite::memory:").await.unwrap();
                let outbox = RoutedOutbox::new(
                    db.clone(),
                    RouteRegistry::from_toml(ROUTES).unwrap(),
                    StoreConfig::default(),
                )
                .unwrap()
                .with_trace_context(outbox_otel::current_trace_context);
                outbox.create_tables().await.unwrap();

                // The request: its span is current when the message is built.
                let request = tracing::info_span!("http.request");
                let span_context = request.context().span().span_context().clone();
                let message = request.in_scope(|| {
                    outbox
                        .message(
                            "order.created",
                            "order-1",
                            Payload::Json(serde_json::json!({})),
                        )
                        .unwrap()
                });
                drop(request);
                let stamped = message.trace_context.clone().expect("stamped at enqueue");
                assert!(
                    stamped
                        .traceparent
                        .contains(&span_context.trace_id().to_string())
                );
                outbox.write_in(&db, vec![message], None).await.unwrap();
                // Outside the request, no context is stamped.
                let bare = outbox
                    .message(
                        "order.created",
                        "order-2",
                        Payload::Json(serde_json::json!({})),
                    )
                    .unwrap();
                assert_eq!(bare.trace_context, None);

                let broker = InMemoryPublisher::new();
                let relay = Relay::new(
                    Arc::new(outbox.store_for("orders").unwrap().clone()),
                    Arc::new(broker.clone()),
                    RelayConfig::default(),
                )
                .unwrap();
                assert_eq!(relay.run_once().await.unwrap().published, 1);

                let handler = Arc::new(TraceRecorder::default());
                let runner = ConsumerRunner::new(
                    Arc::new(InMemorySource::new(broker.clone(), "orders.events", 1)),
                    Arc::new(InMemoryInbox::new()),
                    handler.clone(),
                    Arc::new(InMemoryDeadLetters::new()),
                    ConsumerConfig::new("billing"),
                )
                .unwrap()
                .with_span(outbox_otel::consume_span);
                let shutdown = CancellationToken::new();
                let task = tokio::spawn(runner.run(shutdown.clone()));
                tokio::time::timeout(Duration::from_secs(10), async {
                    while handler.0.lock().unwrap().is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .unwrap();
                shutdown.cancel();
                task.await.unwrap().unwrap();
                let handled = handler.0.lock().unwrap().clone();
                (span_context.trace_id(), span_context.span_id(), handled)
            })
        });
    assert_eq!(
        handled,
        vec![request_trace],
        "the handler runs in the request's trace"
    );

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let consume = spans
        .iter()
        .find(|s| s.name == "outbox.consume")
        .expect("the consumer's span is exported");
    assert_eq!(consume.span_context.trace_id(), request_trace);
    assert_eq!(
        consume.parent_span_id, request_span,
        "its parent is the request span"
    );
    assert!(
        consume
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "message_id"),
        "{:?}",
        consume.attributes
    );
}
