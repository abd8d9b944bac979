//! A consumer handler and messages for the broker adapters' runner tests.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use outbox_domain::{OutboxMessage, Payload};
use outbox_ports::{HandlerError, IncomingMessage, MessageHandler};

use crate::MemoryTx;

/// A [`MessageHandler`] on [`MemoryTx`]: stages each payload, as text, as an effect
/// (see [`InMemoryInbox::effects`](crate::InMemoryInbox::effects)), and rejects a
/// payload that contains `poison` with the reason "poison pill". Optionally sleeps
/// first, so that rebalances and hand-overs land while messages are being handled.
#[derive(Debug, Clone, Default)]
pub struct TextEffects {
    delay: Duration,
}

impl TextEffects {
    /// Handles at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sleeps `delay` before handling each message.
    pub fn slow(delay: Duration) -> Self {
        Self { delay }
    }
}

#[async_trait]
impl MessageHandler<MemoryTx> for TextEffects {
    async fn handle(&self, tx: &mut MemoryTx, m: &IncomingMessage) -> Result<(), HandlerError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let body = String::from_utf8_lossy(&m.payload).into_owned();
        if body.contains("poison") {
            return Err(HandlerError::reject("poison pill"));
        }
        tx.push_effect(body);
        Ok(())
    }
}

/// A `text/plain` message of the `orders` service (event `order.changed`) with `body`
/// as payload, for [`TextEffects`].
pub fn text_message(topic: &str, key: &str, body: &str) -> OutboxMessage {
    OutboxMessage::new(
        "orders",
        "order.changed",
        topic,
        key,
        Payload::Bytes {
            content_type: "text/plain".into(),
            data: body.as_bytes().to_vec(),
        },
        Utc::now(),
    )
}
