//! `outbox cursor`: inspect, create and move named subscriber cursors
//! (`outbox_ports::CursorStore`, on `SeaOrmCursorStore`).
//!
//! A cursor's position is opaque to the port; the outbox log positions it counts in
//! are message sequence numbers (`StoredMessage::seq`), written as decimal text. A
//! cursor reads one outbox table, named by `--table`; its lag is that table's latest
//! sequence number minus the cursor's position. The port can load and save a named
//! cursor but not list them, so every command names its cursors.

use crate::admin::{self, Admin, Connection, parse_table, table_context, usage};
use crate::output::{json_time, print_json, print_table, text_time};
use anyhow::{Context, anyhow};
use chrono::Utc;
use outbox_domain::Identifier;
use outbox_ports::{Cursor, CursorPosition, CursorStore, StoreError};
use outbox_sea_orm::SeaOrmCursorStore;
use serde_json::{Value, json};
use std::process::ExitCode;

/// Options of `outbox cursor`.
#[derive(Debug, clap::Args)]
pub(crate) struct CursorArgs {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    connection: Connection,
    /// The outbox table the cursors read (for their lag, and for `latest`)
    /// [default: outbox_messages].
    #[arg(long, value_name = "NAME", value_parser = parse_table, global = true)]
    table: Option<Identifier>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show named cursors: position, version, when they last moved, and how far they
    /// lag behind the newest message.
    Status {
        /// The cursor names.
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
    /// Create a cursor. Fails if it exists.
    Init {
        /// The cursor name.
        name: String,
        /// Where it starts: everything up to and including this sequence number counts
        /// as read. `0` reads the whole log; `latest` only what comes next.
        #[arg(long, value_name = "SEQ|latest", default_value = "0", value_parser = parse_position)]
        at: Position,
    },
    /// Move an existing cursor (for example back, to read messages again). A
    /// subscriber that moves it at the same time wins or loses cleanly: the move is a
    /// compare-and-set on the cursor's version.
    Reset {
        /// The cursor name.
        name: String,
        /// The new position (as for `init --at`).
        #[arg(long, value_name = "SEQ|latest", default_value = "0", value_parser = parse_position)]
        to: Position,
    },
}

/// A position given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Seq(u64),
    Latest,
}

fn parse_position(text: &str) -> Result<Position, String> {
    if text == "latest" {
        return Ok(Position::Latest);
    }
    text.parse()
        .map(Position::Seq)
        .map_err(|_| "expected a sequence number (0, 1, …) or `latest`".to_owned())
}

pub(crate) async fn run(args: CursorArgs) -> anyhow::Result<ExitCode> {
    admin::finish(cursor(args).await)
}

async fn cursor(args: CursorArgs) -> anyhow::Result<ExitCode> {
    let table = args.table.clone().unwrap_or_else(admin::default_table);
    match &args.action {
        Action::Status { names } => names.iter().try_for_each(|n| check_name(n))?,
        Action::Init { name, .. } | Action::Reset { name, .. } => check_name(name)?,
    }
    let admin = Admin::open(&args.connection, "cursor").await?;
    let outbox = admin.stores(std::slice::from_ref(&table))?.remove(0);
    let cursors = SeaOrmCursorStore::new(admin.db.clone());
    let latest = outbox
        .latest_seq()
        .await
        .with_context(|| table_context("read", &outbox))?;
    match args.action {
        Action::Status { names } => status(&admin, &cursors, &table, latest, &names).await,
        Action::Init { name, at } => {
            let position = resolve(at, latest);
            let cursor = cursors
                .save(&name, position, None, Utc::now())
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => anyhow!(
                        "cursor {name} exists already; move it with `outbox cursor reset {name}`"
                    ),
                    e => anyhow::Error::new(e).context(format!("create the cursor {name}")),
                })?;
            report(&admin, "init", &table, latest, None, &cursor)
        }
        Action::Reset { name, to } => {
            let before = load(&cursors, &name).await?.ok_or_else(|| {
                anyhow!("no cursor {name}; create it with `outbox cursor init {name}`")
            })?;
            let position = resolve(to, latest);
            let cursor = cursors
                .save(&name, position, Some(before.version), Utc::now())
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => anyhow!(
                        "cursor {name} moved while it was being reset (it was at version {}); \
                         nothing was written: look at it again and reset again",
                        before.version
                    ),
                    e => anyhow::Error::new(e).context(format!("move the cursor {name}")),
                })?;
            report(&admin, "reset", &table, latest, Some(&before), &cursor)
        }
    }
}

