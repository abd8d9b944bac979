//! A bare producer to the same broker: what the broker round trip costs by itself.

use crate::Args;
use crate::cpu::{CpuMeter, CpuUse};
use crate::stats::Dist;
use crate::writer::{Stream, Writer};
use anyhow::Result;
use futures::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Baseline {
    /// Paced at this rate, or `None`: one message at a time, each sent when the
    /// previous one was acknowledged (the unloaded round trip).
    pub(crate) rate: Option<f64>,
    pub(crate) linger_ms: Option<u32>,
    /// Whether writers committed to PostgreSQL at the same rate meanwhile (no relay).
    pub(crate) under_load: bool,
    pub(crate) latency: Dist,
    pub(crate) achieved: f64,
    /// CPU use while the timed sends ran.
    pub(crate) cpu: CpuUse,
}

/// Messages of a one-at-a-time baseline.
pub(crate) const SEQUENTIAL_SENDS: u64 = 200;

/// A bare `FutureProducer` with the publisher's settings (outbox-kafka's
/// `build_producer`: idempotent, `acks=all`, Java-compatible partitioner), and
/// `linger.ms` if given; send-to-ack latency of each message, paced at `rate` or one at a
/// time. With `load`, that writer commits at `rate` throughout, as in the latency cells
/// but with no relay: what the database load alone does to the broker's acks on a
/// shared machine.
pub(crate) async fn producer_baseline(
    args: &Args,
    topic: &str,
    rate: Option<f64>,
    linger_ms: Option<u32>,
    load: Option<Arc<Writer>>,
) -> Result<Baseline> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "7000")
        .set("partitioner", "murmur2_random");
    if let Some(linger) = linger_ms {
        config.set("linger.ms", linger.to_string());
    }
    let producer: FutureProducer = config.create()?;
    let send = |n: u64| {
        let key = format!("key-{}", n % args.keys);
        let payload = json!({"n": n, "amount": n % 1000}).to_string();
        let sent = Instant::now();
        producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
            .map_err(|(e, _)| e)
            .map(|delivery| async move {
                match delivery.await {
                    Ok(Ok(_)) => Ok(sent.elapsed()),
                    Ok(Err((e, _))) => Err(anyhow::anyhow!("delivery failed: {e}")),
                    Err(_) => Err(anyhow::anyhow!("delivery report lost")),
                }
            })
    };
    // Warm-up: connections, metadata, the producer id.
    let warm: Vec<_> = (0..args.keys).map(send).collect::<Result<_, _>>()?;
    for r in join_all(warm).await {
        r?;
    }
    let under_load = load.is_some();
    let load = load.map(|writer| {
        let stream = Stream {
            rate: Some(rate.unwrap_or(args.rate)),
            segments: vec![args.run_len() + Duration::from_millis(500)],
            tasks: args.writers,
        };
        tokio::spawn(async move { stream.run(writer).await })
    });
    if load.is_some() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cpu = CpuMeter::new(args.broker_pid).start();
    let start = Instant::now();
    let mut samples = Vec::new();
    match rate {
        Some(rate) => {
            let slots = (rate * args.run_len().as_secs_f64()).floor() as u64;
            let mut pending = tokio::task::JoinSet::new();
            for n in 0..slots {
                let due = start + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                pending.spawn(send(n)?);
            }
            while let Some(joined) = pending.join_next().await {
                samples.push(joined??);
            }
        }
        None => {
            for n in 0..SEQUENTIAL_SENDS {
                samples.push(send(n)?.await?);
            }
        }
    }
    let cpu = cpu.finish();
    if let Some(load) = load {
        load.await??;
    }
    Ok(Baseline {
        rate,
        linger_ms,
        under_load,
        achieved: samples.len() as f64 / start.elapsed().as_secs_f64(),
        latency: Dist::of(samples),
        cpu,
    })
}
