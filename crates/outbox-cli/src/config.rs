//! `outbox relay`'s configuration: a TOML file, with environment variables overriding
//! any key, checked completely before the daemon does anything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use outbox_domain::{BackoffPolicy, EventRouteConfig, RouteRegistry, RoutesConfig, ServiceRoute};
use outbox_runtime::{CompensationConfig, RelayConfig};
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
    /// Absent: the daemon runs no compensation worker.
    #[serde(default)]
    pub(crate) compensation: Option<CompensationSection>,
    /// Named cursors whose lag the daemon reports (`outbox_cursor_lag_*`).
    #[serde(default)]
    pub(crate) cursors: Vec<CursorWatch>,
}

/// `[[cursors]]`: a named cursor over the outbox table of `service`, for the lag
/// gauges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CursorWatch {
    pub(crate) name: String,
    pub(crate) service: String,
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
    /// Batches each claim loop keeps in flight.
    pipeline_depth: Option<usize>,
    poll_interval_ms: Option<u64>,
    /// The adaptive poll's shortest wait, after work.
    min_poll_interval_ms: Option<u64>,
    /// PostgreSQL: wake the relays through `LISTEN` (default true).
    pub(crate) listen: Option<bool>,
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

/// `[compensation]`: a compensation worker that runs `command` for each attempt (see
/// [`crate::executor`] for the contract). Unset keys keep the defaults shown.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompensationSection {
    /// Program and arguments; required, not empty.
    command: Vec<String>,
    /// Bound on one attempt; the command is killed after it (default 30000).
    #[serde(default = "default_compensation_timeout_ms")]
    timeout_ms: u64,
    /// Items claimed per round (default 50).
    #[serde(default = "default_compensation_batch_size")]
    batch_size: usize,
    /// Pause between rounds that found nothing due (default 5000).
    #[serde(default = "default_compensation_poll_interval_ms")]
    poll_interval_ms: u64,
    /// How long a claimed item is reserved for this daemon; above `timeout_ms`
    /// (default 60000).
    #[serde(default = "default_compensation_reserve_ms")]
    reserve_ms: u64,
    /// First retry delay (default 60000); doubles up to `backoff_cap_ms` (default
    /// 960000).
    backoff_base_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
}

fn default_compensation_timeout_ms() -> u64 {
    30_000
}

fn default_compensation_batch_size() -> usize {
    50
}

fn default_compensation_poll_interval_ms() -> u64 {
    5_000
}

fn default_compensation_reserve_ms() -> u64 {
    60_000
}

