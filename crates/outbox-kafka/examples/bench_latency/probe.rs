//! The maximum sustainable rate, which sets the high rate.

use crate::Args;
use crate::cells::{Mode, ModeSetup, drain, prepare_relay};
use crate::instrument::{Tracker, lock};
use crate::writer::Stream;
use anyhow::Result;
use outbox_kafka::KafkaConfig;
use std::sync::Arc;
use std::time::Duration;

/// One step of the search: a paced stream at `rate` with an in-process relay.
#[derive(Debug, Clone)]
pub(crate) struct ProbeStep {
    pub(crate) rate: f64,
    /// Commits per second over the measured part.
    pub(crate) achieved: f64,
    /// Messages committed but not yet acknowledged when the writers stopped.
    pub(crate) backlog: usize,
    pub(crate) sustainable: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) steps: Vec<ProbeStep>,
    /// The highest sustainable rate tried (0 if none was).
    pub(crate) max: f64,
    pub(crate) step: Duration,
}

/// A rate is sustainable when the writers achieve 95% of it and, when they stop, at
/// most a quarter of a second's worth of messages is still unacknowledged (a relay
/// that falls behind leaves a backlog that grows with the length of the step).
pub(crate) fn sustainable(rate: f64, achieved: f64, backlog: usize) -> bool {
    achieved >= 0.95 * rate && (backlog as f64) <= 0.25 * rate
}

/// The maximum sustainable rate with an in-process relay (`RelayConfig` defaults):
/// paced steps starting at the target rate, ×1.5 while sustainable (÷1.5 while not),
/// then halving the interval between the best sustainable and the lowest
/// unsustainable rate until they are within 10%, at most `MAX_STEPS` steps. The
/// backlog of each step is drained before the next.
pub(crate) async fn probe_max_rate(
    args: &Args,
    url: &str,
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<Probe> {
    const MAX_STEPS: usize = 6;
    // A table of its own, so that its backlog stays out of the cells.
    let history = (topic, args.keys, args.history);
    let setup = ModeSetup::new(Mode::InProcess, "bench_probe", url, kafka, history).await?;
    let tracker = Arc::new(Tracker::default());
    let prepared = prepare_relay(args, &setup, &tracker, topic, Duration::ZERO).await?;
    let writer = prepared.writer.clone();
    let relay = prepared.spawn();
    let (warmup, measure) = if args.quick {
        (Duration::from_secs(1), Duration::from_secs(2))
    } else {
        (Duration::from_secs(2), Duration::from_secs(4))
    };
    // Warm up (connections, the producer id, the topic's metadata) at a tenth of the
    // target rate, so that the first step does not pay for it.
    Stream {
        rate: Some(args.rate / 10.0),
        segments: vec![Duration::from_secs(1)],
        tasks: args.writers,
    }
    .run(writer.clone())
    .await?;
    drain(&tracker).await?;
    let mut steps: Vec<ProbeStep> = Vec::new();
    let mut rate = args.rate;
    for _ in 0..MAX_STEPS {
        let stream = Stream {
            rate: Some(rate),
            segments: vec![warmup, measure],
            tasks: args.writers,
        };
        let start = stream.run(writer.clone()).await?;
        let backlog = tracker.committed().saturating_sub(tracker.acked());
        let (from, to) = (start + warmup, start + warmup + measure);
        let committed = lock(&tracker.commits)
            .values()
            .filter(|(t, _)| *t >= from && *t < to)
            .count();
        let achieved = committed as f64 / measure.as_secs_f64();
        drain(&tracker).await?;
        let ok = sustainable(rate, achieved, backlog);
        eprintln!(
            "[bench_latency]   {rate:.0}/s: achieved {achieved:.0}/s, backlog {backlog}: {}",
            if ok { "sustainable" } else { "not sustainable" }
        );
        steps.push(ProbeStep {
            rate,
            achieved,
            backlog,
            sustainable: ok,
        });
        let best = steps
            .iter()
            .filter(|s| s.sustainable)
            .map(|s| s.rate)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
        let lowest_bad = steps
            .iter()
            .filter(|s| !s.sustainable)
            .map(|s| s.rate)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))));
        rate = match (best, lowest_bad) {
            (Some(good), None) => good * 1.5,
            (None, Some(bad)) => bad / 1.5,
            (Some(good), Some(bad)) if bad / good > 1.1 => ((good + bad) / 2.0).round(),
            _ => break,
        };
    }
    relay.handle.shutdown().await;
    setup.close().await;
    let max = steps
        .iter()
        .filter(|s| s.sustainable)
        .map(|s| s.rate)
        .fold(0.0, f64::max);
    Ok(Probe {
        steps,
        max,
        step: warmup + measure,
    })
}
