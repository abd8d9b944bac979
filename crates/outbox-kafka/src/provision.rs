//! Topic provisioning: create the topics the routes name, and verify the ones that
//! exist.

use crate::config::{KafkaConfig, KafkaConfigError};
use outbox_domain::{RouteRegistry, TopicName};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A topic the service needs, with the layout it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicSpec {
    /// The topic.
    pub name: String,
    /// Expected partition count; `None` accepts any and creates with the broker's
    /// default.
    pub partitions: Option<u32>,
    /// Expected replication factor; `None` accepts any and creates with the broker's
    /// default.
    pub replication: Option<u16>,
}

impl TopicSpec {
    /// A topic with no layout requirement.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: None,
            replication: None,
        }
    }

    /// Requires `partitions` partitions.
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Requires replication factor `replication`.
    pub fn with_replication(mut self, replication: u16) -> Self {
        self.replication = Some(replication);
        self
    }

    /// One spec per distinct topic of `routes`, with the services' `topic_partitions`
    /// and `topic_replication`. Two services that share a topic must not ask for
    /// different layouts.
    pub fn from_routes(routes: &RouteRegistry) -> Result<Vec<TopicSpec>, ProvisionError> {
        let mut specs: BTreeMap<String, TopicSpec> = BTreeMap::new();
        for service in routes.services() {
            let spec = TopicSpec {
                name: service.topic.to_string(),
                partitions: service.topic_partitions.map(|n| n.get()),
                replication: service.topic_replication.map(|n| n.get()),
            };
            match specs.get(&spec.name) {
                Some(earlier) if *earlier != spec => {
                    return Err(ProvisionError::ConflictingLayout {
                        detail: format!("{earlier:?} vs {spec:?}"),
                        topic: spec.name,
                    });
                }
                _ => {
                    specs.insert(spec.name.clone(), spec);
                }
            }
        }
        Ok(specs.into_values().collect())
    }
}

/// Whether [`ensure_topics`] may create missing topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Create missing topics with their layout, then verify every topic.
    CreateMissing,
    /// Only verify: a missing topic is an error (for clusters where topics are
    /// managed elsewhere).
    VerifyOnly,
}

/// A topic as found (or created) on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicState {
    /// The topic.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Its replication factor (replicas of its first partition).
    pub replication: u16,
    /// Whether this call created it.
    pub created: bool,
}

/// Why the topics are not ready. Nothing is created when the check of the request
/// itself fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The Kafka configuration is unusable.
    #[error(transparent)]
    Config(#[from] KafkaConfigError),
    /// A topic name or layout is invalid (configuration bug).
    #[error("topic `{topic}`: {detail}")]
    InvalidSpec {
        /// The topic.
        topic: String,
        /// What is wrong.
        detail: String,
    },
    /// Two routes ask for different layouts of one topic (configuration bug).
    #[error("topic `{topic}` is configured twice with different layouts: {detail}")]
    ConflictingLayout {
        /// The topic.
        topic: String,
        /// The two layouts.
        detail: String,
    },
    /// Topics do not exist and provisioning is off.
    #[error(
        "topics missing on the broker: {}; create them, or enable topic provisioning",
        .0.join(", ")
    )]
    Missing(Vec<String>),
    /// An existing topic's layout differs from the configured one. Changing the
    /// partition count moves keys to other partitions and breaks per-key order, so
    /// the adapter never does it; fix the configuration or migrate the topic.
    #[error("topic `{topic}` has {setting} {actual}, configured {expected}")]
    Mismatch {
        /// The topic.
        topic: String,
        /// `"partitions"` or `"replication factor"`.
        setting: &'static str,
        /// The configured value.
        expected: u32,
        /// The broker's value.
        actual: u32,
    },
    /// The broker refused to create a topic.
    #[error("creating topic `{topic}` failed: {reason}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's reason.
        reason: String,
    },
    /// The broker could not be asked (unreachable, timed out). Retry later.
    #[error("kafka metadata request failed: {0}")]
    Broker(String),
}

