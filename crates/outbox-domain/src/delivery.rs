//! The delivery state machine of one outbox message.
//!
//! ```text
//!            claim                publish ok              consume
//! pending ─────────► in_flight ─────────────► published ─────────► consumed
//!    ▲                │  │  │
//!    │ fail (retry_at)│  │  └─ lease expired ─► pending (or dead on the last attempt)
//!    └────────────────┘  │
//!                        └─ fail permanent / attempts used up ─► dead ── replay ─► pending
//! ```
//!
//! `consumed` is terminal; `dead` is terminal except for an operator's replay. Every
//! transition is the pure function [`Delivery::apply`]; an illegal one returns a
//! [`TransitionError`] and leaves the state untouched.

use crate::ErrorText;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Where a message is in its delivery life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Waiting for a relay: new, or failed and waiting for `next_attempt_at`.
    Pending,
    /// Claimed by a relay under a lease; the broker call may be under way.
    InFlight,
    /// The broker acknowledged it.
    Published,
    /// A consumer reported it processed.
    Consumed,
    /// Failed for good; waits for an operator to inspect and replay it.
    Dead,
    /// Stored as an audit record ([`PersistenceStrategy::DbOnly`](crate::PersistenceStrategy::DbOnly));
    /// never published, so no claim returns it and no event applies to it.
    Recorded,
}

