//! `outbox compensation`: an operator lists the compensation items of failed batch
//! operations and resolves or abandons the ones the worker gave up on.
//!
//! The transitions are the domain's, applied by `outbox_runtime::CompensationOperator`
//! (the same code behind `CompensationWorker::resolve` / `abandon`), with a
//! compare-and-set on the item's version: an item someone else changed meanwhile is
//! never overwritten.

use crate::database::{self, DATABASE_URL_ENV};
use anyhow::{Context, anyhow};
use chrono::SecondsFormat;
use outbox_domain::{CompensationItem, CompensationStatus};
use outbox_ports::{CompensationFilter, CompensationStore, StoreError};
use outbox_runtime::{CompensationOperator, OperatorAction};
use outbox_sea_orm::SeaOrmCompensationStore;
use std::process::ExitCode;
use std::sync::Arc;
use uuid::Uuid;

/// Options of `outbox compensation`.
#[derive(Debug, clap::Args)]
pub(crate) struct CompensationArgs {
    #[command(subcommand)]
    action: Action,
    /// Database holding the compensation items: `postgres://…`, `mysql://…` or
    /// `sqlite:FILE`. Required, here or in the environment.
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true, global = true)]
    database_url: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print compensation items, oldest first, as a table.
    List {
        /// Only items in this status: pending, retrying, resolved, manual_required or
        /// abandoned.
        #[arg(long, value_parser = parse_status)]
        status: Option<CompensationStatus>,
        /// Only items of this batch.
        #[arg(long = "batch", value_name = "ID")]
        batch: Option<String>,
        /// At most this many items.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Print one JSON document on stdout instead of the table (docs/admin-cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Mark an item resolved (for example one in manual_required that was fixed by
    /// hand), recording who and why.
    Resolve(Decision),
    /// Give up on an item, recording who and why.
    Abandon(Decision),
}

/// Who decides what about which item.
#[derive(Debug, clap::Args)]
struct Decision {
    /// The item's id (first column of `outbox compensation list`).
    id: Uuid,
    /// Who decides (recorded on the item).
    #[arg(long, value_name = "WHO")]
    by: String,
    /// Why (recorded on the item).
    #[arg(long, value_name = "TEXT")]
    note: String,
    /// Act only if the item is still at this version (the VERSION column of `list`),
    /// so a decision taken on what `list` showed is not applied to a changed item.
    #[arg(long, value_name = "N")]
    expected_version: Option<u64>,
}

/// Exit code when no database URL was given (a usage error, like clap's own).
const EXIT_USAGE: u8 = 2;

/// The longest reason or note `list` prints in full.
const MAX_REASON_CHARS: usize = 80;

fn parse_status(name: &str) -> Result<CompensationStatus, String> {
    CompensationStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| {
            let names: Vec<_> = CompensationStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("expected one of {}", names.join(", "))
        })
}

