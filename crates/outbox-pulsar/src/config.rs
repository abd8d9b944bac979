//! Where the broker is and how to talk to it.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach a Pulsar cluster. Build with [`PulsarConfig::new`], which checks the
/// URL, then adjust the public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct PulsarConfig {
    /// `pulsar://host[:6650]` or, with the `tls` feature, `pulsar+ssl://host[:6651]`:
    /// any broker (or proxy) of the cluster; topics are looked up from there.
    pub service_url: ServiceUrl,
    /// Token authentication (`auth_method_name = "token"`), or none.
    pub token: Option<String>,
    /// PEM file of extra root certificates for `pulsar+ssl://` (a private CA); the
    /// Mozilla roots are always trusted.
    pub tls_ca_file: Option<PathBuf>,
    /// `tenant/namespace` of topic names without a scheme: a route's topic `orders`
    /// becomes `persistent://public/default/orders`.
    pub namespace: String,
    /// Connect, lookup, create-producer and subscribe requests give up after this.
    pub operation_timeout: Duration,
    /// A publish call answers within this time: a message the broker has not
    /// acknowledged by then is a transient failure. Keep it below the relay's
    /// `publish_timeout` (10 s by default), so the relay sees per-message outcomes.
    pub send_timeout: Duration,
    /// A ping goes out after this much silence; a connection silent for twice as long
    /// is considered dead.
    pub keep_alive: Duration,
    /// Consumers: how many messages the broker may push ahead of the handler, per
    /// partition. Smaller spreads a Key_Shared subscription's keys more evenly over
    /// its members (a member keeps what it was already sent); larger hides latency.
    pub receiver_queue: u32,
    /// Publishers: whether sequence ids let a broker with deduplication enabled drop
    /// a message sent twice. Default [`Deduplication::Off`].
    pub deduplication: Deduplication,
}

/// How a publisher numbers its messages (Pulsar's producer sequence ids).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Deduplication {
    /// One producer per topic partition, named by the broker, numbering its messages
    /// 0, 1, 2… With deduplication enabled on the namespace, the broker drops only a
    /// message the producer itself sends twice within one connection. A message sent
    /// again after a relay crash or a lost acknowledgement is stored twice; consumers'
    /// inboxes absorb the copy.
    #[default]
    Off,
    /// For namespaces with deduplication enabled (`brokerDeduplicationEnabled`, or
    /// `pulsar-admin namespaces set-deduplication`): each message is sent by a
    /// producer named `{prefix}/{service}/{partition key}` with the message's outbox
    /// position ([`ClaimedMessage::seq`](outbox_ports::ClaimedMessage::seq)) as its
    /// sequence id. A key's positions only grow from one delivery to the next, so the
    /// broker's last sequence id for the name says exactly whether this message is
    /// stored already: a re-publish after a relay crash or a lost acknowledgement is
    /// recognised and not stored twice.
    ///
    /// Costs: a producer is created and closed per message (three round trips,
    /// pipelined over the batch), and the broker keeps one entry per key of its
    /// deduplication state (until `brokerDeduplicationProducerInactivityTimeoutMinutes`).
    /// After recreating or restoring an outbox table (positions start again), change
    /// `prefix`, or old sequence ids would hide new messages. docs/pulsar.md has the
    /// reasoning.
    PerKey {
        /// Names the producers; e.g. the deployment's name.
        prefix: String,
    },
}

