//! `outbox relay`: the relay daemon. One relay per outbox table the routes name,
//! publishing to the configured broker, with backlog gauges, a Prometheus endpoint and
//! graceful shutdown on SIGTERM / SIGINT. With a `[compensation]` section it also runs
//! a compensation worker on the same database, retrying failed batch items through the
//! configured command ([`crate::executor`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;
use outbox_domain::RouteRegistry;
use outbox_ports::{MessageStore, Publisher};
use outbox_runtime::{CompensationHandle, CompensationWorker, Relay};
use outbox_sea_orm::{
    PgWakeListener, RoutedOutbox, SeaOrmCompensationStore, SeaOrmCursorStore, StoreConfig,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{self, BrokerSection, Checked, CompensationSettings};
use crate::executor::CommandExecutor;
use crate::http;

/// Options of `outbox relay`.
#[derive(Debug, clap::Args)]
pub(crate) struct RelayArgs {
    /// The daemon's TOML configuration (database, broker, relay settings, routes; see
    /// docs/operations.md). Environment variables `OUTBOX__SECTION__KEY` override its
    /// keys, `OUTBOX_DATABASE_URL` its database.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serve /metrics, /healthz and /readyz here (overrides `metrics_addr`); port 0
    /// picks a free one, printed at start-up.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Gauge names the daemon sets from the database every `stats_interval_ms`, labelled
/// `service` and `topic`.
pub(crate) mod gauges {
    /// Pending messages never tried (the backlog).
    pub(crate) const BACKLOG: &str = "outbox_backlog";
    /// Seconds since the oldest unsent message was written.
    pub(crate) const OLDEST_UNSENT_AGE: &str = "outbox_oldest_unsent_age_seconds";
    /// Pending messages waiting for a retry.
    pub(crate) const RETRY_QUEUE: &str = "outbox_retry_queue";
    /// Messages claimed and not yet settled.
    pub(crate) const IN_FLIGHT: &str = "outbox_in_flight";
    /// Dead letters.
    pub(crate) const DEAD_LETTERS: &str = "outbox_dead_letters";
    /// Keys held back by a failed head waiting for its retry.
    pub(crate) const PARKED_KEYS: &str = "outbox_parked_keys";
}

/// Exit code of a configuration that cannot work (like clap's usage errors).
const EXIT_CONFIG: u8 = 2;

pub(crate) async fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    // The crash-point kit (test builds only): arm the failpoint OUTBOX_CRASH_AT names.
    #[cfg(feature = "failpoints")]
    if let Err(e) = outbox_test_support::crash::arm_from_env() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    // Everything that can be checked without a database or a broker, first.
    let checked = match config::load(&args.config, std::env::vars()) {
        Ok(checked) => checked,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let Checked {
        file,
        registry,
        relay,
        compensation,
    } = checked;
    let metrics_addr = args.metrics_addr.or(file.metrics_addr);
    let metrics = recorder()?;

    let db = crate::database::connect(&file.database_url).await?;
    let outbox = RoutedOutbox::new(
        db.clone(),
        registry.clone(),
        StoreConfig::default().with_max_attempts(relay.backoff.max_attempts()),
    )?;
    let (publisher, longest_publish) = publisher(&file.broker, &registry).await?;
    if let Some(warning) = publish_timeout_warning(relay.publish_timeout, longest_publish) {
        warn!("{warning}");
    }

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = metrics_addr {
        let bound = http::serve(
            addr,
            http::Endpoints {
                metrics: metrics.clone(),
                ready: ready.clone(),
            },
            shutdown.clone(),
        )
        .await?;
        println!("metrics listening on {bound}");
    }
    // Each watched cursor with the store of the table it reads (the configuration
    // check made sure its service is declared).
    let cursors = file
        .cursors
        .iter()
        .filter_map(|c| {
            let store = outbox.store_for(&c.service)?.clone();
            Some((c.name.clone(), store))
        })
        .collect();
    let stats = tokio::spawn(poll_stats(
        outbox.clone(),
        cursors,
        Duration::from_millis(file.stats_interval_ms),
        metrics.clone(),
        ready,
        shutdown.clone(),
    ));

    let mut relays = Vec::new();
    let mut listeners = Vec::new();
    let listen = file.relay.listen.unwrap_or(true)
        && db.get_database_backend() == sea_orm::DbBackend::Postgres;
    for (table, store) in outbox.stores() {
        let mut config = relay.clone();
        config.relay_id = format!("{}/{table}", relay.relay_id);
        let handle = Relay::new(
            Arc::new(store.clone()) as Arc<dyn MessageStore>,
            publisher.clone(),
            config,
        )?
        .spawn(shutdown.child_token());
        if listen {
            // Writers that commit through `SeaOrmStore::commit` with a `PgNotifier` wake
            // this relay at once; without it, the adaptive poll finds their messages.
            match PgWakeListener::spawn(store.connection(), table, Arc::new(handle.waker())).await {
                Ok(listener) => listeners.push(listener),
                Err(e) => warn!(%table, error = %e, "no LISTEN wake-ups; polling only"),
            }
        }
        relays.push(handle);
        info!(%table, listen, "relay started");
    }
    let compensation = compensation.map(|settings| {
        let worker = Compensation::spawn(db, settings, shutdown.child_token());
        info!("compensation worker started");
        worker
    });
    println!(
        "relaying {} table(s) as {}{}; stop with SIGTERM or Ctrl-C",
        relays.len(),
        relay.relay_id,
        if compensation.is_some() {
            ", with a compensation worker"
        } else {
            ""
        }
    );

    wait_for_signal().await?;
    println!("stopping: finishing the batches in flight");
    let drained = async {
        let mut drained = true;
        for handle in relays {
            drained &= handle.shutdown().await;
        }
        drained
    };
    let compensation_stopped = async {
        match compensation {
            Some(worker) => worker.stop(relay.drain_timeout).await,
            None => true,
        }
    };
    let (drained, compensation_stopped) = tokio::join!(drained, compensation_stopped);
    shutdown.cancel();
    let _ = stats.await;
    if !compensation_stopped {
        warn!(
            "a compensation command was still running after the drain timeout and is \
             killed; its item is retried once its reservation ends"
        );
    }
    if drained {
        println!("stopped: every batch in flight was settled");
    } else {
        warn!("some batches did not drain in time; their leases expire and they are redelivered");
        println!("stopped: some batches were cut off and will be redelivered");
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's compensation worker and the executor it runs commands through.
struct Compensation {
    handle: CompensationHandle,
    executor: Arc<CommandExecutor>,
}

impl Compensation {
    /// Runs a [`CompensationWorker`] on `db` until `shutdown`.
    fn spawn(
        db: sea_orm::DatabaseConnection,
        settings: CompensationSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let executor = Arc::new(
            CommandExecutor::new(&settings.command, settings.timeout)
                .expect("config::load checked that the command is not empty")
                .with_shutdown(shutdown.clone()),
        );
        let store = Arc::new(SeaOrmCompensationStore::new(db));
        let handle =
            CompensationWorker::new(store, executor.clone(), settings.worker).spawn(shutdown);
        Self { handle, executor }
    }

    /// Stops the worker: it starts no new attempt, and the one running (if any) may
    /// finish within `bound`. Items it claimed and did not try stay reserved until
    /// their reservation ends, then any worker retries them. False when an attempt
    /// was cut off by `bound` (the command is killed when the process exits).
    async fn stop(self, bound: Duration) -> bool {
        tokio::select! {
            // The round ended (or the worker was idle).
            () = self.handle.shutdown() => true,
            // The worker waits before its next attempt, forever: nothing runs.
            () = self.executor.parked() => true,
            () = tokio::time::sleep(bound) => false,
        }
    }
}

/// The Prometheus recorder: latencies and batch sizes as histograms with buckets (so
/// dashboards can aggregate quantiles across daemons), counters and gauges as they are.
fn recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::Matcher;
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 900.0, 3600.0,
    ];
    const SIZES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(outbox_runtime::relay_metrics::CLAIM_BATCH_SIZE.into()),
                SIZES,
            )
        })
        .context("configure the metric buckets")?
        .install_recorder()
        .context("install the metrics recorder")
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            result = tokio::signal::ctrl_c() => result.context("listen for SIGINT")?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("listen for Ctrl-C")?;
    Ok(())
}

