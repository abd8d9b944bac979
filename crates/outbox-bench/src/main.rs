//! The scenarios of `cargo xtask bench` (issue 9; docs/benchmarks.md).
//!
//! Each subcommand runs one scenario against the PostgreSQL server at `--database-url`
//! (xtask starts one with the benchmark configuration), in databases of its own, and
//! writes a [`harness::Section`]: its part of the report in markdown, its figures as
//! JSON and its charts as SVG, under `--out`. `report` then assembles the sections into
//! one page. Every figure is paired with a baseline measured in the same run: on a
//! shared 2-core machine only such ratios mean something.

mod ceiling;
mod drain;
mod enqueue;
mod harness;
mod history;
#[cfg(feature = "kafka")]
mod kafka_drain;
mod peers;
mod report;
mod svg;

use anyhow::Result;
use clap::{Parser, Subcommand};
use harness::Ctx;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "outbox-bench", about = "outbox-rs benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// What every scenario takes.
#[derive(Debug, clap::Args)]
struct Common {
    /// PostgreSQL server URL (any database; scenarios create their own).
    #[arg(long, env = "OUTBOX_TEST_POSTGRES_URL")]
    database_url: String,
    /// Smaller backlogs and a single measured run.
    #[arg(long)]
    quick: bool,
    /// Where the section, its JSON and its charts go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

impl Common {
    fn ctx(&self) -> Ctx {
        Ctx {
            url: self.database_url.clone(),
            quick: self.quick,
            out: self.out.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// 1. Enqueue overhead: a business row alone, with our enqueue, with a hand-written
    ///    INSERT, and with our bulk path; 8 writers, synchronous commit on.
    Enqueue(#[command(flatten)] Common),
    /// 2. Drain throughput with a no-op publisher, 1, 2 and 4 relays.
    Drain(#[command(flatten)] Common),
    /// 3. Drain throughput to Kafka against raw rdkafka (feature `kafka`).
    #[cfg(feature = "kafka")]
    KafkaDrain {
        #[command(flatten)]
        common: Common,
        /// The broker's bootstrap servers.
        #[arg(long, env = "OUTBOX_TEST_KAFKA_BOOTSTRAP")]
        bootstrap: String,
    },
    /// 5. Claim cost and drain rate with 0, 1M and 5M finished rows, and on a table
    ///    without statistics.
    History(#[command(flatten)] Common),
    /// 6. The database's ceiling: plain-SQL `UPDATE … RETURNING` and
    ///    `DELETE … RETURNING` loops, 2 clients.
    Ceiling(#[command(flatten)] Common),
    /// 7. Peers on the same PostgreSQL: pgmq and graphile-worker.
    Peers {
        #[command(flatten)]
        common: Common,
        /// The `graphile-worker` command (xtask installs 0.17.3 with npm); the
        /// graphile-worker runs are skipped, and said so, without it.
        #[arg(long, env = "OUTBOX_BENCH_GRAPHILE_WORKER")]
        graphile_worker: Option<PathBuf>,
    },
    /// Assembles the sections under `--out` into one page.
    Report(report::Args),
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::Enqueue(c) => enqueue::run(&c.ctx()).await,
        Scenario::Drain(c) => drain::run(&c.ctx()).await,
        #[cfg(feature = "kafka")]
        Scenario::KafkaDrain { common, bootstrap } => {
            kafka_drain::run(&common.ctx(), &bootstrap).await
        }
        Scenario::History(c) => history::run(&c.ctx()).await,
        Scenario::Ceiling(c) => ceiling::run(&c.ctx()).await,
        Scenario::Peers {
            common,
            graphile_worker,
        } => peers::run(&common.ctx(), graphile_worker.as_deref()).await,
        Scenario::Report(args) => report::run(&args),
    }
}