/// Makes sure every topic in `topics` exists with its layout: creates the missing
/// ones ([`Provisioning::CreateMissing`]) or reports them
/// ([`Provisioning::VerifyOnly`]), then checks partition counts and replication
/// factors. Safe to run from several relays at once (a topic another one just
/// created counts as existing).
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &[TopicSpec],
    mode: Provisioning,
) -> Result<Vec<TopicState>, ProvisionError> {
    for spec in topics {
        check_spec(spec)?;
    }
    config.validate(&[])?;
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        config
            .client_config(&[])
            .create()
            .map_err(|e| KafkaConfigError::Client(e.to_string()))?,
    );
    let found = layouts(&admin, config.request_timeout).await?;
    let missing: Vec<&TopicSpec> = topics
        .iter()
        .filter(|t| !found.contains_key(&t.name))
        .collect();
    if !missing.is_empty() && mode == Provisioning::VerifyOnly {
        return Err(ProvisionError::Missing(
            missing.iter().map(|t| t.name.clone()).collect(),
        ));
    }
    if !missing.is_empty() {
        create(&admin, &missing, config.request_timeout).await?;
    }
    // Newly created topics take a moment to show up in metadata.
    let deadline = Instant::now() + config.request_timeout;
    let found = loop {
        let found = layouts(&admin, config.request_timeout).await?;
        let visible = topics.iter().all(|t| found.contains_key(&t.name));
        if visible || Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    topics
        .iter()
        .map(|spec| {
            let &(partitions, replication) =
                found
                    .get(&spec.name)
                    .ok_or_else(|| ProvisionError::Create {
                        topic: spec.name.clone(),
                        reason: "created, but not visible in metadata in time".into(),
                    })?;
            let checks = [
                ("partitions", spec.partitions, partitions),
                (
                    "replication factor",
                    spec.replication.map(u32::from),
                    u32::from(replication),
                ),
            ];
            for (setting, expected, actual) in checks {
                if let Some(expected) = expected
                    && expected != actual
                {
                    return Err(ProvisionError::Mismatch {
                        topic: spec.name.clone(),
                        setting,
                        expected,
                        actual,
                    });
                }
            }
            Ok(TopicState {
                name: spec.name.clone(),
                partitions,
                replication,
                created: missing.iter().any(|m| m.name == spec.name),
            })
        })
        .collect()
}

fn check_spec(spec: &TopicSpec) -> Result<(), ProvisionError> {
    let invalid = |detail: String| ProvisionError::InvalidSpec {
        topic: spec.name.clone(),
        detail,
    };
    TopicName::parse("topic", &spec.name).map_err(|e| invalid(e.to_string()))?;
    if spec.partitions == Some(0) || spec.replication == Some(0) {
        return Err(invalid(
            "partitions and replication must be at least 1".into(),
        ));
    }
    if spec.partitions.is_some_and(|p| i32::try_from(p).is_err()) {
        return Err(invalid("too many partitions".into()));
    }
    Ok(())
}

/// Partition count and replication factor of every topic on the broker.
async fn layouts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
) -> Result<BTreeMap<String, (u32, u16)>, ProvisionError> {
    let admin = Arc::clone(admin);
    let metadata: Metadata =
        tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|e| ProvisionError::Broker(e.to_string()))?
            .map_err(|e| ProvisionError::Broker(e.to_string()))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let partitions = u32::try_from(t.partitions().len()).unwrap_or(u32::MAX);
            let replication = u16::try_from(t.partitions()[0].replicas().len()).unwrap_or(0);
            (t.name().to_owned(), (partitions, replication))
        })
        .collect())
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    missing: &[&TopicSpec],
    timeout: Duration,
) -> Result<(), ProvisionError> {
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            // -1 asks the broker for its default (KIP-464). Both fit: checked above.
            let partitions = t.partitions.map_or(-1, |p| i32::try_from(p).unwrap_or(-1));
            let replication = t.replication.map_or(-1, i32::from);
            NewTopic::new(&t.name, partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| ProvisionError::Broker(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(ProvisionError::Create {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
