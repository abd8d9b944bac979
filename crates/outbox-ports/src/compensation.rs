use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_domain::{CompensationItem, CompensationStatus, NewCompensationItem};
use std::time::Duration;
use uuid::Uuid;

/// Which items [`CompensationStore::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompensationFilter {
    /// Only items in this status.
    pub status: Option<CompensationStatus>,
    /// Only items of this batch.
    pub batch_id: Option<String>,
    /// At most this many (0 means no items).
    pub limit: usize,
}

/// Rejects a `max_retries` no store can keep (zero, or beyond `i32::MAX`, the SQL
/// column's range). Every adapter's [`CompensationStore::record`] calls this first.
pub fn check_max_retries(max_retries: u32) -> StoreResult<()> {
    if max_retries == 0 || i32::try_from(max_retries).is_err() {
        return Err(StoreError::InvalidInput(format!(
            "max_retries must be between 1 and {}, got {max_retries}",
            i32::MAX
        )));
    }
    Ok(())
}

/// The reservation of [`CompensationStore::claim_due`] as a time span, or
/// [`StoreError::InvalidInput`] if it is too long to add to a time.
pub fn reservation(reserve_for: Duration) -> StoreResult<chrono::Duration> {
    chrono::Duration::from_std(reserve_for)
        .map_err(|_| StoreError::InvalidInput(format!("reservation {reserve_for:?} is too long")))
}

/// Durable compensation items for failed batch operations.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CompensationStore: Send + Sync {
    /// Records one pending item per failed batch item, all or none. Returns their ids.
    async fn record(
        &self,
        items: Vec<NewCompensationItem>,
        max_retries: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<Uuid>>;

    /// Reserves up to `limit` due, retryable items for `reserve_for` (by moving their
    /// `next_retry_at` and bumping their version) and returns them, oldest due first.
    /// Concurrent workers never get the same item while it is reserved.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        reserve_for: Duration,
    ) -> StoreResult<Vec<CompensationItem>>;

    /// Replaces the item if its stored version is still `expected_version`; otherwise
    /// fails with [`StoreError::Conflict`](crate::StoreError::Conflict) and changes nothing.
    async fn update(&self, item: &CompensationItem, expected_version: u64) -> StoreResult<()>;

    /// One item.
    async fn get(&self, id: Uuid) -> StoreResult<Option<CompensationItem>>;

    /// Items, oldest first.
    async fn list(&self, filter: &CompensationFilter) -> StoreResult<Vec<CompensationItem>>;
}

/// Why an operation could not be executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError {
    /// Worth retrying later.
    #[error("operation failed, will retry: {0}")]
    Retryable(String),
    /// Retrying cannot help; an operator must look at it.
    #[error("operation failed permanently: {0}")]
    Permanent(String),
}

/// Re-runs one failed batch item. Implemented by the user's service.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait OperationExecutor: Send + Sync {
    /// Executes `operation_type` with `payload`. Must be idempotent: a crash after it
    /// succeeded but before the item was marked resolved runs it again.
    async fn execute(
        &self,
        operation_type: &str,
        payload: &serde_json::Value,
    ) -> Result<(), ExecuteError>;
}
