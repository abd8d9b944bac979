//! [`KafkaConfig`]: connection settings and librdkafka passthrough.

use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// A Kafka configuration the adapter refuses. A caller bug: fix the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaConfigError {
    /// No bootstrap servers.
    #[error("bootstrap_servers must not be empty")]
    NoBootstrapServers,
    /// A duration that must be positive is zero or too long for librdkafka.
    #[error("{name} must be between 1 ms and {max:?}, got {value:?}")]
    Duration {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: Duration,
        /// The largest accepted value.
        max: Duration,
    },
    /// A property the adapter sets itself and a caller must not override.
    #[error("property `{0}` is managed by outbox-kafka and cannot be overridden: {1}")]
    Managed(String, &'static str),
    /// librdkafka rejected the configuration.
    #[error("librdkafka refused the configuration: {0}")]
    Client(String),
}

/// How the adapter connects to Kafka.
///
/// The fields the adapter needs are typed; everything else (TLS, SASL, compression,
/// linger, buffer sizes) passes through to librdkafka with
/// [`with_property`](Self::with_property), e.g. `security.protocol=SASL_SSL`,
/// `sasl.mechanisms=SCRAM-SHA-512`, `ssl.ca.location=/etc/ssl/ca.pem` (TLS and SASL need
/// the crate's `ssl` / `sasl` features).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// How long the producer tries to deliver one message (`message.timeout.ms`)
    /// before it reports a transient failure. Default 7 s, which keeps
    /// `KafkaPublisher::max_publish_time` (1.25 × this + 1 s) below the relay's default
    /// `publish_timeout` of 10 s, so every message gets its own outcome.
    pub delivery_timeout: Duration,
    /// The most the producer buffers, in KiB (`queue.buffering.max.kbytes`); a full
    /// buffer makes `publish` wait up to `delivery_timeout` for room. Default 64 MiB.
    pub max_buffered_kbytes: u32,
    /// Timeout of metadata and admin requests. Default 10 s.
    pub request_timeout: Duration,
    /// Extra librdkafka properties, applied last.
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Defaults for `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            delivery_timeout: Duration::from_secs(7),
            max_buffered_kbytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
        }
    }

    /// Adds a librdkafka property (see the librdkafka `CONFIGURATION.md`).
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Checks the typed fields and that `properties` does not override a setting
    /// listed in `managed` (with the reason it is managed).
    pub(crate) fn validate(
        &self,
        managed: &[(&str, &'static str)],
    ) -> Result<(), KafkaConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(KafkaConfigError::NoBootstrapServers);
        }
        let max = Duration::from_millis(i32::MAX as u64);
        for (name, value) in [
            ("delivery_timeout", self.delivery_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value < Duration::from_millis(1) || value > max {
                return Err(KafkaConfigError::Duration { name, value, max });
            }
        }
        for (key, why) in managed {
            if self.properties.contains_key(*key) {
                return Err(KafkaConfigError::Managed((*key).to_owned(), why));
            }
        }
        Ok(())
    }

    /// The librdkafka configuration: bootstrap servers, `base` (the component's own
    /// settings), then the passthrough properties.
    pub(crate) fn client_config(&self, base: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in base {
            config.set(*key, value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

pub(crate) fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_name_what_to_fix() {
        let managed = [("message.timeout.ms", "set KafkaConfig::delivery_timeout")];
        assert_eq!(
            KafkaConfig::new(" ").validate(&managed),
            Err(KafkaConfigError::NoBootstrapServers)
        );
        let mut zero = KafkaConfig::new("k:9092");
        zero.delivery_timeout = Duration::ZERO;
        assert!(matches!(
            zero.validate(&managed),
            Err(KafkaConfigError::Duration {
                name: "delivery_timeout",
                ..
            })
        ));
        let overridden = KafkaConfig::new("k:9092").with_property("message.timeout.ms", "1");
        let err = overridden.validate(&managed).unwrap_err();
        assert!(
            err.to_string().contains("KafkaConfig::delivery_timeout"),
            "{err}"
        );
        let tuned = KafkaConfig::new("k:9092").with_property("linger.ms", "20");
        assert_eq!(tuned.validate(&managed), Ok(()));
        assert_eq!(
            tuned.client_config(&[]).get("linger.ms"),
            Some("20"),
            "passthrough properties reach librdkafka"
        );
    }
}
