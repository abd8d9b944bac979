//! `outbox relay`'s configuration: a TOML file, with environment variables overriding
//! any key, checked completely before the daemon does anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use outbox_domain::{BackoffPolicy, EventRouteConfig, RouteRegistry, RoutesConfig, ServiceRoute};
use outbox_runtime::RelayConfig;
use serde::Deserialize;

use crate::database::DATABASE_URL_ENV;

/// Environment variables starting with this override keys of the file: `OUTBOX__` then
/// the key path, sections separated by `__`, e.g. `OUTBOX__RELAY__BATCH_SIZE=200` or
/// `OUTBOX__BROKER__TOKEN=…`. Values are read as TOML values (`200`, `true`), or as a
/// string when they are not one.
pub(crate) const ENV_PREFIX: &str = "OUTBOX__";

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DaemonConfig {
    /// `postgres://…`, `mysql://…` or `sqlite:FILE`; `OUTBOX_DATABASE_URL` overrides it.
    pub(crate) database_url: String,
    /// Names this daemon in the leases it takes (default: `<hostname>-<pid>`).
    #[serde(default)]
    pub(crate) relay_id: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (`--metrics-addr` overrides).
    #[serde(default)]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// How often the backlog gauges are refreshed from the database (default 5000).
    #[serde(default = "default_stats_interval_ms")]
    pub(crate) stats_interval_ms: u64,
    #[serde(default)]
    pub(crate) relay: RelaySection,
    pub(crate) broker: BrokerSection,
    #[serde(default)]
    pub(crate) services: Vec<ServiceRoute>,
    #[serde(default)]
    pub(crate) events: Vec<EventRouteConfig>,
}

fn default_stats_interval_ms() -> u64 {
    5_000
}

/// `[relay]`: the relay workers of every outbox table. Unset keys keep
/// [`RelayConfig`]'s defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelaySection {
    batch_size: Option<usize>,
    concurrency: Option<usize>,
    poll_interval_ms: Option<u64>,
    lease_ms: Option<u64>,
    publish_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    /// Attempts before a message is dead.
    max_attempts: Option<u32>,
    /// First retry delay; doubles up to `backoff_cap_ms`.
    backoff_base_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
    /// Hours published messages are kept; 0 keeps them forever.
    retention_hours: Option<u64>,
}

/// `[broker]`: where the relays publish. Every kind is parsed in every build, so a
/// file is checked the same way; a kind whose feature is off is refused by [`load`].
#[derive(Deserialize)]
#[cfg_attr(not(all(feature = "kafka", feature = "pulsar")), allow(dead_code))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum BrokerSection {
    /// Kafka (the `kafka` feature).
    Kafka {
        bootstrap_servers: String,
        /// Create the routes' missing topics at start-up (default), or only check them.
        #[serde(default = "yes")]
        create_topics: bool,
        /// librdkafka properties (TLS, SASL, …).
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
    /// Pulsar (the `pulsar` feature).
    Pulsar {
        service_url: String,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        tls_ca_file: Option<PathBuf>,
        /// `tenant/namespace` of the routes' short topic names.
        #[serde(default)]
        namespace: Option<String>,
        /// Turns on `Deduplication::PerKey` with this producer-name prefix.
        #[serde(default)]
        deduplication_prefix: Option<String>,
    },
}

fn yes() -> bool {
    true
}

#[cfg(feature = "kafka")]
impl BrokerSection {
    /// The Kafka client settings, for a `kind = "kafka"` broker.
    pub(crate) fn kafka_config(&self) -> Option<outbox_kafka::KafkaConfig> {
        let Self::Kafka {
            bootstrap_servers,
            properties,
            ..
        } = self
        else {
            return None;
        };
        let mut config = outbox_kafka::KafkaConfig::new(bootstrap_servers.clone());
        for (key, value) in properties {
            config = config.with_property(key.clone(), value.clone());
        }
        Some(config)
    }
}

