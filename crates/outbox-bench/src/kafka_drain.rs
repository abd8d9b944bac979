//! Scenario 3: drain a backlog to Kafka through [`KafkaPublisher`], against raw
//! rdkafka producing the same messages straight to the same broker.
//!
//! The raw producer has the publisher's settings (idempotent, `acks=all`, the
//! Java-compatible partitioner) but librdkafka's default `linger.ms` (5 ms, where the
//! publisher sets 0; a delay that costs nothing when every message is sent at once
//! and lets the producer fill its requests), sends every message
//! at once with the same key, payload and headers, and waits for every ack: the rate
//! of the broker and client alone, with no database.

use crate::drain::{BATCH, drain_with};
use crate::harness::{Chart, Ctx, Section, Target, fmt_num, median, payload};
use anyhow::{Context, Result, bail};
use futures::future::join_all;
use outbox_kafka::{KafkaConfig, KafkaPublisher, Provisioning, TopicSpec, ensure_topics};
use outbox_ports::header;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const KEYS: u64 = 1_000;
const PARTITIONS: u32 = 8;

/// Produces `n` messages like the backlog's with a bare producer and waits for every
/// ack. Returns events per second.
async fn raw_rdkafka(bootstrap: &str, topic: &str, n: u64) -> Result<f64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the raw producer")?;
    // Connections, metadata and the producer id, before the clock starts.
    producer
        .send(
            FutureRecord::to(topic).key("warm-up").payload("{}"),
            std::time::Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("warm-up send failed: {e}"))?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n as usize);
    for i in 0..n {
        let key = format!("key-{}", i % KEYS);
        let body = payload(i).to_string();
        let id = uuid::Uuid::new_v4().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: header::MESSAGE_ID,
                value: Some(id.as_bytes()),
            })
            .insert(Header {
                key: header::EVENT_TYPE,
                value: Some("bench.event".as_bytes()),
            })
            .insert(Header {
                key: header::SERVICE,
                value: Some("bench".as_bytes()),
            })
            .insert(Header {
                key: header::CONTENT_TYPE,
                value: Some("application/json".as_bytes()),
            })
            .insert(Header {
                key: header::SCHEMA_VERSION,
                value: Some("1".as_bytes()),
            });
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&body)
            .headers(headers);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| anyhow::anyhow!("enqueueing message {i} failed: {e}"))?;
        pending.push(delivery);
    }
    for (i, result) in join_all(pending).await.into_iter().enumerate() {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => bail!("message {i} was not delivered: {e}"),
            Err(_) => bail!("the delivery report of message {i} was lost"),
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Runs scenario 3.
pub(crate) async fn run(ctx: &Ctx, bootstrap: &str) -> Result<()> {
    let n = ctx.size(200_000, 20_000);
    let plan = ctx.plan();
    let topic = format!("bench.drain.{}", std::process::id());
    let kafka = KafkaConfig::new(bootstrap);
    ensure_topics(
        &kafka,
        &[TopicSpec::new(&topic).with_partitions(PARTITIONS)],
        Provisioning::CreateMissing,
    )
    .await
    .context("creating the benchmark topic")?;
    let db = ctx.fresh_db("bench_kafka_drain").await?;
    // The backlog's rows name the topic `bench`; point them at this run's topic.
    let retopic = format!("UPDATE {} SET topic = '{topic}'", crate::harness::TABLE);

    // Per round: raw, then 1 relay, then 2 relays, so drift hits all alike.
    let systems = ["raw rdkafka", "outbox-rs, 1 relay", "outbox-rs, 2 relays"];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    for round in 0..plan.warmup + plan.runs {
        let warmup = round < plan.warmup;
        for (i, system) in systems.iter().enumerate() {
            let rate = if i == 0 {
                raw_rdkafka(bootstrap, &topic, n).await?
            } else {
                db.empty_outbox().await?;
                db.fill_pending(n, KEYS, false).await?;
                db.exec(&retopic).await?;
                db.exec(&format!("VACUUM ANALYZE {}", crate::harness::TABLE))
                    .await?;
                let kafka = kafka.clone();
                drain_with(&db, i, n, move |_| {
                    Ok(Arc::new(KafkaPublisher::new(kafka.clone())?) as _)
                })
                .await
                .with_context(|| format!("{system}: drain"))?
            };
            eprintln!(
                "  {system}: {} {}: {} events/s",
                if warmup { "warm-up" } else { "run" },
                round + 1 - if warmup { 0 } else { plan.warmup },
                fmt_num(rate)
            );
            if !warmup {
                results[i].push(rate);
            }
        }
    }
    let medians: Vec<f64> = results.iter().map(|r| median(r)).collect();
    let best_ours = medians[1].max(medians[2]);
    let mut section = Section::new(ctx, "kafka-drain", "3. Drain throughput to Kafka");
    let mut table =
        String::from("| System | events/s (median) | share of raw | runs |\n|---|---|---|---|\n");
    for (i, system) in systems.iter().enumerate() {
        table.push_str(&format!(
            "| {system} | {} | {:.0}% | {} |\n",
            fmt_num(medians[i]),
            100.0 * medians[i] / medians[0],
            results[i]
                .iter()
                .map(|v| fmt_num(*v))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    section.markdown = format!(
        "A backlog of {n} messages over {KEYS} keys (the payload of every scenario, about \
         90 bytes of JSON, and the publisher's five headers) to a topic of {PARTITIONS} \
         partitions on the local broker. *raw rdkafka*: one `FutureProducer` with \
         `KafkaPublisher`'s settings (idempotent, `acks=all`, murmur2 partitioner) but \
         librdkafka's default `linger.ms` (5 ms; the publisher's is 0) sends all {n} at \
         once and waits for every ack; no database. \
         *outbox-rs*: relays (batch {BATCH}) claim from PostgreSQL, publish through \
         `KafkaPublisher`, and settle. Median of {} runs after {} warm-up, the systems \
         taking turns within each round.\n\n{table}",
        plan.runs, plan.warmup
    );
    section.targets.push(Target::ratio(
        "drain to Kafka vs raw rdkafka",
        best_ours,
        medians[0],
        0.8,
        false,
        "events/s",
    ));
    section.data = json!({
        "messages": n, "keys": KEYS, "partitions": PARTITIONS, "batch": BATCH, "plan": plan,
        "systems": systems, "events_per_s": results, "medians": medians,
    });
    section.charts.push(Chart {
        name: "throughput".into(),
        title: format!("{n} messages to Kafka"),
        unit: "events/s".into(),
        groups: systems.iter().map(|s| (*s).to_owned()).collect(),
        series: vec![("events/s".into(), medians)],
    });
    section.write(&ctx.out)
}
