//! `outbox verify`: checks that the messages the outbox marked published are on the
//! broker, and that each key's messages are there in order.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use outbox_domain::MessageStatus;
use outbox_ports::{ListFilter, MessageStore as _, StoredMessage};
use outbox_sea_orm::{RoutedOutbox, StoreConfig};
use serde_json::json;

use crate::config::{self, Checked};
use crate::output::print_json;

/// Options of `outbox verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The relay daemon's configuration (database, broker, routes).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Only this service's messages.
    #[arg(long)]
    service: Option<String>,
    /// Only messages at or after this outbox position (`seq`).
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<u64>,
    /// Only messages at or before this position.
    #[arg(long, value_name = "SEQ")]
    to_seq: Option<u64>,
    /// At most this many messages per table and status.
    #[arg(long, default_value_t = 100_000)]
    limit: usize,
    /// How long reading a topic may take, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Print one JSON document: `checked`, `missing` (ids), `out_of_order` (keys),
    /// `duplicates` (ids stored more than once, which at-least-once allows).
    #[arg(long)]
    json: bool,
}

/// What `verify` found.
#[derive(Debug, Default)]
struct Findings {
    checked: usize,
    missing: Vec<String>,
    out_of_order: Vec<String>,
    duplicates: Vec<String>,
}

pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let Checked { file, registry, .. } = match config::load(&args.config, std::env::vars()) {
        Ok(checked) => checked,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let db = crate::database::connect(&file.database_url).await?;
    let outbox = RoutedOutbox::new(db, registry, StoreConfig::default())?;

    // What the outbox says the broker has, by topic.
    let mut expected: BTreeMap<String, Vec<StoredMessage>> = BTreeMap::new();
    for (_, store) in outbox.stores() {
        for status in [MessageStatus::Published, MessageStatus::Consumed] {
            let mut filter = ListFilter::status(status, args.limit);
            filter.after_seq = args.from_seq.map(|s| s.saturating_sub(1));
            if let Some(service) = &args.service {
                filter = filter.with_service(service.clone());
            }
            for stored in store.list(&filter).await? {
                if args.to_seq.is_none_or(|to| stored.seq <= to) {
                    expected
                        .entry(stored.message.topic.clone())
                        .or_default()
                        .push(stored);
                }
            }
        }
    }

    let mut findings = Findings::default();
    for (topic, stored) in &expected {
        let on_broker = read(&file.broker, topic, args.timeout_ms).await?;
        compare(stored, &on_broker, &mut findings);
    }

    if args.json {
        print_json(&json!({
            "checked": findings.checked,
            "missing": findings.missing,
            "out_of_order": findings.out_of_order,
            "duplicates": findings.duplicates,
        }))?;
    } else {
        println!(
            "checked {} message(s): {} missing, {} key(s) out of order, {} stored more than once",
            findings.checked,
            findings.missing.len(),
            findings.out_of_order.len(),
            findings.duplicates.len()
        );
        for id in findings.missing.iter().take(50) {
            println!("missing       {id}");
        }
        for key in findings.out_of_order.iter().take(50) {
            println!("out of order  {key}");
        }
    }
    Ok(
        if findings.missing.is_empty() && findings.out_of_order.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Where each message id sits on the broker, in the order read: (partition, offset).
type Positions = HashMap<String, Vec<(i32, i64)>>;

/// Compares what the outbox published (`stored`) with `on_broker`.
fn compare(stored: &[StoredMessage], on_broker: &Positions, findings: &mut Findings) {
    let mut by_key: BTreeMap<(String, String), Vec<&StoredMessage>> = BTreeMap::new();
    for m in stored {
        findings.checked += 1;
        let id = m.message.id.to_string();
        match on_broker.get(&id) {
            None => findings.missing.push(id),
            Some(positions) => {
                if positions.len() > 1 {
                    findings.duplicates.push(id);
                }
                by_key
                    .entry((m.message.service.clone(), m.message.partition_key.clone()))
                    .or_default()
                    .push(m);
            }
        }
    }
    for ((service, key), mut messages) in by_key {
        messages.sort_by_key(|m| m.seq);
        // Each message's first position; one key must stay on one partition, with
        // offsets growing in outbox order.
        let positions: Vec<(i32, i64)> = messages
            .iter()
            .map(|m| on_broker[&m.message.id.to_string()][0])
            .collect();
        let ordered = positions
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1);
        if !ordered {
            findings.out_of_order.push(format!("{service}/{key}"));
        }
    }
}

/// Every outbox message id on `topic` with its positions.
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
async fn read(
    broker: &config::BrokerSection,
    topic: &str,
    timeout_ms: u64,
) -> anyhow::Result<Positions> {
    #[cfg(feature = "kafka")]
    if let Some(kafka) = broker.kafka_config() {
        let records =
            outbox_kafka::read_topic(&kafka, topic, std::time::Duration::from_millis(timeout_ms))
                .await
                .map_err(|e| anyhow::anyhow!("read the topic {topic}: {e}"))?;
        let mut positions = Positions::new();
        for record in records {
            if let Some(id) = record.headers.get(outbox_ports::header::MESSAGE_ID) {
                positions
                    .entry(id.clone())
                    .or_default()
                    .push((record.partition, record.offset));
            }
        }
        return Ok(positions);
    }
    anyhow::bail!(
        "outbox verify reads Kafka topics only so far; this configuration's broker is {broker:?}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use outbox_domain::{Delivery, OutboxMessage, Payload};

    fn stored(seq: u64, key: &str) -> StoredMessage {
        let message = OutboxMessage::new(
            "orders",
            "order.created",
            "orders.events",
            key,
            Payload::Json(serde_json::json!({})),
            Utc::now(),
        );
        StoredMessage::new(seq, message, Delivery::new(3, Utc::now()))
    }

    #[test]
    fn missing_reordered_split_and_duplicated_messages_are_found() {
        let a1 = stored(1, "a");
        let a2 = stored(2, "a");
        let b1 = stored(3, "b");
        let b2 = stored(4, "b");
        let c1 = stored(5, "c");
        let c2 = stored(6, "c");
        let gone = stored(7, "d");
        let mut on_broker = Positions::new();
        let mut put = |m: &StoredMessage, p: i32, o: i64| {
            on_broker
                .entry(m.message.id.to_string())
                .or_default()
                .push((p, o));
        };
        put(&a1, 0, 10);
        put(&a2, 0, 11);
        put(&a2, 0, 12); // a duplicate: allowed
        put(&b1, 1, 20);
        put(&b2, 1, 19); // b2 before b1
        put(&c1, 0, 30);
        put(&c2, 2, 31); // c split over partitions
        let mut findings = Findings::default();
        compare(
            &[a1, a2.clone(), b1, b2, c1, c2, gone.clone()],
            &on_broker,
            &mut findings,
        );
        assert_eq!(findings.checked, 7);
        assert_eq!(findings.missing, vec![gone.message.id.to_string()]);
        assert_eq!(findings.out_of_order, vec!["orders/b", "orders/c"]);
        assert_eq!(findings.duplicates, vec![a2.message.id.to_string()]);
    }
}
