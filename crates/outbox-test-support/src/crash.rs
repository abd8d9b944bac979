//! The crash-point kit: kill a relay at a named point of its work, restart it, and check
//! what the consumer received.
//!
//! Three parts, usable with any relay binary and any broker:
//!
//! - **Failpoints.** The runtime and the adapters mark the points where a crash matters
//!   with `fail` failpoints (the tikv `fail` crate), compiled in only by their `failpoints` feature (the
//!   `outbox` command: `--features failpoints`). [`CrashPoint`] names them.
//! - **Arming, in the child.** `arm_from_env` (feature `crash`) reads
//!   [`CRASH_AT_VAR`] and makes the named failpoint write [`CRASH_MARKER`] to stderr and
//!   SIGKILL its own process on the given hit: the process dies exactly there, with no
//!   chance to finish a publish or a commit.
//! - **Checking, in the test.** [`crash_once`] runs the relay command until it dies at
//!   the point, and fails on any other ending. A [`Ledger`] records what the workload
//!   committed and rolled back, and [`Ledger::check`] holds the deliveries against the
//!   invariants: every committed message delivered, no rolled-back one, per-key order,
//!   and duplicates only where [`CrashPoint::may_duplicate`] allows them.
//!
//! Run the relay with one claim loop and one batch in flight (`concurrency = 1`,
//! `pipeline_depth = 1`): a kill then stops exactly one batch, at the named point. With
//! more in flight, the kill also cuts other batches wherever they are, and one of them
//! may be between the ack and the mark, a duplicate the point itself would not allow.
//!
//! `crates/outbox-cli/tests/crash.rs` runs the whole matrix against PostgreSQL and the
//! Kafka-protocol broker; it is the worked example.

use outbox_domain::MessageId;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable `arm_from_env` reads: `NAME` or `NAME@HIT`, where `NAME`
/// is a [`CrashPoint::name`] and `HIT` (default 1) is the hit that kills the process.
pub const CRASH_AT_VAR: &str = "OUTBOX_CRASH_AT";

/// What an armed process writes to stderr, followed by the point's name, just before it
/// kills itself.
pub const CRASH_MARKER: &str = "outbox crash point reached: ";

/// A named point where the relay can be killed, in the order a message passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrashPoint {
    /// `relay.after_claim`: a batch is leased, nothing is published yet.
    AfterClaim,
    /// `kafka.mid_batch`: the broker acknowledged the first message of a batch of
    /// several; the others may or may not have reached it.
    MidBatch,
    /// `relay.after_publish`: the broker acknowledged the batch; the store has not
    /// recorded it.
    AfterPublish,
    /// `store.settle_txn`: the outcomes are written in the ack transaction, which has
    /// not committed.
    InAckTransaction,
}

impl CrashPoint {
    /// Every point.
    pub const ALL: [Self; 4] = [
        Self::AfterClaim,
        Self::MidBatch,
        Self::AfterPublish,
        Self::InAckTransaction,
    ];

