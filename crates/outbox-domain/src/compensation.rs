//! Per-item compensation of failed batch operations.
//!
//! ```text
//! pending ──attempt fails──► retrying ──attempt fails (last)──► manual_required
//!    │                          │                                   │      │
//!    └──────attempt succeeds────┴──────────► resolved ◄──operator───┘      │
//!                                                         abandoned ◄─operator
//! ```
//!
//! Every transition bumps [`CompensationItem::version`]; stores update with a
//! compare-and-set on it, so a stale writer fails instead of overwriting.

use crate::ErrorText;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Where a compensation item is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationStatus {
    /// Recorded, not tried yet.
    Pending,
    /// Tried and failed at least once; will be tried again.
    Retrying,
    /// Done, by the worker or an operator.
    Resolved,
    /// Retries are used up; waits for an operator.
    ManualRequired,
    /// An operator gave up on it.
    Abandoned,
}

impl CompensationStatus {
    /// Every status.
    pub const ALL: [CompensationStatus; 5] = [
        Self::Pending,
        Self::Retrying,
        Self::Resolved,
        Self::ManualRequired,
        Self::Abandoned,
    ];

    /// The stable name used in storage and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Resolved => "resolved",
            Self::ManualRequired => "manual_required",
            Self::Abandoned => "abandoned",
        }
    }

    /// Whether the worker should still try it.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Pending | Self::Retrying)
    }

    /// Whether nothing can change it any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Resolved | Self::Abandoned)
    }
}

impl fmt::Display for CompensationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a batch operation records for one failed item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewCompensationItem {
    /// The batch the item belongs to.
    pub batch_id: String,
    /// Which operation to retry (the executor dispatches on it).
    pub operation_type: String,
    /// Position of the item in its batch.
    pub item_index: u32,
    /// The operation's input.
    pub payload: serde_json::Value,
    /// Why the original attempt failed.
    pub failure_reason: ErrorText,
}

/// One failed batch item and its compensation state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CompensationItem {
    /// Unique id.
    pub id: Uuid,
    /// The batch the item belongs to.
    pub batch_id: String,
    /// Which operation to retry.
    pub operation_type: String,
    /// Position of the item in its batch.
    pub item_index: u32,
    /// The operation's input.
    pub payload: serde_json::Value,
    /// The latest failure.
    pub failure_reason: ErrorText,
    /// Current status.
    pub status: CompensationStatus,
    /// Failed retries so far.
    pub retry_count: u32,
    /// Retries allowed before an operator is needed.
    pub max_retries: u32,
    /// Earliest time of the next retry.
    pub next_retry_at: DateTime<Utc>,
    /// Who resolved or abandoned it, if an operator did.
    pub resolved_by: Option<String>,
    /// The operator's note.
    pub resolution_note: Option<String>,
    /// When it was resolved or abandoned.
    pub resolved_at: Option<DateTime<Utc>>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Optimistic-lock version, bumped by every transition.
    pub version: u64,
}

/// Something that happens to a compensation item.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CompensationEvent {
    /// The executor succeeded.
    AttemptSucceeded,
    /// The executor failed; `retry_at` is when to try again if retries remain, `None`
    /// for a failure no retry can fix (the item goes straight to `manual_required`).
    AttemptFailed {
        /// What went wrong.
        error: ErrorText,
        /// When to try again.
        retry_at: Option<DateTime<Utc>>,
    },
    /// An operator marks it resolved.
    Resolve {
        /// Who did it.
        by: String,
        /// Why.
        note: String,
    },
    /// An operator gives up on it.
    Abandon {
        /// Who did it.
        by: String,
        /// Why.
        note: String,
    },
}

/// An event that does not apply to the item's state. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a compensation item that is {from}")]
pub struct CompensationTransitionError {
    /// The current status.
    pub from: CompensationStatus,
    /// The event's name.
    pub event: &'static str,
}

