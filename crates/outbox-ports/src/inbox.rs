use crate::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::MessageId;

/// Whether an inbox saw a message for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InboxOutcome {
    /// First delivery: run the business effect.
    First,
    /// Seen before by this consumer group: skip it.
    Duplicate,
}

/// The consumer side's record of processed message ids, per consumer group.
///
/// For an exactly-once *effect*, record the id in the same transaction as the business
/// effect; SQL adapters offer a `process_once` that takes the caller's transaction. This
/// port is the non-transactional core that the conformance suite checks.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Inbox: Send + Sync {
    /// Records `message_id` for `consumer_group`, reporting whether it was new.
    async fn record(
        &self,
        consumer_group: &str,
        message_id: MessageId,
        now: DateTime<Utc>,
    ) -> StoreResult<InboxOutcome>;
}