    /// The failpoint's name, as in the source and in [`CRASH_AT_VAR`].
    pub fn name(self) -> &'static str {
        match self {
            Self::AfterClaim => "relay.after_claim",
            Self::MidBatch => "kafka.mid_batch",
            Self::AfterPublish => "relay.after_publish",
            Self::InAckTransaction => "store.settle_txn",
        }
    }

    /// The point named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether a crash here can deliver a message twice: only between the broker's
    /// acknowledgement and the commit that records it.
    pub fn may_duplicate(self) -> bool {
        !matches!(self, Self::AfterClaim)
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// [`CRASH_AT_VAR`] holds something `arm_from_env` cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{CRASH_AT_VAR}={value:?}: {reason}")]
pub struct ArmError {
    value: String,
    reason: String,
}

/// Parses a [`CRASH_AT_VAR`] value: `NAME` or `NAME@HIT`.
pub fn parse_crash_at(value: &str) -> Result<(CrashPoint, u32), ArmError> {
    let error = |reason: String| ArmError {
        value: value.to_owned(),
        reason,
    };
    let (name, hit) = match value.split_once('@') {
        None => (value, 1),
        Some((name, hit)) => match hit.parse::<u32>() {
            Ok(hit) if hit > 0 => (name, hit),
            _ => return Err(error(format!("the hit {hit:?} is not a number above 0"))),
        },
    };
    let point = CrashPoint::from_name(name).ok_or_else(|| {
        let names: Vec<_> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
        error(format!("unknown crash point; known: {}", names.join(", ")))
    })?;
    Ok((point, hit))
}

/// Arms the failpoint named by [`CRASH_AT_VAR`], if set: on its `HIT`-th hit the
/// process writes [`CRASH_MARKER`] and the point's name to stderr and SIGKILLs itself.
/// Returns the armed point. Call it once, at start-up, in a binary built with the
/// crates' `failpoints` features (otherwise the failpoints are compiled out and never
/// hit).
#[cfg(feature = "crash")]
pub fn arm_from_env() -> Result<Option<CrashPoint>, ArmError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    let Ok(value) = std::env::var(CRASH_AT_VAR) else {
        return Ok(None);
    };
    let (point, hit) = parse_crash_at(&value)?;
    let hits = AtomicU32::new(0);
    fail::cfg_callback(point.name(), move || {
        if hits.fetch_add(1, Ordering::SeqCst) + 1 == hit {
            eprintln!("{CRASH_MARKER}{}", point.name());
            // SIGKILL cannot be caught: nothing after this line runs, in any thread.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
        }
    })
    .map_err(|reason| ArmError { value, reason })?;
    Ok(Some(point))
}

/// A child that did not die at its crash point.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrashError {
    /// The command could not be started.
    #[error("could not start the relay: {0}")]
    Spawn(#[from] std::io::Error),
    /// The point was not reached in time; the child was killed. Often the workload
    /// gave the relay nothing to do, or the binary lacks the `failpoints` features.
    #[error("{point} was not reached within {limit:?}; stderr ends:\n{stderr}")]
    NotReached {
        /// The armed point.
        point: CrashPoint,
        /// How long it was given.
        limit: Duration,
        /// The end of the child's stderr.
        stderr: String,
    },
    /// The child ended some other way (an error exit, another signal, a kill without
    /// the marker).
    #[error("the relay ended with {status} instead of dying at {point}; stderr ends:\n{stderr}")]
    Ended {
        /// The armed point.
        point: CrashPoint,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The end of the child's stderr.
        stderr: String,
    },
}

/// A relay that died at its crash point.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Crashed {
    /// How long it ran.
    pub life: Duration,
    /// Everything it wrote to stderr (its log), the crash marker last.
    pub stderr: String,
}