/// Sets the lag gauges of the cursor `name` over `store`'s table (nothing while the
/// cursor does not exist).
async fn cursor_lag(store: &outbox_sea_orm::SeaOrmStore, name: &str) -> anyhow::Result<()> {
    use outbox_ports::{CursorStore, OutboxLog};
    let cursors = SeaOrmCursorStore::new(store.connection().clone());
    let Some(cursor) = cursors.load(name).await? else {
        return Ok(());
    };
    let lag = store.lag(&cursor.position).await?;
    outbox_runtime::cursor_metrics::record_lag(name, &lag, chrono::Utc::now());
    Ok(())
}

/// Refreshes the backlog gauges of every table until `shutdown`; `ready` says whether
/// the last poll reached the database.
async fn poll_stats(
    outbox: RoutedOutbox,
    cursors: Vec<(String, outbox_sea_orm::SeaOrmStore)>,
    every: Duration,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let topics: std::collections::BTreeMap<String, String> = outbox
        .registry()
        .services()
        .map(|s| (s.name.to_string(), s.topic.to_string()))
        .collect();
    loop {
        let mut ok = true;
        for (_, store) in outbox.stores() {
            match store.stats_by_service().await {
                Ok(by_service) => {
                    for (service, stats) in by_service {
                        let labels = [
                            ("service", service.clone()),
                            ("topic", topics.get(&service).cloned().unwrap_or_default()),
                        ];
                        let age = stats.oldest_unsent_at.map_or(0.0, |at| {
                            (chrono::Utc::now() - at)
                                .to_std()
                                .unwrap_or_default()
                                .as_secs_f64()
                        });
                        metrics::gauge!(gauges::BACKLOG, &labels).set(stats.pending as f64);
                        metrics::gauge!(gauges::OLDEST_UNSENT_AGE, &labels).set(age);
                        metrics::gauge!(gauges::RETRY_QUEUE, &labels).set(stats.retrying as f64);
                        metrics::gauge!(gauges::IN_FLIGHT, &labels).set(stats.in_flight as f64);
                        metrics::gauge!(gauges::DEAD_LETTERS, &labels).set(stats.dead as f64);
                        metrics::gauge!(gauges::PARKED_KEYS, &labels).set(stats.parked_keys as f64);
                    }
                }
                Err(e) => {
                    ok = false;
                    warn!(error = %e, "could not read the outbox statistics");
                }
            }
        }
        for (name, store) in &cursors {
            if let Err(e) = cursor_lag(store, name).await {
                warn!(cursor = %name, error = %e, "could not measure the cursor's lag");
            }
        }
        ready.store(ok, Ordering::Release);
        metrics.run_upkeep();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Why `publish_timeout` does not fit a publisher whose calls take up to `longest`, if
/// it does not: the relay would give up on a slow batch as a whole, before the publisher
/// reports each message's own outcome.
fn publish_timeout_warning(publish_timeout: Duration, longest: Option<Duration>) -> Option<String> {
    let longest = longest.filter(|longest| publish_timeout <= *longest)?;
    Some(format!(
        "relay.publish_timeout_ms ({} ms) is not above the longest publish call of the \
         broker's publisher ({} ms): a batch still waiting for the broker then fails as a \
         whole and is retried, every message of it, while the broker may yet take the \
         first attempt (duplicates, and retries of messages that would have gone \
         through); set publish_timeout_ms above {} ms",
        publish_timeout.as_millis(),
        longest.as_millis(),
        longest.as_millis()
    ))
}

/// The publisher the configuration names, with the longest one publish call of it takes;
/// creates or checks Kafka topics first.
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))] // `registry`: Kafka topics
async fn publisher(
    broker: &BrokerSection,
    registry: &RouteRegistry,
) -> anyhow::Result<(Arc<dyn Publisher>, Option<Duration>)> {
    match broker {
        #[cfg(feature = "kafka")]
        BrokerSection::Kafka { create_topics, .. } => {
            use outbox_kafka::{KafkaPublisher, Provisioning, TopicSpec};
            let config = broker.kafka_config().expect("a Kafka section");
            let mode = if *create_topics {
                Provisioning::CreateMissing
            } else {
                Provisioning::VerifyOnly
            };
            let specs = TopicSpec::from_routes(registry).context("the routes' topics")?;
            outbox_kafka::ensure_topics(&config, &specs, mode)
                .await
                .context("provision the Kafka topics")?;
            let publisher =
                KafkaPublisher::new(config).context("configuration section `broker`")?;
            let longest = publisher.max_publish_time();
            Ok((Arc::new(publisher), Some(longest)))
        }
        #[cfg(feature = "pulsar")]
        BrokerSection::Pulsar {
            service_url,
            token,
            tls_ca_file,
            namespace,
            deduplication_prefix,
        } => {
            use outbox_pulsar::{Deduplication, PulsarConfig, PulsarPublisher};
            let mut config =
                PulsarConfig::new(service_url).context("configuration key `broker.service_url`")?;
            config.token = token.clone();
            config.tls_ca_file = tls_ca_file.clone();
            if let Some(namespace) = namespace {
                config.namespace = namespace.clone();
            }
            if let Some(prefix) = deduplication_prefix {
                config.deduplication = Deduplication::PerKey {
                    prefix: prefix.clone(),
                };
            }
            let publisher =
                PulsarPublisher::new(config).context("configuration section `broker`")?;
            let longest = publisher.max_publish_time();
            Ok((Arc::new(publisher), Some(longest)))
        }
        #[allow(unreachable_patterns)] // when both features are on
        other => anyhow::bail!(
            "broker {other:?} is not built into this `outbox` (config::load refuses it)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{gauges, publish_timeout_warning};
    use std::time::Duration;

    #[test]
    fn a_publish_timeout_within_the_publishers_longest_call_is_warned_about() {
        let secs = Duration::from_secs;
        let warning = publish_timeout_warning(secs(4), Some(Duration::from_millis(9_750)))
            .expect("4 s is below 9.75 s");
        assert!(
            warning.contains("publish_timeout_ms (4000 ms)") && warning.contains("above 9750 ms"),
            "{warning}"
        );
        assert!(publish_timeout_warning(secs(10), Some(secs(10))).is_some());
        assert_eq!(
            publish_timeout_warning(secs(10), Some(Duration::from_millis(9_750))),
            None
        );
        assert_eq!(
            publish_timeout_warning(secs(1), None),
            None,
            "no bound known"
        );
    }
    use outbox_runtime::{compensation_metrics, relay_metrics};

    /// Every metric the Grafana dashboard (docs/grafana) queries is one the code emits
    /// (a histogram's `_bucket` series counts as its histogram).
    #[test]
    fn the_dashboard_queries_only_emitted_metrics() {
        let emitted = [
            gauges::BACKLOG,
            gauges::OLDEST_UNSENT_AGE,
            gauges::RETRY_QUEUE,
            gauges::IN_FLIGHT,
            gauges::DEAD_LETTERS,
            gauges::PARKED_KEYS,
            relay_metrics::PUBLISHED,
            relay_metrics::RETRIED,
            relay_metrics::DEAD,
            relay_metrics::PUBLISH_LATENCY,
            relay_metrics::COMMIT_TO_ACK,
            relay_metrics::CLAIM_BATCH_SIZE,
            compensation_metrics::RETRIED,
            compensation_metrics::RESOLVED,
            compensation_metrics::MANUAL_REQUIRED,
            compensation_metrics::ABANDONED,
            compensation_metrics::CONFLICTS,
        ];
        let dashboard = include_str!("../../../docs/grafana/outbox-relay.json");
        let json: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let mut queried = 0;
        for panel in json["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if let Some(name) = word.strip_prefix("outbox_") {
                        let name = format!("outbox_{name}");
                        let base = name.strip_suffix("_bucket").unwrap_or(&name);
                        assert!(emitted.contains(&base), "{base} in {expr:?} is not emitted");
                        queried += 1;
                    }
                }
            }
        }
        assert!(queried > 10);
    }
}
