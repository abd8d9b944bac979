//! `outbox status`: the health of the outbox per service — backlog, the age of the
//! oldest unsent message, retries, messages in flight, parked keys, dead letters and
//! what was delivered — from `MessageStore::stats_by_service`, and with `--parked` the
//! heads that hold their keys back.

use crate::admin::{self, Admin, Connection, Tables, table_context};
use crate::output::{
    self, age, cell, json_time, message_summary, print_json, print_table, text_time,
};
use anyhow::Context;
use chrono::Utc;
use outbox_ports::{MessageStore, OutboxStats};
use serde_json::{Value, json};
use std::process::ExitCode;

/// Options of `outbox status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    tables: Tables,
    /// Also list the heads of parked keys (pending after a failed attempt, holding
    /// back the rest of their key), at most this many per table.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "20",
          value_parser = clap::value_parser!(u32).range(1..))]
    parked: Option<u32>,
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    admin::finish(status(args).await)
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let tables = args.tables.resolve()?;
    let admin = Admin::open(&args.connection, "status").await?;
    let now = Utc::now();
    let mut services = Vec::new();
    let mut parked = Vec::new();
    for store in admin.stores(&tables)? {
        let table = store.config().table.to_string();
        let stats = store
            .stats_by_service()
            .await
            .with_context(|| table_context("read", &store))?;
        for (service, s) in stats {
            services.push((table.clone(), service, s));
        }
        if let Some(limit) = args.parked {
            let heads = store
                .parked_heads(limit as usize)
                .await
                .with_context(|| table_context("read", &store))?;
            parked.extend(heads.into_iter().map(|m| (table.clone(), m)));
        }
    }
    if admin.json {
        print_json(&document(
            &admin,
            now,
            &services,
            args.parked.map(|_| &parked[..]),
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    if services.is_empty() {
        println!("no messages in {}", names(&tables));
    } else {
        let rows: Vec<Vec<String>> = services
            .iter()
            .map(|(table, service, s)| {
                vec![
                    table.clone(),
                    service.clone(),
                    s.pending.to_string(),
                    s.oldest_unsent_at
                        .map_or_else(|| "-".to_owned(), |at| age((now - at).num_seconds())),
                    s.retrying.to_string(),
                    s.in_flight.to_string(),
                    s.parked_keys.to_string(),
                    s.dead.to_string(),
                    s.published.to_string(),
                    s.consumed.to_string(),
                    s.recorded.to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "TABLE",
                "SERVICE",
                "BACKLOG",
                "OLDEST_UNSENT",
                "RETRYING",
                "IN_FLIGHT",
                "PARKED_KEYS",
                "DEAD",
                "PUBLISHED",
                "CONSUMED",
                "RECORDED",
            ],
            &rows,
        );
        println!();
        println!(
            "BACKLOG: pending, never tried; OLDEST_UNSENT: age of the oldest unfinished message; \
             PARKED_KEYS: keys held back by a failed head (see `outbox status --parked`)"
        );
    }
    if args.parked.is_some() {
        println!();
        if parked.is_empty() {
            println!("no parked keys");
        } else {
            println!("heads of parked keys (kill one with `outbox dead kill ID --reason …`):");
            let rows: Vec<Vec<String>> = parked
                .iter()
                .map(|(table, m)| {
                    let d = &m.delivery;
                    vec![
                        table.clone(),
                        m.message.id.to_string(),
                        m.message.service.clone(),
                        m.message.partition_key.clone(),
                        format!("{}/{}", d.attempts, d.max_attempts),
                        text_time(Some(d.next_attempt_at)),
                        cell(d.last_error.as_ref().map_or("", |e| e.as_str())),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TABLE",
                    "ID",
                    "SERVICE",
                    "KEY",
                    "ATTEMPTS",
                    "NEXT_ATTEMPT",
                    "LAST_ERROR",
                ],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn names(tables: &[outbox_domain::Identifier]) -> String {
    tables
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `--json` document.
fn document(
    admin: &Admin,
    now: chrono::DateTime<Utc>,
    services: &[(String, String, OutboxStats)],
    parked: Option<&[(String, outbox_ports::StoredMessage)]>,
) -> Value {
    let services: Vec<Value> = services
        .iter()
        .map(|(table, service, s)| {
            json!({
                "table": table,
                "service": service,
                "pending": s.pending,
                "retrying": s.retrying,
                "in_flight": s.in_flight,
                "parked_keys": s.parked_keys,
                "dead": s.dead,
                "published": s.published,
                "consumed": s.consumed,
                "recorded": s.recorded,
                "oldest_unsent_at": json_time(s.oldest_unsent_at),
                "oldest_unsent_age_seconds": s.oldest_unsent_at.map(|at| (now - at).num_seconds().max(0)),
            })
        })
        .collect();
    let mut doc = json!({
        "database": admin.database,
        "generated_at": output::json_time(Some(now)),
        "services": services,
    });
    if let Some(parked) = parked {
        doc["parked"] = parked
            .iter()
            .map(|(table, m)| message_summary(table, m))
            .collect();
    }
    doc
}