/// Runs `relay` with [`CRASH_AT_VAR`] set to `point@hit` until it kills itself there.
/// The child's stderr is captured (returned, or its end in errors); its stdout is
/// discarded.
pub fn crash_once(
    relay: &mut Command,
    point: CrashPoint,
    hit: u32,
    limit: Duration,
) -> Result<Crashed, CrashError> {
    let started = Instant::now();
    let mut child = relay
        .env(CRASH_AT_VAR, format!("{}@{hit}", point.name()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stderr.take().expect("stderr is piped");
    // Read on a thread, so that a chatty child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap_or_default();
    let tail = tail(&stderr, 30);
    match status {
        None => Err(CrashError::NotReached {
            point,
            limit,
            stderr: tail,
        }),
        Some(status)
            if status.signal() == Some(SIGKILL)
                && stderr.contains(&format!("{CRASH_MARKER}{}", point.name())) =>
        {
            Ok(Crashed {
                life: started.elapsed(),
                stderr,
            })
        }
        Some(status) => Err(CrashError::Ended {
            point,
            status,
            stderr: tail,
        }),
    }
}

/// SIGKILL's number on Linux (and every other Unix).
const SIGKILL: i32 = 9;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One message as the consumer received it, in the order received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The outbox message id (the `outbox-message-id` header).
    pub id: MessageId,
    /// The partition key.
    pub key: String,
}

/// What a workload committed and rolled back, in commit order per key.
///
/// Per-key order is only defined when one key's transactions commit one after the
/// other, so give each key to one writer at a time; transactions of different keys may
/// interleave and commit out of order freely (that is the point).
#[derive(Debug, Default)]
pub struct Ledger {
    committed: HashMap<String, Vec<MessageId>>,
    rolled_back: HashSet<MessageId>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records messages whose transaction committed, in their order within it.
    pub fn committed(&mut self, messages: impl IntoIterator<Item = (MessageId, String)>) {
        for (id, key) in messages {
            self.committed.entry(key).or_default().push(id);
        }
    }

    /// Records messages whose transaction rolled back.
    pub fn rolled_back(&mut self, ids: impl IntoIterator<Item = MessageId>) {
        self.rolled_back.extend(ids);
    }

    /// How many messages committed.
    pub fn committed_count(&self) -> usize {
        self.committed.values().map(Vec::len).sum()
    }

    /// How many messages rolled back.
    pub fn rolled_back_count(&self) -> usize {
        self.rolled_back.len()
    }

    /// Holds `deliveries` against the invariants:
    ///
    /// - every committed message is delivered;
    /// - no rolled-back (or unknown) message is delivered;
    /// - per key, the deliveries are the committed messages in commit order, each
    ///   possibly repeated right after itself (a redelivery), never after a later one;
    /// - repeats only if `duplicates_allowed`.
    ///
    /// Returns the count of repeats, or every violation found.
    pub fn check(
        &self,
        deliveries: &[Delivery],
        duplicates_allowed: bool,
    ) -> Result<Verdict, Violations> {
        let mut found = Vec::new();
        let mut by_key: HashMap<&str, Vec<MessageId>> = HashMap::new();
        for d in deliveries {
            if self.rolled_back.contains(&d.id) {
                found.push(Violation::RolledBackDelivered(d.id));
            } else {
                by_key.entry(&d.key).or_default().push(d.id);
            }
        }
        let mut duplicates = 0;
        for (key, expected) in &self.committed {
            let got = by_key.remove(key.as_str()).unwrap_or_default();
            let mut distinct: Vec<MessageId> = Vec::with_capacity(got.len());
            for id in got {
                if distinct.last() == Some(&id) {
                    duplicates += 1;
                } else {
                    distinct.push(id);
                }
            }
            if distinct != *expected {
                found.push(Violation::KeyOrder {
                    key: key.clone(),
                    expected: expected.clone(),
                    delivered: distinct,
                });
            }
        }
        for (key, ids) in by_key {
            for id in ids {
                found.push(Violation::Unknown {
                    id,
                    key: key.to_owned(),
                });
            }
        }
        if duplicates > 0 && !duplicates_allowed {
            found.push(Violation::Duplicates(duplicates));
        }
        if found.is_empty() {
            Ok(Verdict {
                delivered: deliveries.len(),
                duplicates,
            })
        } else {
            Err(Violations(found))
        }
    }
}

/// What a passing [`Ledger::check`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Deliveries, repeats included.
    pub delivered: usize,
    /// Repeats of the message just delivered (at-least-once redeliveries).
    pub duplicates: usize,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A message whose transaction rolled back was delivered.
    RolledBackDelivered(MessageId),
    /// A delivered message the workload never wrote, or wrote under another key.
    Unknown {
        /// The message.
        id: MessageId,
        /// The key it came with.
        key: String,
    },
    /// A key's deliveries, repeats collapsed, are not its committed messages in commit
    /// order: something is missing, reordered or repeated out of turn.
    KeyOrder {
        /// The key.
        key: String,
        /// Its committed messages, in commit order.
        expected: Vec<MessageId>,
        /// Its deliveries, repeats of the message just before collapsed.
        delivered: Vec<MessageId>,
    },
    /// This many repeats, where none were allowed.
    Duplicates(usize),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RolledBackDelivered(id) => write!(f, "rolled-back message {id} was delivered"),
            Self::Unknown { id, key } => write!(f, "unknown message {id} (key {key}) delivered"),
            Self::KeyOrder {
                key,
                expected,
                delivered,
            } => {
                let missing = expected.iter().filter(|id| !delivered.contains(id)).count();
                write!(
                    f,
                    "key {key}: {} committed, {} delivered in order ({missing} missing); \
                     expected {expected:?}, delivered {delivered:?}",
                    expected.len(),
                    delivered.len()
                )
            }
            Self::Duplicates(n) => write!(f, "{n} duplicate deliveries where none may occur"),
        }
    }
}