impl MessageStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [MessageStatus; 6] = [
        MessageStatus::Pending,
        MessageStatus::InFlight,
        MessageStatus::Published,
        MessageStatus::Consumed,
        MessageStatus::Dead,
        MessageStatus::Recorded,
    ];

    /// The stable name used in storage, metrics and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::InFlight => "in_flight",
            MessageStatus::Published => "published",
            MessageStatus::Consumed => "consumed",
            MessageStatus::Dead => "dead",
            MessageStatus::Recorded => "recorded",
        }
    }

    /// Whether the relay still owes this message a delivery. An unfinished message
    /// blocks later messages of its key (see [`crate::ordering`]).
    pub const fn is_unfinished(self) -> bool {
        matches!(self, MessageStatus::Pending | MessageStatus::InFlight)
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`MessageStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown message status `{0}`; expected pending, in_flight, published, consumed, dead or recorded"
)]
pub struct UnknownStatus(pub String);

impl FromStr for MessageStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Identifies one claim of a message. Acknowledgements compare it, so a relay whose
/// lease expired can never overwrite the outcome of a newer claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(Uuid);

impl LeaseToken {
    /// Wraps a UUID; callers generate a random (v4 or v7) one per claim.
    pub const fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A relay's time-limited right to deliver a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it (relay instance id), for operators.
    pub owner: String,
    /// The claim's token, compared on acknowledgement.
    pub token: LeaseToken,
    /// When the message returns to the pool if not settled.
    pub expires_at: DateTime<Utc>,
}

/// The delivery state of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delivery {
    /// Current status.
    pub status: MessageStatus,
    /// Claims so far (a claim counts as an attempt, so a message that crashes its relay
    /// still runs out of attempts).
    pub attempts: u32,
    /// Attempts allowed before the message is dead.
    pub max_attempts: u32,
    /// Earliest time a relay may claim the message.
    pub next_attempt_at: DateTime<Utc>,
    /// The current lease, while in flight.
    pub lease: Option<Lease>,
    /// The latest failure, kept after replay for inspection.
    pub last_error: Option<ErrorText>,
    /// When the broker acknowledged it.
    pub published_at: Option<DateTime<Utc>>,
    /// When a consumer reported it processed.
    pub consumed_at: Option<DateTime<Utc>>,
}

/// Something that happens to a message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DeliveryEvent {
    /// A relay claims the message under `lease`.
    Claim {
        /// The new lease.
        lease: Lease,
    },
    /// The broker acknowledged the claim identified by `token`.
    Publish {
        /// The claim being settled.
        token: LeaseToken,
    },
    /// The claim identified by `token` failed. `retry_at: None` means a permanent failure.
    Fail {
        /// The claim being settled.
        token: LeaseToken,
        /// What went wrong.
        error: ErrorText,
        /// When to try again; `None` for a permanent failure.
        retry_at: Option<DateTime<Utc>>,
    },
    /// The lease ran out without a settlement (the relay crashed or hung).
    ExpireLease,
    /// A consumer processed the message.
    Consume,
    /// An operator sends a dead message back to the relay with fresh attempts.
    Replay,
    /// An operator gives up on a pending message (for example to unpark its key).
    Kill {
        /// The operator's reason.
        reason: ErrorText,
    },
}

impl DeliveryEvent {
    /// A short name for errors and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            DeliveryEvent::Claim { .. } => "claim",
            DeliveryEvent::Publish { .. } => "publish",
            DeliveryEvent::Fail { .. } => "fail",
            DeliveryEvent::ExpireLease => "expire the lease of",
            DeliveryEvent::Consume => "consume",
            DeliveryEvent::Replay => "replay",
            DeliveryEvent::Kill { .. } => "kill",
        }
    }
}

/// An event that does not apply to the current state. Nothing was changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The event never applies in this status.
    #[error("cannot {event} a message that is {from}")]
    Illegal {
        /// The current status.
        from: MessageStatus,
        /// The event's name.
        event: &'static str,
    },
    /// The message is waiting for its backoff to pass.
    #[error("message is not due before {next_attempt_at}")]
    NotDue {
        /// When it becomes claimable.
        next_attempt_at: DateTime<Utc>,
    },
    /// The settlement names an older claim; a newer claim owns the message now.
    #[error("lease token does not match the current claim")]
    LeaseMismatch,
    /// The lease is still valid.
    #[error("lease is valid until {expires_at}")]
    LeaseNotExpired {
        /// When it expires.
        expires_at: DateTime<Utc>,
    },
    /// Claiming again would exceed the attempt limit.
    #[error("all {max_attempts} attempts are used up")]
    AttemptsExhausted {
        /// The limit.
        max_attempts: u32,
    },
}

impl Delivery {
    /// A new pending message, due at `now`.
    pub fn new(max_attempts: u32, now: DateTime<Utc>) -> Self {
        Self {
            status: MessageStatus::Pending,
            attempts: 0,
            max_attempts,
            next_attempt_at: now,
            lease: None,
            last_error: None,
            published_at: None,
            consumed_at: None,
        }
    }

    /// An audit record ([`MessageStatus::Recorded`]), written at `now`: no attempts, never
    /// due for a relay.
    pub fn recorded(now: DateTime<Utc>) -> Self {
        Self {
            status: MessageStatus::Recorded,
            max_attempts: 0,
            ..Self::new(0, now)
        }
    }

    /// Whether a relay may claim the message at `now`.
    pub fn is_claimable(&self, now: DateTime<Utc>) -> bool {
        self.status == MessageStatus::Pending
            && self.next_attempt_at <= now
            && self.attempts < self.max_attempts
    }

    /// Whether the message is in flight under a lease that ran out before `now`.
    pub fn lease_expired(&self, now: DateTime<Utc>) -> bool {
        self.status == MessageStatus::InFlight
            && self.lease.as_ref().is_some_and(|l| l.expires_at <= now)
    }

    /// Applies `event` at `now`, returning the next state or why the event is illegal.
    pub fn apply(
        &self,
        event: DeliveryEvent,
        now: DateTime<Utc>,
    ) -> Result<Delivery, TransitionError> {
        use MessageStatus as S;
        let illegal = |event: &DeliveryEvent| TransitionError::Illegal {
            from: self.status,
            event: event.name(),
        };
        let mut next = self.clone();
        match (self.status, event) {
            (S::Pending, DeliveryEvent::Claim { lease }) => {
                if self.next_attempt_at > now {
                    return Err(TransitionError::NotDue {
                        next_attempt_at: self.next_attempt_at,
                    });
                }
                if self.attempts >= self.max_attempts {
                    return Err(TransitionError::AttemptsExhausted {
                        max_attempts: self.max_attempts,
                    });
                }
                next.status = S::InFlight;
                next.attempts += 1;
                next.lease = Some(lease);
            }
            (S::InFlight, DeliveryEvent::Publish { token }) => {
                self.check_token(token)?;
                next.status = S::Published;
                next.lease = None;
                next.published_at = Some(now);
            }
            (
                S::InFlight,
                DeliveryEvent::Fail {
                    token,
                    error,
                    retry_at,
                },
            ) => {
                self.check_token(token)?;
                next.lease = None;
                next.last_error = Some(error);
                match retry_at {
                    Some(at) if self.attempts < self.max_attempts => {
                        next.status = S::Pending;
                        next.next_attempt_at = at;
                    }
                    _ => next.status = S::Dead,
                }
            }
            (S::InFlight, DeliveryEvent::ExpireLease) => {
                let lease = self.lease.as_ref().ok_or(TransitionError::LeaseMismatch)?;
                if lease.expires_at > now {
                    return Err(TransitionError::LeaseNotExpired {
                        expires_at: lease.expires_at,
                    });
                }
                next.last_error = Some(ErrorText::new(format!(
                    "lease of relay `{}` expired before it settled",
                    lease.owner
                )));
                next.lease = None;
                if self.attempts >= self.max_attempts {
                    next.status = S::Dead;
                } else {
                    next.status = S::Pending;
                    next.next_attempt_at = now;
                }
            }
            // Evidence of delivery wins over the relay's bookkeeping: the broker may
            // have delivered a message whose settlement is still on its way back.
            (S::Pending | S::InFlight | S::Published, DeliveryEvent::Consume) => {
                next.status = S::Consumed;
                next.lease = None;
                next.published_at = self.published_at.or(Some(now));
                next.consumed_at = Some(now);
            }
            // A late settlement of a message already consumed changes nothing.
            (S::Consumed, DeliveryEvent::Publish { .. } | DeliveryEvent::Fail { .. }) => {}
            (S::Dead, DeliveryEvent::Replay) => {
                next.status = S::Pending;
                next.attempts = 0;
                next.next_attempt_at = now;
            }
            (S::Pending, DeliveryEvent::Kill { reason }) => {
                next.status = S::Dead;
                next.last_error = Some(reason);
            }
            (_, event) => return Err(illegal(&event)),
        }
        Ok(next)
    }

    fn check_token(&self, token: LeaseToken) -> Result<(), TransitionError> {
        match &self.lease {
            Some(lease) if lease.token == token => Ok(()),
            _ => Err(TransitionError::LeaseMismatch),
        }
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

    fn lease(n: u128, expires: i64) -> Lease {
        Lease {
            owner: "relay-a".into(),
            token: LeaseToken::from_uuid(Uuid::from_u128(n)),
            expires_at: t(expires),
        }
    }

    fn claim(d: &Delivery, n: u128, now: i64) -> Delivery {
        d.apply(
            DeliveryEvent::Claim {
                lease: lease(n, now + 30),
            },
            t(now),
        )
        .unwrap()
    }

    #[test]
    fn happy_path() {
        let d = Delivery::new(3, t(0));
        let d = claim(&d, 1, 0);
        assert_eq!((d.status, d.attempts), (MessageStatus::InFlight, 1));
        let d = d
            .apply(
                DeliveryEvent::Publish {
                    token: LeaseToken::from_uuid(Uuid::from_u128(1)),
                },
                t(1),
            )
            .unwrap();
        assert_eq!(d.status, MessageStatus::Published);
        assert_eq!(d.published_at, Some(t(1)));
        let d = d.apply(DeliveryEvent::Consume, t(2)).unwrap();
        assert_eq!(d.status, MessageStatus::Consumed);
    }

    #[test]
    fn failure_schedules_retry_then_dies_at_the_limit() {
        let tok = |n| LeaseToken::from_uuid(Uuid::from_u128(n));
        let mut d = Delivery::new(2, t(0));
        d = claim(&d, 1, 0);
        d = d
            .apply(
                DeliveryEvent::Fail {
                    token: tok(1),
                    error: ErrorText::new("down"),
                    retry_at: Some(t(10)),
                },
                t(1),
            )
            .unwrap();
        assert_eq!(
            (d.status, d.next_attempt_at),
            (MessageStatus::Pending, t(10))
        );
        assert_eq!(
            d.apply(
                DeliveryEvent::Claim {
                    lease: lease(2, 40)
                },
                t(5)
            ),
            Err(TransitionError::NotDue {
                next_attempt_at: t(10)
            })
        );
        d = claim(&d, 2, 10);
        d = d
            .apply(
                DeliveryEvent::Fail {
                    token: tok(2),
                    error: ErrorText::new("down"),
                    retry_at: Some(t(20)),
                },
                t(11),
            )
            .unwrap();
        assert_eq!(
            d.status,
            MessageStatus::Dead,
            "second failure of two attempts is final"
        );
        assert_eq!(d.last_error.as_ref().map(ErrorText::as_str), Some("down"));
        d = d.apply(DeliveryEvent::Replay, t(30)).unwrap();
        assert_eq!(
            (d.status, d.attempts, d.next_attempt_at),
            (MessageStatus::Pending, 0, t(30))
        );
    }

    #[test]
    fn stale_token_cannot_settle() {
        let d = claim(&Delivery::new(3, t(0)), 1, 0);
        let stale = LeaseToken::from_uuid(Uuid::from_u128(99));
        assert_eq!(
            d.apply(DeliveryEvent::Publish { token: stale }, t(1)),
            Err(TransitionError::LeaseMismatch)
        );
    }

    #[test]
    fn lease_expiry_returns_message_or_kills_it_on_last_attempt() {
        let d = claim(&Delivery::new(2, t(0)), 1, 0);
        assert!(matches!(
            d.apply(DeliveryEvent::ExpireLease, t(10)),
            Err(TransitionError::LeaseNotExpired { .. })
        ));
        let d = d.apply(DeliveryEvent::ExpireLease, t(30)).unwrap();
        assert_eq!(d.status, MessageStatus::Pending);
        let d = claim(&d, 2, 31);
        let d = d.apply(DeliveryEvent::ExpireLease, t(61)).unwrap();
        assert_eq!(d.status, MessageStatus::Dead);
    }

    #[test]
    fn status_names_round_trip() {
        for s in MessageStatus::ALL {
            assert_eq!(s.as_str().parse::<MessageStatus>(), Ok(s));
        }
        assert!("sent".parse::<MessageStatus>().is_err());
    }

    fn event_strategy() -> impl Strategy<Value = (u8, u128, i64, bool)> {
        (0u8..7, 0u128..4, 0i64..100, any::<bool>())
    }

    fn make_event(kind: u8, tok: u128, at: i64, permanent: bool) -> DeliveryEvent {
        let token = LeaseToken::from_uuid(Uuid::from_u128(tok));
        match kind {
            0 => DeliveryEvent::Claim {
                lease: lease(tok, at),
            },
            1 => DeliveryEvent::Publish { token },
            2 => DeliveryEvent::Fail {
                token,
                error: ErrorText::new("x"),
                retry_at: (!permanent).then(|| t(at)),
            },
            3 => DeliveryEvent::ExpireLease,
            4 => DeliveryEvent::Consume,
            5 => DeliveryEvent::Replay,
            _ => DeliveryEvent::Kill {
                reason: ErrorText::new("operator"),
            },
        }
    }

    proptest! {
        /// An audit record (`DbOnly`) is never claimable and no event changes it.
        #[test]
        fn recorded_messages_accept_no_event(
            events in proptest::collection::vec(event_strategy(), 1..20),
        ) {
            let d = Delivery::recorded(t(0));
            prop_assert!(!d.is_claimable(t(1_000)));
            prop_assert!(!d.status.is_unfinished());
            for (kind, tok, dt, permanent) in events {
                let ev = make_event(kind, tok, dt, permanent);
                let refused = matches!(
                    d.apply(ev, t(dt)),
                    Err(TransitionError::Illegal { from: MessageStatus::Recorded, .. })
                );
                prop_assert!(refused);
            }
        }
    }

    proptest! {
        /// Terminal states stay terminal (dead only leaves through replay), attempts
        /// never exceed the maximum, and only in-flight messages hold a lease.
        #[test]
        fn invariants_hold_for_any_event_sequence(
            max in 1u32..5,
            events in proptest::collection::vec(event_strategy(), 0..60),
        ) {
            let mut d = Delivery::new(max, t(0));
            let mut clock = 0i64;
            for (kind, tok, dt, permanent) in events {
                clock += dt % 20;
                let ev = make_event(kind, tok, clock + dt, permanent);
                let is_replay = matches!(ev, DeliveryEvent::Replay);
                let before = d.clone();
                if let Ok(next) = d.apply(ev, t(clock)) {
                    if before.status == MessageStatus::Consumed {
                        prop_assert_eq!(&next, &before);
                    }
                    if before.status == MessageStatus::Dead && next.status != MessageStatus::Dead {
                        prop_assert!(is_replay);
                        prop_assert_eq!(next.status, MessageStatus::Pending);
                    }
                    if before.status == MessageStatus::Published {
                        prop_assert!(matches!(next.status, MessageStatus::Published | MessageStatus::Consumed));
                    }
                    prop_assert_eq!(next.lease.is_some(), next.status == MessageStatus::InFlight);
                    d = next;
                }
                prop_assert!(d.attempts <= d.max_attempts);
            }
        }

        /// A claim is only ever granted when the message is due.
        #[test]
        fn claims_respect_backoff(retry_in in 1i64..1000, probe in 0i64..2000) {
            let d = claim(&Delivery::new(5, t(0)), 1, 0);
            let d = d.apply(DeliveryEvent::Fail {
                token: LeaseToken::from_uuid(Uuid::from_u128(1)),
                error: ErrorText::new("x"),
                retry_at: Some(t(retry_in)),
            }, t(0)).unwrap();
            let res = d.apply(DeliveryEvent::Claim { lease: lease(2, probe + 30) }, t(probe));
            prop_assert_eq!(res.is_ok(), probe >= retry_in);
        }
    }
}
