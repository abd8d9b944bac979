//! [`PulsarDeadLetterTopic`]: parks a subscription's failed messages on a topic.

use async_trait::async_trait;
use bytes::Bytes;
use outbox_ports::{ConsumeError, DeadLetter, DeadLetterSink};

use crate::config::{PulsarConfig, PulsarConfigError};
use crate::publisher::{Outgoing, PulsarPublisher};

/// A [`DeadLetterSink`] that publishes parked messages to a dead-letter topic: same
/// key and payload, the original properties plus the `outbox-dead-letter-*` ones
/// (reason, group, attempts, source position, time).
///
/// Pulsar's convention names it `<topic>-<subscription>-DLQ`; see
/// [`PulsarDeadLetterTopic::conventional_name`]. Parking twice (after a crash between
/// parking and the acknowledgement) publishes twice; the copies carry the same
/// `outbox-message-id`, so a consumer of the dead-letter topic with an inbox sees one.
#[derive(Debug)]
pub struct PulsarDeadLetterTopic {
    publisher: PulsarPublisher,
    topic: String,
}

impl PulsarDeadLetterTopic {
    /// Parks on `topic` (created on first use if the broker auto-creates topics).
    pub fn new(config: PulsarConfig, topic: impl Into<String>) -> Result<Self, PulsarConfigError> {
        Ok(Self {
            publisher: PulsarPublisher::new(config)?,
            topic: topic.into(),
        })
    }

    /// `<topic>-<subscription>-DLQ`, the name Pulsar's own clients use.
    pub fn conventional_name(topic: &str, subscription: &str) -> String {
        format!("{topic}-{subscription}-DLQ")
    }

    /// Closes the producer and its connection.
    pub async fn close(&self) {
        self.publisher.close().await;
    }
}

#[async_trait]
impl DeadLetterSink for PulsarDeadLetterTopic {
    async fn park(&self, letter: &DeadLetter) -> Result<(), ConsumeError> {
        let message = &letter.message;
        let outgoing = Outgoing {
            topic: &self.topic,
            key: message.key.as_deref(),
            properties: letter.wire_headers(),
            payload: Bytes::from(message.payload.clone()),
            event_time: None,
        };
        let send_timeout = self.publisher.max_publish_time();
        tokio::time::timeout(send_timeout, self.publisher.send(outgoing))
            .await
            .map_err(|_| {
                ConsumeError::new(
                    "park",
                    format!("pulsar: not acknowledged within {send_timeout:?}"),
                )
            })?
            .map_err(|e| ConsumeError::new("park", format!("pulsar: {e}")))
    }
}