/// Every invariant [`Ledger::check`] found broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} invariant violation(s):", self.0.len())?;
        for v in self.0.iter().take(20) {
            writeln!(f, "- {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<MessageId> {
        (0..n)
            .map(|_| MessageId::from_uuid(uuid::Uuid::new_v4()))
            .collect()
    }

    fn deliver(pairs: &[(&MessageId, &str)]) -> Vec<Delivery> {
        pairs
            .iter()
            .map(|(id, key)| Delivery {
                id: **id,
                key: (*key).to_owned(),
            })
            .collect()
    }

    #[test]
    fn crash_at_values_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_crash_at("relay.after_claim"),
            Ok((CrashPoint::AfterClaim, 1))
        );
        assert_eq!(
            parse_crash_at("store.settle_txn@3"),
            Ok((CrashPoint::InAckTransaction, 3))
        );
        let e = parse_crash_at("relay.after_lunch").unwrap_err().to_string();
        assert!(e.contains("known: relay.after_claim"), "{e}");
        let e = parse_crash_at("relay.after_claim@0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("above 0"), "{e}");
    }

    #[test]
    fn the_ledger_accepts_redeliveries_in_place_only_where_allowed() {
        let m = ids(3);
        let mut ledger = Ledger::new();
        ledger.committed([(m[0], "a".into()), (m[1], "a".into())]);
        ledger.committed([(m[2], "b".into())]);
        let d = deliver(&[(&m[0], "a"), (&m[2], "b"), (&m[0], "a"), (&m[1], "a")]);
        assert_eq!(
            ledger.check(&d, true),
            Ok(Verdict {
                delivered: 4,
                duplicates: 1
            })
        );
        assert_eq!(
            ledger.check(&d, false).unwrap_err().0,
            vec![Violation::Duplicates(1)]
        );
    }

    #[test]
    fn the_ledger_finds_loss_reordering_late_repeats_and_rolled_back_messages() {
        let m = ids(4);
        let mut ledger = Ledger::new();
        ledger.committed([(m[0], "a".into()), (m[1], "a".into()), (m[2], "a".into())]);
        ledger.rolled_back([m[3]]);
        let lost = deliver(&[(&m[0], "a"), (&m[2], "a")]);
        let reordered = deliver(&[(&m[1], "a"), (&m[0], "a"), (&m[2], "a")]);
        let late_repeat = deliver(&[(&m[0], "a"), (&m[1], "a"), (&m[0], "a"), (&m[2], "a")]);
        let ghost = deliver(&[(&m[0], "a"), (&m[1], "a"), (&m[2], "a"), (&m[3], "a")]);
        for d in [lost, reordered, late_repeat] {
            let v = ledger.check(&d, true).unwrap_err();
            assert!(matches!(v.0[..], [Violation::KeyOrder { .. }]), "{v}");
        }
        assert_eq!(
            ledger.check(&ghost, true).unwrap_err().0,
            vec![Violation::RolledBackDelivered(m[3])]
        );
    }
}
