//! OpenTelemetry trace propagation for outbox-rs.
//!
//! With an OpenTelemetry layer in the `tracing` subscriber (`tracing-opentelemetry`):
//!
//! - at enqueue, [`current_trace_context`] is the W3C context of the current span;
//!   `RoutedOutbox::with_trace_context(outbox_otel::current_trace_context)` stamps every
//!   message with it, and relays send it as the `traceparent` / `tracestate` headers
//!   (Kafka) or properties (Pulsar);
//! - on the consumer side, `ConsumerRunner::with_span(outbox_otel::consume_span)`
//!   handles each delivery in a span whose parent is that remote context.
//!
//! One trace then runs from the request that wrote the message to the handler that
//! consumed it, whichever broker carried it.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use outbox_domain::TraceContext;
use outbox_ports::{IncomingMessage, header};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C propagator (`traceparent`, `tracestate`).
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The W3C trace context of the current `tracing` span, or `None` when it belongs to
/// no sampled OpenTelemetry trace (no OpenTelemetry layer, or outside any span).
pub fn current_trace_context() -> Option<TraceContext> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    propagator().inject_context(&context, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.traceparent?,
        tracestate: carrier.tracestate.filter(|s| !s.is_empty()),
    })
}

/// The span a consumer handles `delivery` in: `outbox_runtime::consume_span`'s fields,
/// with the remote parent the message's `traceparent` / `tracestate` headers name (a
/// new trace when they are missing or malformed).
pub fn consume_span(delivery: &IncomingMessage, group: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "outbox.consume",
        message_id = delivery.headers.get(header::MESSAGE_ID).map(String::as_str),
        group,
        topic = %delivery.topic,
        partition = delivery.partition,
        offset = delivery.offset,
    );
    let parent = propagator().extract(&Headers(delivery));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

#[derive(Default)]
struct Carrier {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            header::TRACEPARENT => self.traceparent = Some(value),
            header::TRACESTATE => self.tracestate = Some(value),
            _ => {}
        }
    }
}

struct Headers<'a>(&'a IncomingMessage);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.headers.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.keys().map(String::as_str).collect()
    }
}
