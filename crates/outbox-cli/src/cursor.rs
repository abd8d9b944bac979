//! `outbox cursor`: inspect, create and move named subscriber cursors
//! (`outbox_ports::CursorStore`, on `SeaOrmCursorStore`), which read an outbox table as
//! a gap-safe log (`outbox_ports::OutboxLog`, on `SeaOrmStore`).
//!
//! Positions are the log's own (`TRANSACTION_ID:SEQ` on PostgreSQL, a number
//! elsewhere); the commands also take the names `start`, `unfinished` and `end`. A
//! cursor reads one outbox table, named by `--table`; its lag is the number of entries
//! after it and the age of the oldest. The port can load and save a named cursor but not
//! list them, so every command names its cursors.

use crate::admin::{self, Admin, Connection, parse_table, table_context, usage};
use crate::output::{json_time, print_json, print_table, text_time};
use anyhow::{Context, anyhow};
use chrono::Utc;
use outbox_domain::Identifier;
use outbox_ports::{Cursor, CursorPosition, CursorStore, LogLag, OutboxLog, StoreError};
use outbox_sea_orm::{SeaOrmCursorStore, SeaOrmStore};
use serde_json::{Value, json};
use std::process::ExitCode;

/// Options of `outbox cursor`.
#[derive(Debug, clap::Args)]
pub(crate) struct CursorArgs {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    connection: Connection,
    /// The outbox table the cursors read (for their lag, and for `unfinished` and
    /// `end`) [default: outbox_messages].
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
        /// Where it starts: everything up to and including this position counts as
        /// read. `start` reads the whole log; `unfinished` from the earliest message
        /// the relay has not finished; `end` only what comes next; or a position as
        /// `cursor status` shows it.
        #[arg(long, value_name = "start|unfinished|end|POSITION", default_value = "start", value_parser = parse_position)]
        at: Position,
    },
    /// Move an existing cursor (for example back, to read messages again). A
    /// subscriber that moves it at the same time wins or loses cleanly: the move is a
    /// compare-and-set on the cursor's version.
    Reset {
        /// The cursor name.
        name: String,
        /// The new position (as for `init --at`).
        #[arg(long, value_name = "start|unfinished|end|POSITION", default_value = "start", value_parser = parse_position)]
        to: Position,
    },
}

/// A position given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Start,
    Unfinished,
    End,
    /// A position of the log, checked against it once connected.
    At(String),
}

fn parse_position(text: &str) -> Result<Position, String> {
    Ok(match text {
        "start" => Position::Start,
        "unfinished" => Position::Unfinished,
        "end" | "latest" => Position::End,
        "" => return Err("expected start, unfinished, end or a position".to_owned()),
        other => Position::At(other.to_owned()),
    })
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
    let log = admin.stores(std::slice::from_ref(&table))?.remove(0);
    let cursors = SeaOrmCursorStore::new(admin.db.clone());
    let end = log
        .end()
        .await
        .with_context(|| table_context("read", &log))?;
    let out = Out {
        admin: &admin,
        log: &log,
        end: &end,
    };
    match args.action {
        Action::Status { names } => status(&out, &cursors, &names).await,
        Action::Init { name, at } => {
            let position = resolve(&log, at, &end).await?;
            let cursor = cursors
                .save(&name, position, None, Utc::now())
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } => anyhow!(
                        "cursor {name} exists already; move it with `outbox cursor reset {name}`"
                    ),
                    e => anyhow::Error::new(e).context(format!("create the cursor {name}")),
                })?;
            report(&out, "init", None, &cursor).await
        }
        Action::Reset { name, to } => {
            let before = load(&cursors, &name).await?.ok_or_else(|| {
                anyhow!("no cursor {name}; create it with `outbox cursor init {name}`")
            })?;
            let position = resolve(&log, to, &end).await?;
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
            report(&out, "reset", Some(&before), &cursor).await
        }
    }
}

/// What every report needs: the options, the log and its end.
struct Out<'a> {
    admin: &'a Admin,
    log: &'a SeaOrmStore,
    end: &'a CursorPosition,
}

/// Cursor names are stored as given; an empty one is a usage error.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.trim().is_empty() {
        return Err(usage("a cursor name must not be empty"));
    }
    Ok(())
}

