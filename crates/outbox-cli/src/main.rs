//! The `outbox` command: the demo and the schema migrations today; the relay daemon
//! and admin tools join it as their issues land.
//!
//! This crate is the top of the dependency graph (`… ← runtime ← cli`): it wires
//! adapters to the runtime and owns nothing the library needs. Adapters that need
//! system packages (rdkafka, pulsar) will be off-by-default cargo features here, so
//! `cargo run -p outbox-cli -- demo` builds with the Rust toolchain alone.

mod admin;
mod compensation;
mod config;
mod cursor;
mod database;
mod dead;
mod demo;
mod executor;
mod http;
mod migrate;
mod output;
mod relay;
mod status;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Transactional outbox relay and tools.
#[derive(Debug, Parser)]
#[command(name = "outbox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an order service, relays and a consumer end to end and verify the result.
    Demo(demo::DemoArgs),
    /// Apply, roll back or inspect the outbox-rs schema migrations.
    Migrate(migrate::MigrateArgs),
    /// List compensation items of failed batch operations; resolve or abandon them.
    Compensation(compensation::CompensationArgs),
    /// Show the outbox per service: backlog, oldest unsent, retries, parked keys, dead.
    Status(status::StatusArgs),
    /// List, show, replay, purge dead messages; kill the failing head of a parked key.
    Dead(dead::DeadArgs),
    /// Show, create and move named subscriber cursors.
    Cursor(cursor::CursorArgs),
    /// Run the relay daemon: publish every routed outbox table to the broker, with
    /// metrics and health endpoints, until SIGTERM or Ctrl-C.
    Relay(relay::RelayArgs),
    /// Check that the messages the outbox marked published are on the broker, each
    /// key in order (Kafka); exits 1 when some are missing or out of order.
    Verify(verify::VerifyArgs),
}

/// Exit code of a database URL this build cannot use (a usage error, like clap's).
const EXIT_BAD_URL: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Compensation(args) => compensation::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Dead(args) => dead::run(args).await,
            Command::Cursor(args) => cursor::run(args).await,
            Command::Relay(args) => relay::run(args).await,
            Command::Verify(args) => verify::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let bad_url = e.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<outbox_sea_orm::ConnectError>(),
                    Some(outbox_sea_orm::ConnectError::UnsupportedUrl(_))
                )
            });
            if bad_url {
                ExitCode::from(EXIT_BAD_URL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