/// The compensation worker's settings, checked.
#[derive(Debug)]
pub(crate) struct CompensationSettings {
    /// Program, then arguments; never empty.
    pub(crate) command: Vec<String>,
    /// Bound on one attempt.
    pub(crate) timeout: Duration,
    pub(crate) worker: CompensationConfig,
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
    /// `None` without a `[compensation]` section.
    pub(crate) compensation: Option<CompensationSettings>,
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
    for (i, cursor) in file.cursors.iter().enumerate() {
        if cursor.name.trim().is_empty() {
            bail!("configuration key `cursors[{i}].name`: empty");
        }
        if !registry
            .services()
            .any(|s| s.name.as_str() == cursor.service)
        {
            bail!(
                "configuration key `cursors[{i}].service`: no service `{}` is declared in \
                 `services`",
                cursor.service
            );
        }
    }
    let relay = relay_config(&file.relay, file.relay_id.clone())?;
    let compensation = file
        .compensation
        .as_ref()
        .map(compensation_settings)
        .transpose()?;
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
        compensation,
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
    if let Some(v) = section.pipeline_depth {
        config.pipeline_depth = v;
    }
    if let Some(v) = section.poll_interval_ms {
        config.poll_interval = ms(v);
    }
    if let Some(v) = section.min_poll_interval_ms {
        config.min_poll_interval = ms(v);
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

fn compensation_settings(section: &CompensationSection) -> anyhow::Result<CompensationSettings> {
    let ms = Duration::from_millis;
    if section.command.first().is_none_or(|p| p.trim().is_empty()) {
        bail!("configuration key `compensation.command`: needs a program (and its arguments)");
    }
    for (key, value) in [
        ("timeout_ms", section.timeout_ms),
        ("poll_interval_ms", section.poll_interval_ms),
        ("batch_size", section.batch_size as u64),
    ] {
        if value == 0 {
            bail!("configuration key `compensation.{key}`: must be greater than 0");
        }
    }
    if section.reserve_ms <= section.timeout_ms {
        bail!(
            "configuration key `compensation.reserve_ms`: {} must be greater than \
             `compensation.timeout_ms` ({}), or another worker may take the item while \
             its attempt still runs",
            section.reserve_ms,
            section.timeout_ms
        );
    }
    let mut worker = CompensationConfig::default();
    worker.batch_size = section.batch_size;
    worker.poll_interval = ms(section.poll_interval_ms);
    worker.reserve_for = ms(section.reserve_ms);
    if section.backoff_base_ms.is_some() || section.backoff_cap_ms.is_some() {
        let default = BackoffPolicy::minutes();
        let default_base = default.nominal_delay(1);
        let default_cap = default.nominal_delay(u32::MAX);
        // An unset bound follows the one that is set, so either may be set alone.
        let cap = section.backoff_cap_ms.map(ms);
        let base = section
            .backoff_base_ms
            .map_or_else(|| cap.map_or(default_base, |c| c.min(default_base)), ms);
        let cap = cap.unwrap_or(default_cap.max(base));
        // The items carry their own retry limit; the policy's is not used.
        worker.backoff = BackoffPolicy::new(base, 2.0, cap, default.max_attempts())
            .context("configuration keys `compensation.backoff_*_ms`")?;
    }
    Ok(CompensationSettings {
        command: section.command.clone(),
        timeout: ms(section.timeout_ms),
        worker,
    })
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
pipeline_depth = 2
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
            assert_eq!(checked.relay.pipeline_depth, 2);
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

    const COMPENSATION: &str = r#"
[compensation]
command = ["/usr/local/bin/compensate", "--flag"]
timeout_ms = 2000
batch_size = 10
poll_interval_ms = 100
reserve_ms = 5000
backoff_base_ms = 200
backoff_cap_ms = 1000
"#;

    /// The error of `GOOD` with `section` appended; the section is checked before the
    /// broker kind, so in every build.
    fn compensation_error(section: &str, env: &[(&str, &str)]) -> String {
        error(&with_compensation(section), env)
    }

    fn with_compensation(section: &str) -> String {
        format!("{GOOD}{section}")
    }

    #[test]
    fn the_compensation_section() {
        // Absent: no worker.
        if cfg!(feature = "kafka") {
            assert!(load_text(GOOD, &[]).unwrap().compensation.is_none());
        }
        let result = load_text(
            &with_compensation(COMPENSATION),
            &[("OUTBOX__COMPENSATION__BATCH_SIZE", "20")],
        );
        if !cfg!(feature = "kafka") {
            // Checked before the broker kind is refused.
            let err = format!("{:#}", result.err().unwrap());
            assert!(err.contains("broker.kind"), "{err}");
            return;
        }
        let settings = result.unwrap().compensation.unwrap();
        assert_eq!(settings.command, ["/usr/local/bin/compensate", "--flag"]);
        assert_eq!(settings.timeout, Duration::from_secs(2));
        let worker = settings.worker;
        assert_eq!(worker.batch_size, 20);
        assert_eq!(worker.poll_interval, Duration::from_millis(100));
        assert_eq!(worker.reserve_for, Duration::from_secs(5));
        assert_eq!(worker.backoff.nominal_delay(1), Duration::from_millis(200));
        assert_eq!(worker.backoff.nominal_delay(3), Duration::from_millis(800));
        assert_eq!(worker.backoff.nominal_delay(9), Duration::from_secs(1));

        // Only the command: the defaults.
        let minimal = "\n[compensation]\ncommand = [\"/bin/true\"]\n";
        let settings = load_text(&with_compensation(minimal), &[])
            .unwrap()
            .compensation
            .unwrap();
        assert_eq!(settings.timeout, Duration::from_secs(30));
        assert_eq!(settings.worker, CompensationConfig::default());
        // Only a small cap: the base follows it.
        let small_cap = format!("{minimal}backoff_cap_ms = 500\n");
        let settings = load_text(&with_compensation(&small_cap), &[])
            .unwrap()
            .compensation
            .unwrap();
        assert_eq!(
            settings.worker.backoff.nominal_delay(1),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn bad_compensation_keys_are_named() {
        let short_reserve = COMPENSATION.replace("reserve_ms = 5000", "reserve_ms = 2000");
        let err = compensation_error(&short_reserve, &[]);
        assert!(err.contains("`compensation.reserve_ms`"), "{err}");
        let err = compensation_error(COMPENSATION, &[("OUTBOX__COMPENSATION__RESERVE_MS", "10")]);
        assert!(err.contains("`compensation.reserve_ms`"), "{err}");

        let no_command = COMPENSATION.replace(
            r#"command = ["/usr/local/bin/compensate", "--flag"]"#,
            "command = []",
        );
        let err = compensation_error(&no_command, &[]);
        assert!(err.contains("`compensation.command`"), "{err}");
        let blank_program = COMPENSATION.replace("/usr/local/bin/compensate", " ");
        let err = compensation_error(&blank_program, &[]);
        assert!(err.contains("`compensation.command`"), "{err}");
        let missing =
            COMPENSATION.replace(r#"command = ["/usr/local/bin/compensate", "--flag"]"#, "");
        let err = compensation_error(&missing, &[]);
        assert!(
            err.contains("compensation") && err.contains("command"),
            "{err}"
        );
        let as_string = compensation_error(
            COMPENSATION,
            &[("OUTBOX__COMPENSATION__COMMAND", "/bin/compensate --flag")],
        );
        assert!(as_string.contains("`compensation.command`"), "{as_string}");

        let unknown = COMPENSATION.replace("batch_size = 10", "batch_size = 10\nretries = 3");
        let err = compensation_error(&unknown, &[]);
        assert!(err.contains("`compensation.retries`"), "{err}");
        let zero = COMPENSATION.replace("poll_interval_ms = 100", "poll_interval_ms = 0");
        let err = compensation_error(&zero, &[]);
        assert!(err.contains("`compensation.poll_interval_ms`"), "{err}");
        let backwards = COMPENSATION.replace("backoff_cap_ms = 1000", "backoff_cap_ms = 100");
        let err = compensation_error(&backwards, &[]);
        assert!(err.contains("compensation.backoff"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let file: DaemonConfig = toml::from_str(GOOD).unwrap();
        let shown = format!("{file:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn cursors_must_name_a_declared_service() {
        let with = |service: &str| {
            GOOD.replace(
                "[[services]]",
                &format!("[[cursors]]\nname = \"audit\"\nservice = \"{service}\"\n\n[[services]]"),
            )
        };
        let err = error(&with("nowhere"), &[]);
        assert!(err.contains("`cursors[0].service`"), "{err}");
        // A declared service passes this check (and fails later only for want of the
        // broker feature in this build).
        let err = load_text(&with("orders"), &[])
            .err()
            .map(|e| format!("{e:#}"));
        assert!(
            err.as_ref()
                .is_none_or(|e| !e.contains("cursors") && e.contains("broker.kind")),
            "{err:?}"
        );
    }
}
