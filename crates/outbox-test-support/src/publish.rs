use chrono::{DateTime, Utc};
use outbox_ports::{
    ClaimRequest, ClaimedMessage, Disposition, MessageStore, Settlement, StoreResult,
};
use std::time::Duration;

/// Claims up to `limit` due messages as `owner` and settles them all as published,
/// as a relay with a perfect broker would, without any broker: for tests that need
/// published messages (or, against a real broker, messages marked published that it
/// never got). Returns what was claimed.
pub async fn mark_published<S: MessageStore + ?Sized>(
    store: &S,
    owner: &str,
    limit: usize,
    now: DateTime<Utc>,
) -> StoreResult<Vec<ClaimedMessage>> {
    let claimed = store
        .claim(&ClaimRequest {
            owner: owner.to_owned(),
            limit,
            lease_for: Duration::from_secs(60),
            now,
        })
        .await?;
    let settlements = claimed
        .iter()
        .map(|c| Settlement {
            id: c.message.id,
            token: c.lease.token,
            disposition: Disposition::Published,
        })
        .collect();
    store.settle(settlements, now).await?;
    Ok(claimed)
}