async fn resolve(
    log: &SeaOrmStore,
    position: Position,
    end: &CursorPosition,
) -> anyhow::Result<CursorPosition> {
    Ok(match position {
        Position::Start => log.start(),
        Position::End => end.clone(),
        Position::Unfinished => log
            .unfinished_start()
            .await
            .with_context(|| table_context("read", log))?,
        Position::At(text) => log
            .parse_position(&text)
            .map_err(|e| usage(e.to_string()))?,
    })
}

async fn load(cursors: &SeaOrmCursorStore, name: &str) -> anyhow::Result<Option<Cursor>> {
    cursors.load(name).await.with_context(|| {
        format!("read the cursor {name} (has `outbox migrate up` been run on this database?)")
    })
}

/// How far `cursor` is behind the end of the log; `None` for a position the log cannot
/// read from (written by something else, or before a restore).
async fn lag(log: &SeaOrmStore, cursor: &Cursor) -> anyhow::Result<Option<LogLag>> {
    match log.lag(&cursor.position).await {
        Ok(lag) => Ok(Some(lag)),
        Err(StoreError::InvalidPosition(_)) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(table_context("read", log))),
    }
}

fn lag_seconds(lag: &LogLag) -> Option<i64> {
    lag.oldest_at
        .map(|at| (Utc::now() - at).num_seconds().max(0))
}

fn cursor_json(cursor: &Cursor, lag: Option<LogLag>) -> Value {
    json!({
        "name": cursor.name,
        "position": cursor.position.0,
        "version": cursor.version,
        "updated_at": json_time(Some(cursor.updated_at)),
        "lag": lag.map(|l| l.entries),
        "oldest_unread_at": lag.and_then(|l| l.oldest_at).map(|at| json_time(Some(at))),
        "lag_seconds": lag.as_ref().and_then(lag_seconds),
    })
}

async fn status(
    out: &Out<'_>,
    cursors: &SeaOrmCursorStore,
    names: &[String],
) -> anyhow::Result<ExitCode> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match load(cursors, name).await? {
            Some(c) => {
                let lag = lag(out.log, &c).await?;
                found.push((c, lag));
            }
            None => missing.push(name.clone()),
        }
    }
    let table = &out.log.config().table;
    if out.admin.json {
        print_json(&json!({
            "database": out.admin.database,
            "table": table.as_str(),
            "end": out.end.0,
            "cursors": found.iter().map(|(c, l)| cursor_json(c, *l)).collect::<Vec<_>>(),
            "missing": missing,
        }))?;
    } else {
        println!("table: {table}, log end {}", out.end.0);
        println!();
        if !found.is_empty() {
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|(c, lag)| {
                    vec![
                        c.name.clone(),
                        c.position.0.clone(),
                        lag.map_or_else(|| "?".to_owned(), |l| l.entries.to_string()),
                        lag.as_ref()
                            .and_then(lag_seconds)
                            .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
                        c.version.to_string(),
                        text_time(Some(c.updated_at)),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "POSITION",
                    "LAG",
                    "OLDEST UNREAD",
                    "VERSION",
                    "UPDATED",
                ],
                &rows,
            );
        }
    }
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow!("no cursor named {}", missing.join(", ")))
    }
}

async fn report(
    out: &Out<'_>,
    action: &str,
    before: Option<&Cursor>,
    cursor: &Cursor,
) -> anyhow::Result<ExitCode> {
    let table = &out.log.config().table;
    let lag_now = lag(out.log, cursor).await?;
    if out.admin.json {
        let previous = match before {
            Some(b) => Some(cursor_json(b, lag(out.log, b).await?)),
            None => None,
        };
        print_json(&json!({
            "database": out.admin.database,
            "action": action,
            "table": table.as_str(),
            "end": out.end.0,
            "previous": previous,
            "cursor": cursor_json(cursor, lag_now),
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
        if let Some(l) = lag_now {
            println!("lag {} behind {table}", l.entries);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_names_or_log_positions() {
        assert_eq!(parse_position("start"), Ok(Position::Start));
        assert_eq!(parse_position("unfinished"), Ok(Position::Unfinished));
        assert_eq!(parse_position("end"), Ok(Position::End));
        assert_eq!(parse_position("latest"), Ok(Position::End));
        assert_eq!(parse_position("42"), Ok(Position::At("42".into())));
        assert!(parse_position("").is_err());
    }
}
