//! Delivery report → [`PublishError`]: which Kafka errors are worth retrying.

use outbox_ports::PublishError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Whether a producer error code can never succeed on retry: the message, topic or
/// credentials are wrong, so the message becomes a dead letter at once.
pub(crate) fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTopic
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::UnknownPartition
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidRequiredAcks
            | C::PolicyViolation
            | C::InvalidArgument
            | C::UnsupportedForMessageFormat
    )
}

/// The outcome of a failed produce. Unknown codes count as transient: the relay's
/// attempt limit still bounds them, and a wrong "permanent" would dead-letter a
/// message that only needed a moment.
pub(crate) fn publish_error(err: &KafkaError) -> PublishError {
    let text = format!("kafka: {err}");
    match err.rdkafka_error_code() {
        Some(code) if is_permanent(code) => PublishError::permanent(text),
        _ => PublishError::transient(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_ports::PublishErrorKind;

    #[test]
    fn maps_the_issue_examples() {
        let kind = |code| publish_error(&KafkaError::MessageProduction(code)).kind;
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::BrokerNotAvailable,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::Fatal,
        ] {
            assert_eq!(kind(code), PublishErrorKind::Transient, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidTopic,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            assert_eq!(kind(code), PublishErrorKind::Permanent, "{code:?}");
        }
        let text = publish_error(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ))
        .message;
        assert!(text.contains("too large"), "{text}");
    }
}