/// A configuration checked through: every part the daemon needs, built.
pub(crate) struct Checked {
    pub(crate) file: DaemonConfig,
    pub(crate) registry: RouteRegistry,
    pub(crate) relay: RelayConfig,
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field(
                "database_url",
                &outbox_sea_orm::redact_url(&self.database_url),
            )
            .field("relay_id", &self.relay_id)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BrokerSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka {
                bootstrap_servers, ..
            } => write!(f, "Kafka({bootstrap_servers})"),
            Self::Pulsar { service_url, .. } => write!(f, "Pulsar({service_url})"),
        }
    }
}

/// Reads `path`, applies the environment's overrides, and checks everything: types
/// and unknown keys (the error names the key, e.g. `relay.batch_size`), the routes, the
/// relay settings and the broker kind. Touches no database and no broker.
pub(crate) fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<Checked> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    apply_env(&mut table, env)?;
    let file: DaemonConfig =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            // toml's message may add lines (the table it was in); the key says it.
            let message = e.inner().to_string();
            let first = message.lines().next().unwrap_or_default().trim().to_owned();
            anyhow::anyhow!("configuration key `{key}`: {first}")
        })?;
    check(file)
}

/// Applies `OUTBOX__A__B=v` overrides (and `OUTBOX_DATABASE_URL`) to `table`.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, value) in env {
        let path: Vec<String> = if name == DATABASE_URL_ENV {
            vec!["database_url".to_owned()]
        } else if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            rest.split("__").map(str::to_ascii_lowercase).collect()
        } else {
            continue;
        };
        if path.iter().any(String::is_empty) {
            bail!("environment variable {name}: empty key segment");
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let (last, sections) = path.split_last().expect("checked non-empty above");
        let mut at = &mut *table;
        for section in sections {
            let entry = at
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry.as_table_mut().ok_or_else(|| {
                anyhow::anyhow!("environment variable {name}: `{section}` is not a section")
            })?;
        }
        at.insert(last.clone(), parsed);
    }
    Ok(())
}

fn check(file: DaemonConfig) -> anyhow::Result<Checked> {
    if file.database_url.trim().is_empty() {
        bail!("configuration key `database_url`: empty");
    }
    if file.services.is_empty() {
        bail!("configuration key `services`: no service is declared, so there is nothing to relay");
    }
    if file.stats_interval_ms == 0 {
        bail!("configuration key `stats_interval_ms`: must be greater than 0");
    }
    let registry = RouteRegistry::from_config(RoutesConfig {
        services: file.services.clone(),
        events: file.events.clone(),
    })
    .context("configuration keys `services` / `events`")?;
    let relay = relay_config(&file.relay, file.relay_id.clone())?;
    match &file.broker {
        BrokerSection::Kafka { .. } if !cfg!(feature = "kafka") => bail!(
            "configuration key `broker.kind`: this `outbox` was built without the `kafka` \
             feature (cargo install outbox-cli --features kafka)"
        ),
        BrokerSection::Pulsar { .. } if !cfg!(feature = "pulsar") => bail!(
            "configuration key `broker.kind`: this `outbox` was built without the `pulsar` \
             feature (cargo install outbox-cli --features pulsar)"
        ),
        _ => {}
    }
    Ok(Checked {
        file,
        registry,
        relay,
    })
}