impl CompensationItem {
    /// A new pending item, due at `now`.
    pub fn new(id: Uuid, item: NewCompensationItem, max_retries: u32, now: DateTime<Utc>) -> Self {
        Self {
            id,
            batch_id: item.batch_id,
            operation_type: item.operation_type,
            item_index: item.item_index,
            payload: item.payload,
            failure_reason: item.failure_reason,
            status: CompensationStatus::Pending,
            retry_count: 0,
            max_retries,
            next_retry_at: now,
            resolved_by: None,
            resolution_note: None,
            resolved_at: None,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// Applies `event` at `now`, returning the next state (with its version bumped) or
    /// why the event is illegal.
    pub fn apply(
        &self,
        event: CompensationEvent,
        now: DateTime<Utc>,
    ) -> Result<CompensationItem, CompensationTransitionError> {
        use CompensationStatus as S;
        let mut next = self.clone();
        match (self.status, event) {
            (S::Pending | S::Retrying, CompensationEvent::AttemptSucceeded) => {
                next.status = S::Resolved;
                next.resolved_at = Some(now);
            }
            (S::Pending | S::Retrying, CompensationEvent::AttemptFailed { error, retry_at }) => {
                next.retry_count += 1;
                next.failure_reason = error;
                match retry_at {
                    Some(at) if next.retry_count < self.max_retries => {
                        next.status = S::Retrying;
                        next.next_retry_at = at;
                    }
                    _ => next.status = S::ManualRequired,
                }
            }
            (
                S::Pending | S::Retrying | S::ManualRequired,
                CompensationEvent::Resolve { by, note },
            ) if !by.trim().is_empty() => {
                next.status = S::Resolved;
                next.resolved_by = Some(by);
                next.resolution_note = Some(note);
                next.resolved_at = Some(now);
            }
            (
                S::Pending | S::Retrying | S::ManualRequired,
                CompensationEvent::Abandon { by, note },
            ) if !by.trim().is_empty() => {
                next.status = S::Abandoned;
                next.resolved_by = Some(by);
                next.resolution_note = Some(note);
                next.resolved_at = Some(now);
            }
            (from, event) => {
                return Err(CompensationTransitionError {
                    from,
                    event: event_name(&event),
                });
            }
        }
        next.version = self.version + 1;
        next.updated_at = now;
        Ok(next)
    }
}

fn event_name(event: &CompensationEvent) -> &'static str {
    match event {
        CompensationEvent::AttemptSucceeded => "record a success for",
        CompensationEvent::AttemptFailed { .. } => "record a failure for",
        CompensationEvent::Resolve { by, .. } | CompensationEvent::Abandon { by, .. }
            if by.trim().is_empty() =>
        {
            "act without naming the operator on"
        }
        CompensationEvent::Resolve { .. } => "resolve",
        CompensationEvent::Abandon { .. } => "abandon",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn item(max_retries: u32) -> CompensationItem {
        CompensationItem::new(
            Uuid::nil(),
            NewCompensationItem {
                batch_id: "b1".into(),
                operation_type: "refund".into(),
                item_index: 3,
                payload: serde_json::json!({"amount": 5}),
                failure_reason: ErrorText::new("gateway timeout"),
            },
            max_retries,
            t(0),
        )
    }

    fn fail(at: i64) -> CompensationEvent {
        CompensationEvent::AttemptFailed {
            error: ErrorText::new("still down"),
            retry_at: Some(t(at)),
        }
    }

    #[test]
    fn retries_then_needs_an_operator() {
        let i = item(2).apply(fail(60), t(1)).unwrap();
        assert_eq!(
            (i.status, i.retry_count, i.version, i.next_retry_at),
            (CompensationStatus::Retrying, 1, 2, t(60))
        );
        let i = i.apply(fail(120), t(61)).unwrap();
        assert_eq!(
            (i.status, i.version),
            (CompensationStatus::ManualRequired, 3)
        );
        assert!(i.apply(CompensationEvent::AttemptSucceeded, t(62)).is_err());
        let by = |s: &str| s.to_owned();
        assert!(
            i.apply(
                CompensationEvent::Resolve {
                    by: by(" "),
                    note: by("n")
                },
                t(62)
            )
            .is_err()
        );
        let done = i
            .apply(
                CompensationEvent::Abandon {
                    by: by("alice"),
                    note: by("refunded by hand"),
                },
                t(63),
            )
            .unwrap();
        assert_eq!(done.status, CompensationStatus::Abandoned);
        assert_eq!(done.resolved_by.as_deref(), Some("alice"));
        let done = i
            .apply(
                CompensationEvent::Resolve {
                    by: by("bob"),
                    note: by("ok"),
                },
                t(63),
            )
            .unwrap();
        assert_eq!(done.status, CompensationStatus::Resolved);
    }

    #[test]
    fn permanent_failure_needs_an_operator_at_once() {
        let ev = CompensationEvent::AttemptFailed {
            error: ErrorText::new("invalid account"),
            retry_at: None,
        };
        let i = item(5).apply(ev, t(1)).unwrap();
        assert_eq!(
            (i.status, i.retry_count),
            (CompensationStatus::ManualRequired, 1)
        );
    }

    #[test]
    fn success_resolves() {
        let i = item(3)
            .apply(CompensationEvent::AttemptSucceeded, t(1))
            .unwrap();
        assert_eq!((i.status, i.version), (CompensationStatus::Resolved, 2));
    }

    fn event(kind: u8) -> CompensationEvent {
        match kind {
            0 => CompensationEvent::AttemptSucceeded,
            1 => fail(10),
            2 => CompensationEvent::Resolve {
                by: "op".into(),
                note: "n".into(),
            },
            3 => CompensationEvent::Abandon {
                by: "op".into(),
                note: "n".into(),
            },
            _ => CompensationEvent::Resolve {
                by: String::new(),
                note: "n".into(),
            },
        }
    }

    proptest! {
        #[test]
        fn versions_grow_terminal_states_stay_and_retries_are_bounded(
            max in 1u32..6,
            kinds in proptest::collection::vec(0u8..5, 0..40),
        ) {
            let mut i = item(max);
            for k in kinds {
                let before = i.clone();
                if let Ok(next) = i.apply(event(k), t(5)) {
                    prop_assert!(!before.status.is_terminal());
                    prop_assert_eq!(next.version, before.version + 1);
                    i = next;
                }
                prop_assert!(i.retry_count <= i.max_retries);
                if i.retry_count == i.max_retries && !i.status.is_terminal() {
                    prop_assert_eq!(i.status, CompensationStatus::ManualRequired);
                }
            }
        }
    }
}
