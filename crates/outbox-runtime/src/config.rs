use outbox_domain::{BackoffPolicy, DEFAULT_MAX_ERROR_LEN};
use std::time::Duration;

/// A relay configuration that cannot work. A caller bug: fix the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// The publish timeout must leave time to settle before the lease runs out.
    #[error("publish_timeout ({publish:?}) must be shorter than the lease ({lease:?})")]
    PublishOutlivesLease {
        /// The configured publish timeout.
        publish: Duration,
        /// The configured lease.
        lease: Duration,
    },
    /// The relay id must be non-empty.
    #[error("relay_id must not be empty")]
    EmptyRelayId,
    /// A name that must be non-empty is blank.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A name broke its charset or length rule.
    #[error(transparent)]
    InvalidName(#[from] outbox_domain::InvalidIdentifier),
}

/// How a [`Relay`](crate::Relay) works. Start from [`RelayConfig::default`] and change
/// fields; [`Relay::new`](crate::Relay::new) validates the result.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// This relay instance, recorded in every lease it takes (default: `relay-<pid>`).
    pub relay_id: String,
    /// Messages claimed per batch (default 100).
    pub batch_size: usize,
    /// How long an idle relay waits before polling again; a
    /// [`RelayWaker`](crate::RelayWaker) cuts the wait short (default 1 s).
    pub poll_interval: Duration,
    /// The adaptive poll: at start and after a claim that found work, the next idle
    /// wait is this short and doubles with each empty claim up to `poll_interval` (default 10 ms;
    /// capped at `poll_interval`). So a busy relay notices new work within milliseconds
    /// even without a wake (MySQL and SQLite have no cross-process wake), and an idle
    /// one polls at `poll_interval`. While a loop has batches in flight, each one that
    /// settles prompts its next claim instead.
    pub min_poll_interval: Duration,
    /// How long a claim holds (default 30 s).
    pub lease: Duration,
    /// Upper bound on one publish call; must be shorter than the lease (default 10 s).
    pub publish_timeout: Duration,
    /// Concurrent claim loops in this process (default 1). One loop with a
    /// `pipeline_depth` above 1 usually serves better than several: its claims do not
    /// compete with each other.
    pub concurrency: usize,
    /// Batches each claim loop keeps in flight (default 4): the loop claims the next
    /// batch while earlier ones are at the broker, so a message committed meanwhile
    /// waits for one claim, not for a whole claim–publish–settle cycle. Per-key order
    /// is unaffected: the claim never hands out a key whose earlier message is still
    /// unsettled. After a full batch the loop claims again at once, unless such claims
    /// have been coming back short (every key with due messages already in flight, at
    /// this relay or others): then it mostly waits for a batch to settle first, as at
    /// depth 1. 1 claims, publishes and settles in turn. A loop uses up to
    /// `1 + pipeline_depth` database connections at once (a claim and the settlements),
    /// so size a pool it shares with writers for them.
    pub pipeline_depth: usize,
    /// Delays between attempts (default: the `seconds` preset).
    pub backoff: BackoffPolicy,
    /// Bound on stored error text, in characters (default 2000).
    pub max_error_len: usize,
    /// How often the lease sweeper looks for expired leases (default 5 s).
    pub sweep_interval: Duration,
    /// How long shutdown waits for the batches in flight (default 15 s).
    pub drain_timeout: Duration,
    /// How long published and consumed messages are kept before the sweeper deletes
    /// them (default 7 days; `None` keeps them forever). Dead letters are never deleted.
    pub retention: Option<Duration>,
    /// Messages deleted per retention statement (default 1000), so that no statement
    /// holds locks for long. A purge runs at most 10 such statements; one that ran them
    /// all runs again at the next sweep, so retention deletes up to 10 × `purge_batch`
    /// messages per `sweep_interval` (2,000/s by default) until it has caught up.
    pub purge_batch: usize,
    /// How often the sweeper applies the retention policy once it has caught up
    /// (default 10 minutes). Behind, it purges at every sweep (see `purge_batch`).
    pub retention_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            relay_id: format!("relay-{}", std::process::id()),
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            min_poll_interval: Duration::from_millis(10),
            lease: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            concurrency: 1,
            pipeline_depth: 4,
            backoff: BackoffPolicy::default(),
            max_error_len: DEFAULT_MAX_ERROR_LEN,
            sweep_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            purge_batch: 1000,
            retention_interval: Duration::from_secs(600),
        }
    }
}

impl RelayConfig {
    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.relay_id.trim().is_empty() {
            return Err(ConfigError::EmptyRelayId);
        }
        for (name, n) in [
            ("batch_size", self.batch_size),
            ("concurrency", self.concurrency),
            ("pipeline_depth", self.pipeline_depth),
            ("purge_batch", self.purge_batch),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, d) in [
            ("poll_interval", self.poll_interval),
            ("min_poll_interval", self.min_poll_interval),
            ("lease", self.lease),
            ("publish_timeout", self.publish_timeout),
            ("sweep_interval", self.sweep_interval),
            ("retention_interval", self.retention_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            return Err(ConfigError::ZeroDuration("retention"));
        }
        if self.publish_timeout >= self.lease {
            return Err(ConfigError::PublishOutlivesLease {
                publish: self.publish_timeout,
                lease: self.lease,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_named() {
        assert_eq!(RelayConfig::default().validate(), Ok(()));
        let d = RelayConfig::default;
        let c = RelayConfig {
            batch_size: 0,
            ..d()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("batch_size")));
        let c = RelayConfig {
            publish_timeout: d().lease,
            ..d()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PublishOutlivesLease { .. })
        ));
        let c = RelayConfig {
            relay_id: " ".into(),
            ..d()
        };
        assert_eq!(c.validate(), Err(ConfigError::EmptyRelayId));
    }
}
