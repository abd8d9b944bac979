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
        self.wait_for(wait, |log| {
            let end = log.len().min(offset.saturating_add(max));
            (end > offset).then(|| log[offset..end].to_vec())
        })
        .await
        .unwrap_or_default()
    }

    /// Evaluates `ready` on the log now and after every append, until it returns
    /// `Some` or `wait` runs out (then `None`).
    async fn wait_for<T>(
        &self,
        wait: Duration,
        ready: impl Fn(&[OutboxMessage]) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register before looking, so an append between the look and the wait
            // still wakes us.
            let appended = self.appended.notified();
            if let Some(found) = ready(&self.lock()) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return None;
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
        let on_topic = |log: &[OutboxMessage]| -> Vec<ReceivedMessage> {
            log.iter()
                .filter(|m| m.topic == topic)
                .map(ReceivedMessage::from_message)
                .collect()
        };
        match self
            .wait_for(timeout, |log| {
                Some(on_topic(log)).filter(|got| got.len() >= count)
            })
            .await
        {
            Some(got) => got,
            // Timed out: return what did arrive, so the caller's assertion shows it.
            None => on_topic(&self.lock()),
        }
    }
}
