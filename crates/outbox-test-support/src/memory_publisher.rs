use crate::conformance::{PublishedReader, ReceivedMessage};
use async_trait::async_trait;
use outbox_domain::OutboxMessage;
use outbox_ports::{PublishError, PublishOutcome, Publisher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// A publisher that is its own broker: it appends every published message to one
/// in-memory log that consumers read by offset. Clones share the log.
#[derive(Debug, Clone, Default)]
pub struct InMemoryPublisher {
    log: Arc<Mutex<Vec<OutboxMessage>>>,
    appended: Arc<Notify>,
}

impl InMemoryPublisher {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<OutboxMessage>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Everything published so far, in publish order.
    pub fn messages(&self) -> Vec<OutboxMessage> {
        self.lock().clone()
    }

    /// How many messages were published.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was published.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Up to `max` messages from `offset` on, waiting up to `wait` for at least one.
    pub async fn read_from(&self, offset: usize, max: usize, wait: Duration) -> Vec<OutboxMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.appended.notified();
            {
                let log = self.lock();
                if log.len() > offset {
                    let end = log.len().min(offset.saturating_add(max));
                    return log[offset..end].to_vec();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }
}

#[async_trait]
impl Publisher for InMemoryPublisher {
    async fn publish(&self, batch: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let outcomes = batch
            .iter()
            .map(|m| {
                if m.topic.is_empty() {
                    Err(PublishError::permanent("topic name must not be empty"))
                } else {
                    Ok(())
                }
            })
            .collect::<Vec<_>>();
        {
            let mut log = self.lock();
            for (m, outcome) in batch.iter().zip(&outcomes) {
                if outcome.is_ok() {
                    log.push(m.clone());
                }
            }
        }
        self.appended.notify_waiters();
        outcomes
    }

    async fn flush(&self, _timeout: Duration) -> Result<(), PublishError> {
        Ok(())
    }
}

#[async_trait]
impl PublishedReader for InMemoryPublisher {
    async fn read(&self, topic: &str, count: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.appended.notified();
            let got: Vec<ReceivedMessage> = self
                .lock()
                .iter()
                .filter(|m| m.topic == topic)
                .map(ReceivedMessage::from_message)
                .collect();
            if got.len() >= count || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return got;
            }
        }
    }
}