fn relay_config(section: &RelaySection, relay_id: Option<String>) -> anyhow::Result<RelayConfig> {
    let mut config = RelayConfig::default();
    config.relay_id = relay_id.unwrap_or_else(default_relay_id);
    let ms = Duration::from_millis;
    if let Some(v) = section.batch_size {
        config.batch_size = v;
    }
    if let Some(v) = section.concurrency {
        config.concurrency = v;
    }
    if let Some(v) = section.poll_interval_ms {
        config.poll_interval = ms(v);
    }
    if let Some(v) = section.lease_ms {
        config.lease = ms(v);
    }
    if let Some(v) = section.publish_timeout_ms {
        config.publish_timeout = ms(v);
    }
    if let Some(v) = section.drain_timeout_ms {
        config.drain_timeout = ms(v);
    }
    if let Some(hours) = section.retention_hours {
        config.retention = (hours > 0).then(|| Duration::from_secs(hours * 3600));
    }
    if section.max_attempts.is_some()
        || section.backoff_base_ms.is_some()
        || section.backoff_cap_ms.is_some()
    {
        let base = section.backoff_base_ms.map_or(Duration::from_secs(1), ms);
        let cap = section
            .backoff_cap_ms
            .map_or(Duration::from_secs(32).max(base), ms);
        let attempts = section
            .max_attempts
            .unwrap_or(config.backoff.max_attempts());
        config.backoff = BackoffPolicy::new(base, 2.0, cap, attempts)
            .context("configuration keys `relay.max_attempts` / `relay.backoff_*_ms`")?;
    }
    config.validate().context("configuration section `relay`")?;
    Ok(config)
}

fn default_relay_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
database_url = "postgres://app:secret@db/app"
metrics_addr = "127.0.0.1:9464"

[relay]
batch_size = 50
lease_ms = 20000
publish_timeout_ms = 5000

[broker]
kind = "kafka"
bootstrap_servers = "k1:9092"

[[services]]
name = "orders"
table = "orders_outbox"
topic = "orders.events"
consumer_group = "billing"

[[events]]
event_type = "order.created"
service = "orders"
"#;

    fn load_text(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Checked> {
        let dir = std::env::temp_dir().join(format!(
            "outbox-cli-config-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outbox.toml");
        std::fs::write(&path, text).unwrap();
        let result = load(
            &path,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    fn error(text: &str, env: &[(&str, &str)]) -> String {
        match load_text(text, env) {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_good_file_with_overrides() {
        // Without the feature, `kind = "kafka"` is refused; the rest is checked first.
        let env = [
            ("OUTBOX__RELAY__BATCH_SIZE", "7"),
            ("OUTBOX_DATABASE_URL", "postgres://other/app"),
            ("UNRELATED", "x"),
        ];
        let result = load_text(GOOD, &env);
        if cfg!(feature = "kafka") {
            let checked = result.unwrap();
            assert_eq!(checked.relay.batch_size, 7);
            assert_eq!(checked.relay.lease, Duration::from_secs(20));
            assert_eq!(checked.file.database_url, "postgres://other/app");
            assert!(checked.registry.route("order.created").is_ok());
        } else {
            let err = format!("{:#}", result.err().unwrap());
            assert!(
                err.contains("broker.kind") && err.contains("kafka"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_keys_are_named() {
        let misspelt = GOOD.replace("batch_size = 50", "batch_sise = 50");
        assert!(error(&misspelt, &[]).contains("`relay.batch_sise`"));
        let wrong_type = error(GOOD, &[("OUTBOX__RELAY__BATCH_SIZE", "many")]);
        assert!(wrong_type.contains("`relay.batch_size`"), "{wrong_type}");
        let table = GOOD.replace("orders_outbox", "orders; drop table x");
        let unsafe_name = error(&table, &[]);
        assert!(unsafe_name.contains("services"), "{unsafe_name}");
        assert!(
            unsafe_name.contains("orders; drop table x"),
            "{unsafe_name}"
        );
        let timeouts = GOOD.replace("publish_timeout_ms = 5000", "publish_timeout_ms = 60000");
        assert!(
            error(&timeouts, &[]).contains("relay"),
            "a publish timeout above the lease"
        );
        let no_broker = GOOD.replace("kind = \"kafka\"", "kind = \"carrier-pigeon\"");
        assert!(error(&no_broker, &[]).contains("broker"));
        assert!(error("database_url = ", &[]).contains("not valid TOML"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let file: DaemonConfig = toml::from_str(GOOD).unwrap();
        let shown = format!("{file:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