pub(crate) async fn run(args: CompensationArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = args.database_url.filter(|url| !url.trim().is_empty()) else {
        eprintln!(
            "error: `outbox compensation` needs the database: pass --database-url URL or set \
             {DATABASE_URL_ENV}"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    if let Some(path) = database::sqlite_path(&url)
        && !path.exists()
    {
        // Connecting would create an empty file; there is nothing to list or decide.
        return Err(anyhow!("no SQLite database at {}", path.display()));
    }
    let db = database::connect(&url).await?;
    let described = database::describe(&url, db.get_database_backend());
    if !matches!(args.action, Action::List { json: true, .. }) {
        println!("database: {described}");
    }
    let store = Arc::new(SeaOrmCompensationStore::new(db));
    match args.action {
        Action::List {
            status,
            batch,
            limit,
            json,
        } => {
            let filter = CompensationFilter {
                status,
                batch_id: batch,
                limit: limit as usize,
            };
            let items = store.list(&filter).await.context(
                "read the compensation items (has `outbox migrate up` been run on this database?)",
            )?;
            if json {
                crate::output::print_json(&list_json(&described, &items, filter.limit))?;
            } else {
                print_table(&items, filter.limit);
            }
        }
        Action::Resolve(decision) => {
            decide(
                store,
                OperatorAction::Resolve,
                ("resolve", "resolved"),
                decision,
            )
            .await?;
        }
        Action::Abandon(decision) => {
            decide(
                store,
                OperatorAction::Abandon,
                ("abandon", "abandoned"),
                decision,
            )
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    store: Arc<SeaOrmCompensationStore>,
    action: OperatorAction,
    (verb, done): (&str, &str),
    d: Decision,
) -> anyhow::Result<()> {
    let operator = CompensationOperator::new(store.clone());
    let item = match operator
        .act(d.id, action, &d.by, &d.note, d.expected_version)
        .await
    {
        Ok(item) => item,
        Err(StoreError::NotFound { .. }) => {
            return Err(anyhow!(
                "cannot {verb} compensation item {}: no such item (see `outbox compensation list`)",
                d.id
            ));
        }
        Err(StoreError::Conflict { expected, .. }) => {
            let now = match store.get(d.id).await {
                Ok(Some(item)) => {
                    format!("; it is now {} at version {}", item.status, item.version)
                }
                _ => String::new(),
            };
            return Err(anyhow!(
                "cannot {verb} compensation item {}: someone else changed it (expected version \
                 {expected}{now}); nothing was written: look at it again and decide again",
                d.id
            ));
        }
        Err(StoreError::InvalidInput(why)) => {
            return Err(anyhow!("cannot {verb} compensation item {}: {why}", d.id));
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot {verb} compensation item {}", d.id))
            );
        }
    };
    println!(
        "{done} compensation item {} (batch {}, index {}, operation {}) by {}: {}",
        item.id,
        item.batch_id,
        item.item_index,
        item.operation_type,
        item.resolved_by.as_deref().unwrap_or_default(),
        item.resolution_note.as_deref().unwrap_or_default(),
    );
    println!("now version {}", item.version);
    Ok(())
}

/// `list --json`: the items with stable field names, and whether the limit cut the
/// list short.
fn list_json(database: &str, items: &[CompensationItem], limit: usize) -> serde_json::Value {
    use crate::output::json_time;
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|i| {
            serde_json::json!({
                "id": i.id.to_string(),
                "batch_id": i.batch_id,
                "item_index": i.item_index,
                "operation_type": i.operation_type,
                "status": i.status.as_str(),
                "retry_count": i.retry_count,
                "max_retries": i.max_retries,
                "next_retry_at": json_time(Some(i.next_retry_at)),
                "failure_reason": i.failure_reason.as_str(),
                "resolved_by": i.resolved_by,
                "resolution_note": i.resolution_note,
                "resolved_at": json_time(i.resolved_at),
                "created_at": json_time(Some(i.created_at)),
                "updated_at": json_time(Some(i.updated_at)),
                "version": i.version,
                "payload": i.payload,
            })
        })
        .collect();
    serde_json::json!({
        "database": database,
        "limit": limit,
        "limit_reached": items.len() == limit,
        "items": items,
    })
}

/// The last column: an operator's decision, or else the latest failure.
fn reason(item: &CompensationItem) -> String {
    let text = match (&item.resolved_by, &item.resolution_note) {
        (Some(by), note) => format!("by {by}: {}", note.as_deref().unwrap_or_default()),
        (None, _) => item.failure_reason.as_str().to_owned(),
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX_REASON_CHARS {
        let cut: String = text.chars().take(MAX_REASON_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn print_table(items: &[CompensationItem], limit: usize) {
    println!();
    if items.is_empty() {
        println!("no compensation items match");
        return;
    }
    let header = [
        "ID",
        "BATCH",
        "INDEX",
        "OPERATION",
        "STATUS",
        "RETRIES",
        "VERSION",
        "UPDATED",
        "REASON / NOTE",
    ];
    let rows: Vec<[String; 9]> = items
        .iter()
        .map(|i| {
            [
                i.id.to_string(),
                i.batch_id.clone(),
                i.item_index.to_string(),
                i.operation_type.clone(),
                i.status.to_string(),
                format!("{}/{}", i.retry_count, i.max_retries),
                i.version.to_string(),
                i.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                reason(i),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (n, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if n + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{out}");
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    println!();
    if items.len() == limit {
        println!("{} item(s), the --limit; there may be more", items.len());
    } else {
        println!("{} item(s)", items.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_parses_by_its_stable_name() {
        for s in CompensationStatus::ALL {
            assert_eq!(parse_status(s.as_str()), Ok(s));
        }
        assert!(
            parse_status("done")
                .unwrap_err()
                .contains("manual_required")
        );
    }
}