impl std::fmt::Debug for PulsarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarConfig")
            .field("service_url", &self.service_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("namespace", &self.namespace)
            .field("operation_timeout", &self.operation_timeout)
            .field("send_timeout", &self.send_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("receiver_queue", &self.receiver_queue)
            .field("deduplication", &self.deduplication)
            .finish()
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PulsarConfigError {
    /// The service URL is not `pulsar://host[:port]` or `pulsar+ssl://host[:port]`.
    #[error("invalid Pulsar service URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `pulsar+ssl://` needs the crate's `tls` feature.
    #[error("{0:?} needs TLS: enable outbox-pulsar's `tls` feature")]
    TlsDisabled(String),
    /// `Deduplication::PerKey` needs a prefix for the producer names.
    #[error("Deduplication::PerKey needs a non-empty prefix")]
    EmptyPrefix,
    /// `receiver_queue` is below 2 (permits are renewed when half are used).
    #[error("receiver_queue must be at least 2, not {0}")]
    ReceiverQueue(u32),
    /// A timeout or interval is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// The namespace is not `tenant/namespace`.
    #[error("invalid namespace {0:?}: expected `tenant/namespace`")]
    InvalidNamespace(String),
}

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `pulsar+ssl://`.
    pub tls: bool,
}

impl ServiceUrl {
    /// Parses `pulsar://host[:port]` (port 6650 by default) or
    /// `pulsar+ssl://host[:port]` (6651). A list of hosts is not supported: put a
    /// load balancer or proxy in front of the cluster.
    pub fn parse(url: &str) -> Result<Self, PulsarConfigError> {
        let invalid = |reason| PulsarConfigError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("pulsar://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("pulsar+ssl://") {
            (true, rest)
        } else {
            return Err(invalid("the scheme must be pulsar:// or pulsar+ssl://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', ',', '@', '?', '#']) {
            return Err(invalid("expected only host[:port] after the scheme"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') || host.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
            ),
            _ => (authority, if tls { 6651 } else { 6650 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "pulsar+ssl" } else { "pulsar" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl PulsarConfig {
    /// A configuration for the cluster at `service_url`, with the defaults: no
    /// authentication, namespace `public/default`, 10 s operations, 8 s sends, 30 s
    /// keep-alive, a receiver queue of 500.
    pub fn new(service_url: &str) -> Result<Self, PulsarConfigError> {
        let config = Self {
            service_url: ServiceUrl::parse(service_url)?,
            token: None,
            tls_ca_file: None,
            namespace: "public/default".to_owned(),
            operation_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(8),
            keep_alive: Duration::from_secs(30),
            receiver_queue: 500,
            deduplication: Deduplication::Off,
        };
        config.validate()?;
        Ok(config)
    }

    /// Authenticates with `token` (a JWT, for Pulsar's token authentication).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Checks everything [`new`](Self::new) cannot: run again after changing fields
    /// (the publisher and the source call it).
    pub fn validate(&self) -> Result<(), PulsarConfigError> {
        if self.service_url.tls && !cfg!(feature = "tls") {
            return Err(PulsarConfigError::TlsDisabled(self.service_url.to_string()));
        }
        for (name, value) in [
            ("operation_timeout", self.operation_timeout),
            ("send_timeout", self.send_timeout),
            ("keep_alive", self.keep_alive),
        ] {
            if value.is_zero() {
                return Err(PulsarConfigError::ZeroDuration(name));
            }
        }
        if let Deduplication::PerKey { prefix } = &self.deduplication
            && prefix.is_empty()
        {
            return Err(PulsarConfigError::EmptyPrefix);
        }
        if self.receiver_queue < 2 {
            return Err(PulsarConfigError::ReceiverQueue(self.receiver_queue));
        }
        let mut parts = self.namespace.split('/');
        let valid = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(tenant), Some(ns), None) if !tenant.is_empty() && !ns.is_empty()
        );
        if !valid {
            return Err(PulsarConfigError::InvalidNamespace(self.namespace.clone()));
        }
        Ok(())
    }

    /// The full topic name: `topic` unchanged when it has a scheme
    /// (`persistent://…`, `non-persistent://…`), else `persistent://{namespace}/{topic}`.
    pub fn topic_name(&self, topic: &str) -> String {
        if topic.contains("://") {
            topic.to_owned()
        } else {
            format!("persistent://{}/{topic}", self.namespace)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports() {
        let url = ServiceUrl::parse("pulsar://broker").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.tls),
            ("broker", 6650, false)
        );
        let url = ServiceUrl::parse("pulsar+ssl://broker:7000/").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.tls),
            ("broker", 7000, true)
        );
        assert_eq!(url.to_string(), "pulsar+ssl://broker:7000");
        let url = ServiceUrl::parse("pulsar://[::1]:6650").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 6650));
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, needle) in [
            ("http://broker", "scheme"),
            ("pulsar://a:1,b:2", "host[:port]"),
            ("pulsar://broker:0", "port"),
            ("pulsar://broker:http", "port"),
            ("pulsar://", "host is empty"),
        ] {
            let err = ServiceUrl::parse(url).unwrap_err();
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = PulsarConfig::new("pulsar://127.0.0.1:6650").unwrap();
        config.send_timeout = Duration::ZERO;
        assert_eq!(
            config.validate(),
            Err(PulsarConfigError::ZeroDuration("send_timeout"))
        );
        config.send_timeout = Duration::from_secs(1);
        config.namespace = "public".into();
        assert!(matches!(
            config.validate(),
            Err(PulsarConfigError::InvalidNamespace(_))
        ));
    }

    #[test]
    fn topic_names_get_the_namespace_and_tokens_stay_out_of_debug() {
        let config = PulsarConfig::new("pulsar://h")
            .unwrap()
            .with_token("secret");
        assert_eq!(
            config.topic_name("orders"),
            "persistent://public/default/orders"
        );
        assert_eq!(
            config.topic_name("non-persistent://t/n/x"),
            "non-persistent://t/n/x"
        );
        assert!(!format!("{config:?}").contains("secret"));
    }
}
