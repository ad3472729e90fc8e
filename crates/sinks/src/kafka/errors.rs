//! Which librdkafka errors a retry of the same batch can cure.
//!
//! librdkafka already retries everything retriable inside `message.timeout.ms`, so an error
//! that reaches a delivery report is final *for that attempt*. Whether the next attempt
//! (the sink worker resending the batch after backoff) can succeed depends on the cause:
//! brokers down, leaders moving, timeouts and full queues pass; an oversized message, a
//! topic the credentials may not write, or a topic that does not exist (with broker-side
//! auto-creation off) do not, until an operator acts. The permanent list follows Vector's
//! Kafka sink, plus authentication failures.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// True when resending the batch later may succeed.
pub(crate) fn is_transient(error: &KafkaError) -> bool {
    match error.rdkafka_error_code() {
        Some(code) => code_is_transient(code),
        // Client creation, configuration, and the other non-code errors come from the
        // local setup, which a resend does not change; a cancelled delivery future means
        // the producer went away (rebuilt after a fatal error), which a resend does cure.
        None => matches!(error, KafkaError::Canceled),
    }
}

/// True when an error with this code (in a delivery report or a metadata answer) may pass.
pub(crate) fn code_is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    !matches!(
        code,
        InvalidMessage
            | InvalidMessageSize
            | MessageSizeTooLarge
            | MessageBatchTooLarge
            | InvalidRecord
            | InvalidTimestamp
            | InvalidRequiredAcks
            | UnsupportedForMessageFormat
            | UnsupportedCompressionType
            | PolicyViolation
            | InvalidTopic
            | UnknownTopicOrPartition
            | UnknownTopic
            | UnknownPartition
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | SaslAuthenticationFailed
            | UnsupportedSASLMechanism
            | Authentication
            | InvalidArgument
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as C;

    fn produce(code: C) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn outages_and_timeouts_are_transient() {
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::MessageTimedOut,
            C::QueueFull,
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::PurgeQueue,
            C::PurgeInflight,
            C::Fatal,
            C::OutOfOrderSequenceNumber,
            C::UnknownProducerId,
        ] {
            assert!(is_transient(&produce(code)), "{code:?}");
        }
        assert!(is_transient(&KafkaError::Canceled));
    }

    #[test]
    fn refusals_an_operator_must_fix_are_permanent() {
        for code in [
            C::MessageSizeTooLarge,
            C::TopicAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::InvalidRecord,
            C::SaslAuthenticationFailed,
            C::Authentication,
            C::PolicyViolation,
        ] {
            assert!(!is_transient(&produce(code)), "{code:?}");
        }
        assert!(!is_transient(&KafkaError::ClientCreation("x".into())));
    }
}
