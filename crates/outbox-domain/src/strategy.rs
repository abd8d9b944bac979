//! Persistence strategies: whether a message is stored, published, or both.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a message is persisted and delivered. Chosen per route or per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceStrategy {
    /// Stored in the caller's transaction as an audit record; never published.
    DbOnly,
    /// The transactional outbox: stored in the caller's transaction, then published by
    /// a relay at least once. The default.
    #[default]
    DbAndPublish,
    /// Not stored: published directly with bounded retries and the outcome returned to
    /// the caller. **Gives up the transactional guarantee**: a crash or a rollback after
    /// the call can leave the broker and the database disagreeing.
    PublishOnly,
}

impl PersistenceStrategy {
    /// Whether the message is written to the outbox table.
    pub const fn is_stored(self) -> bool {
        matches!(self, Self::DbOnly | Self::DbAndPublish)
    }

    /// Whether the relay delivers stored messages of this strategy.
    pub const fn is_relayed(self) -> bool {
        matches!(self, Self::DbAndPublish)
    }

    /// The stable configuration name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DbOnly => "db_only",
            Self::DbAndPublish => "db_and_publish",
            Self::PublishOnly => "publish_only",
        }
    }
}

impl fmt::Display for PersistenceStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name other than `db_only`, `db_and_publish` or `publish_only`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown persistence strategy `{0}`; expected db_only, db_and_publish or publish_only")]
pub struct UnknownStrategy(pub String);

impl FromStr for PersistenceStrategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::DbOnly, Self::DbAndPublish, Self::PublishOnly]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_transactional_outbox() {
        assert_eq!(
            PersistenceStrategy::default(),
            PersistenceStrategy::DbAndPublish
        );
        assert!(
            PersistenceStrategy::DbOnly.is_stored() && !PersistenceStrategy::DbOnly.is_relayed()
        );
        assert!(!PersistenceStrategy::PublishOnly.is_stored());
        assert_eq!("publish_only".parse(), Ok(PersistenceStrategy::PublishOnly));
        assert!("both".parse::<PersistenceStrategy>().is_err());
    }
}
