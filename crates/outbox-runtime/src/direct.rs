//! [`DirectPublisher`]: the `PublishOnly` strategy, publishing without an outbox.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outbox_domain::{BackoffPolicy, OutboxMessage};
use outbox_ports::{PublishError, PublishOutcome, Publisher};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tracing::warn;

/// Publishes messages at once, in process, with bounded retries, and tells the caller
/// the outcome: the `PublishOnly` persistence strategy.
///
/// **No transactional guarantee.** Nothing is stored: a crash before the broker
/// acknowledges loses the message, and a message published after a transaction that
/// later rolls back (or before one that never commits) leaves the broker and the
/// database disagreeing. Publish after your commit (`RoutedOutbox::write_in` hands the
/// `PublishOnly` messages back for that) and act on the outcome. For anything that must
/// not be lost, use `DbAndPublish`.
///
/// Each call makes at most `policy.max_attempts()` attempts per message: transient
/// failures are retried after the policy's delay (or the broker's `retry_after`, if
/// longer); a permanent failure ends that message's attempts at once. The messages of
/// a call are retried together, so a call takes at most the sum of the delays plus the
/// publisher's own time per attempt.
pub struct DirectPublisher {
    publisher: Arc<dyn Publisher>,
    policy: BackoffPolicy,
    rng: Mutex<SmallRng>,
}

impl std::fmt::Debug for DirectPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPublisher")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl DirectPublisher {
    /// Publishes through `publisher`, retrying as `policy` says.
    pub fn new(publisher: Arc<dyn Publisher>, policy: BackoffPolicy) -> Self {
        Self {
            publisher,
            policy,
            rng: Mutex::new(SmallRng::from_os_rng()),
        }
    }

    /// Publishes `messages`, returning one outcome per message, in order: `Ok` once the
    /// broker acknowledged it, else the last failure.
    pub async fn publish(&self, messages: &[OutboxMessage]) -> Vec<PublishOutcome> {
        let mut outcomes: Vec<PublishOutcome> =
            vec![Err(PublishError::transient("not attempted")); messages.len()];
        let mut open: Vec<usize> = (0..messages.len()).collect();
        for attempt in 1..=self.policy.max_attempts() {
            if open.is_empty() {
                break;
            }
            let batch: Vec<OutboxMessage> = open.iter().map(|&i| messages[i].clone()).collect();
            let results = self.publisher.publish(&batch).await;
            let mut wait = Duration::ZERO;
            let mut still_open = Vec::new();
            for (n, &i) in open.iter().enumerate() {
                let result = results.get(n).cloned().unwrap_or_else(|| {
                    Err(PublishError::transient(
                        "the publisher returned no outcome for this message",
                    ))
                });
                if let Err(err) = &result
                    && err.is_transient()
                {
                    wait = wait.max(err.retry_after.unwrap_or_default());
                    still_open.push(i);
                }
                outcomes[i] = result;
            }
            open = still_open;
            if open.is_empty() || attempt == self.policy.max_attempts() {
                break;
            }
            let delay = {
                let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
                self.policy.delay(attempt, &mut *rng)
            };
            warn!(
                failed = open.len(),
                attempt, "publish-only messages failed; retrying"
            );
            tokio::time::sleep(delay.max(wait)).await;
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use outbox_domain::Payload;
    use outbox_ports::PublishErrorKind;
    use outbox_test_support::{FaultyPublisher, InMemoryPublisher};

    fn message(key: &str) -> OutboxMessage {
        OutboxMessage::new(
            "orders",
            "order.created",
            "orders.events",
            key,
            Payload::Json(serde_json::json!({})),
            Utc::now(),
        )
    }

    fn policy(attempts: u32) -> BackoffPolicy {
        BackoffPolicy::new(
            Duration::from_millis(100),
            2.0,
            Duration::from_secs(1),
            attempts,
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_published() {
        let broker = InMemoryPublisher::new();
        let faulty = FaultyPublisher::new(broker.clone());
        faulty.fail_times(2, PublishErrorKind::Transient);
        let direct = DirectPublisher::new(Arc::new(faulty.clone()), policy(3));
        let outcomes = direct.publish(&[message("a"), message("b")]).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(broker.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_the_last_failure_is_returned() {
        let broker = InMemoryPublisher::new();
        let faulty = FaultyPublisher::new(broker.clone());
        faulty.fail_always(PublishErrorKind::Transient);
        let direct = DirectPublisher::new(Arc::new(faulty.clone()), policy(4));
        let started = tokio::time::Instant::now();
        let outcomes = direct.publish(&[message("a")]).await;
        assert!(outcomes[0].as_ref().is_err_and(PublishError::is_transient));
        assert_eq!(faulty.messages_seen(), 4, "one call per attempt");
        // 100 + 200 + 400 ms of backoff between the four attempts.
        assert_eq!(started.elapsed(), Duration::from_millis(700));
        assert!(broker.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_not_retried() {
        let faulty = FaultyPublisher::new(InMemoryPublisher::new());
        faulty.fail_always(PublishErrorKind::Permanent);
        let direct = DirectPublisher::new(Arc::new(faulty.clone()), policy(5));
        let outcomes = direct.publish(&[message("a")]).await;
        assert!(outcomes[0].as_ref().is_err_and(|e| !e.is_transient()));
        assert_eq!(faulty.messages_seen(), 1);
    }
}