/// Cursor names are stored as given; an empty one is a usage error.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.trim().is_empty() {
        return Err(usage("a cursor name must not be empty"));
    }
    Ok(())
}

fn resolve(position: Position, latest: Option<u64>) -> CursorPosition {
    let seq = match position {
        Position::Seq(seq) => seq,
        Position::Latest => latest.unwrap_or(0),
    };
    CursorPosition(seq.to_string())
}

async fn load(cursors: &SeaOrmCursorStore, name: &str) -> anyhow::Result<Option<Cursor>> {
    cursors.load(name).await.with_context(|| {
        format!("read the cursor {name} (has `outbox migrate up` been run on this database?)")
    })
}

/// How far `cursor` is behind the newest message, when its position is a sequence
/// number.
fn lag(cursor: &Cursor, latest: Option<u64>) -> Option<u64> {
    let position: u64 = cursor.position.0.parse().ok()?;
    Some(latest.unwrap_or(0).saturating_sub(position))
}

fn cursor_json(cursor: &Cursor, latest: Option<u64>) -> Value {
    json!({
        "name": cursor.name,
        "position": cursor.position.0,
        "version": cursor.version,
        "updated_at": json_time(Some(cursor.updated_at)),
        "lag": lag(cursor, latest),
    })
}

async fn status(
    admin: &Admin,
    cursors: &SeaOrmCursorStore,
    table: &Identifier,
    latest: Option<u64>,
    names: &[String],
) -> anyhow::Result<ExitCode> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match load(cursors, name).await? {
            Some(c) => found.push(c),
            None => missing.push(name.clone()),
        }
    }
    if admin.json {
        print_json(&json!({
            "database": admin.database,
            "table": table.as_str(),
            "latest_seq": latest,
            "cursors": found.iter().map(|c| cursor_json(c, latest)).collect::<Vec<_>>(),
            "missing": missing,
        }))?;
    } else {
        println!(
            "table: {table}, latest seq {}",
            latest.map_or_else(|| "- (empty)".to_owned(), |s| s.to_string())
        );
        println!();
        if !found.is_empty() {
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.position.0.clone(),
                        lag(c, latest).map_or_else(|| "?".to_owned(), |l| l.to_string()),
                        c.version.to_string(),
                        text_time(Some(c.updated_at)),
                    ]
                })
                .collect();
            print_table(&["NAME", "POSITION", "LAG", "VERSION", "UPDATED"], &rows);
        }
    }
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow!("no cursor named {}", missing.join(", ")))
    }
}

fn report(
    admin: &Admin,
    action: &str,
    table: &Identifier,
    latest: Option<u64>,
    before: Option<&Cursor>,
    cursor: &Cursor,
) -> anyhow::Result<ExitCode> {
    if admin.json {
        print_json(&json!({
            "database": admin.database,
            "action": action,
            "table": table.as_str(),
            "latest_seq": latest,
            "previous": before.map(|c| cursor_json(c, latest)),
            "cursor": cursor_json(cursor, latest),
        }))?;
    } else {
        match before {
            Some(b) => println!(
                "moved cursor {} from {} to {} (version {})",
                cursor.name, b.position.0, cursor.position.0, cursor.version
            ),
            None => println!(
                "created cursor {} at {} (version {})",
                cursor.name, cursor.position.0, cursor.version
            ),
        }
        if let Some(l) = lag(cursor, latest) {
            println!("lag {l} behind {table}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_numbers_or_latest() {
        assert_eq!(parse_position("42"), Ok(Position::Seq(42)));
        assert_eq!(parse_position("latest"), Ok(Position::Latest));
        assert!(parse_position("-1").is_err());
        assert!(parse_position("soon").is_err());
    }

    #[test]
    fn lag_counts_to_the_newest_message() {
        let c = |p: &str| Cursor::new("c".into(), CursorPosition(p.into()), 1, Utc::now());
        assert_eq!(lag(&c("10"), Some(15)), Some(5));
        assert_eq!(lag(&c("20"), Some(15)), Some(0));
        assert_eq!(lag(&c("3"), None), Some(0));
        assert_eq!(lag(&c("tx:9"), Some(15)), None);
    }
}
