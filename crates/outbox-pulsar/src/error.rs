//! What can go wrong talking to a broker, and which failures are worth retrying.

use outbox_ports::PublishError;

use crate::proto::ServerError;

/// A failed broker operation (connect, lookup, create a producer, subscribe, send).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PulsarError {
    /// The broker could not be reached, or the connection was lost; retry.
    #[error("connection to {url} failed: {message}")]
    Connection {
        /// The broker.
        url: String,
        /// What happened.
        message: String,
    },
    /// The broker did not answer within the configured time; retry.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was attempted.
        operation: &'static str,
        /// The configured limit.
        after: std::time::Duration,
    },
    /// The broker refused the request.
    #[error("the broker refused {operation}: {code:?}: {message}")]
    Server {
        /// What was attempted.
        operation: &'static str,
        /// Pulsar's error code.
        code: ServerErrorCode,
        /// The broker's description.
        message: String,
    },
    /// The message is larger than the broker accepts; retrying cannot help.
    #[error("the message is {size} bytes with its metadata; the broker accepts at most {limit}")]
    TooLarge {
        /// Metadata and payload.
        size: usize,
        /// The broker's `max_message_size`.
        limit: usize,
    },
    /// The broker answered something this client does not understand.
    #[error("protocol error during {operation}: {message}")]
    Protocol {
        /// What was attempted.
        operation: &'static str,
        /// What was unexpected.
        message: String,
    },
}

/// Pulsar's `ServerError` codes, re-exported so callers can match on them.
pub type ServerErrorCode = ServerError;

impl PulsarError {
    /// Whether trying again (after a new lookup) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connection { .. } | Self::Timeout { .. } => true,
            Self::Server { code, .. } => is_retryable_code(*code),
            Self::Protocol { .. } | Self::TooLarge { .. } => false,
        }
    }

    /// The publish outcome for a message this error stopped.
    pub(crate) fn to_publish_error(&self) -> PublishError {
        if self.is_retryable() {
            PublishError::transient(self.to_string())
        } else {
            PublishError::permanent(self.to_string())
        }
    }
}

/// The transient/permanent table for the broker's error codes (docs/pulsar.md).
pub(crate) fn is_retryable_code(code: ServerError) -> bool {
    use ServerError::*;
    match code {
        // Retrying cannot help: the request, the credentials or the topic is wrong.
        AuthenticationError
        | AuthorizationError
        | UnsupportedVersionError
        | TopicNotFound
        | InvalidTopicName
        | IncompatibleSchema
        | TopicTerminatedError
        | NotAllowedError
        | ProducerFenced
        | SubscriptionNotFound => false,
        // The broker or its storage is busy, moving or recovering; a quota may free
        // up; another producer of the same name may go away; a checksum error is a
        // corrupted transfer.
        UnknownError
        | MetadataError
        | PersistenceError
        | ConsumerBusy
        | ServiceNotReady
        | ProducerBlockedQuotaExceededError
        | ProducerBlockedQuotaExceededException
        | ChecksumError
        | ConsumerNotFound
        | TooManyRequests
        | ProducerBusy
        | ConsumerAssignError
        | TransactionCoordinatorNotFound
        | InvalidTxnStatus
        | TransactionConflict
        | TransactionNotFound => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_topics_are_permanent_busy_brokers_transient() {
        assert!(!is_retryable_code(ServerError::AuthorizationError));
        assert!(!is_retryable_code(ServerError::TopicNotFound));
        assert!(!is_retryable_code(ServerError::TopicTerminatedError));
        assert!(is_retryable_code(ServerError::ServiceNotReady));
        assert!(is_retryable_code(ServerError::PersistenceError));
        assert!(is_retryable_code(ServerError::ProducerBusy));
        let lost = PulsarError::Connection {
            url: "pulsar://x:6650".into(),
            message: "reset".into(),
        };
        assert!(lost.to_publish_error().is_transient());
    }
}
