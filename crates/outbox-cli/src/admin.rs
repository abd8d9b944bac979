//! What the admin commands (`status`, `dead`, `cursor`) share: the database and table
//! options, opening the outbox stores they name, usage errors (exit code 2), and the
//! operator's confirmation of a destructive step.

use crate::database::{self, DATABASE_URL_ENV};
use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use outbox_domain::{Identifier, RouteRegistry};
use outbox_migrations::schema::OUTBOX_TABLE;
use outbox_sea_orm::{SeaOrmStore, StoreConfig};
use sea_orm::DatabaseConnection;
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code of a usage error (like clap's own).
pub(crate) const EXIT_USAGE: u8 = 2;

/// `--database-url` and `--json`, shared by every admin command.
#[derive(Debug, clap::Args)]
pub(crate) struct Connection {
    /// Database holding the outbox: `postgres://…`, `mysql://…` or `sqlite:FILE`.
    /// Required, here or in the environment.
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// Print one machine-readable JSON document on stdout instead of text (errors
    /// still go to stderr as text, with the same exit codes).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// `--table` or `--routes`: which outbox tables a command acts on.
#[derive(Debug, clap::Args)]
pub(crate) struct Tables {
    /// The outbox table [default: outbox_messages].
    #[arg(long, value_name = "NAME", value_parser = parse_table, global = true)]
    table: Option<Identifier>,
    /// A routing file (TOML, see docs/routing.md): act on every outbox table it names,
    /// one after the other. The file is read and validated before the database is
    /// touched.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "table")]
    routes: Option<PathBuf>,
}

impl Tables {
    /// The tables to act on, distinct and sorted (routes), or the one named (default
    /// `outbox_messages`).
    pub(crate) fn resolve(&self) -> anyhow::Result<Vec<Identifier>> {
        let Some(path) = &self.routes else {
            return Ok(vec![self.table.clone().unwrap_or_else(default_table)]);
        };
        route_tables(path)
    }
}

/// The distinct outbox tables a routing file names, sorted; the file is read and
/// validated first (errors in one line, naming the file).
pub(crate) fn route_tables(path: &std::path::Path) -> anyhow::Result<Vec<Identifier>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the routes file {}", path.display()))?;
    let registry = RouteRegistry::from_toml(&text).map_err(|e| {
        anyhow!(
            "the routes file {}: {}",
            path.display(),
            one_line(&e.to_string())
        )
    })?;
    let mut tables: Vec<Identifier> = registry.services().map(|s| s.table.clone()).collect();
    tables.sort();
    tables.dedup();
    Ok(tables)
}

/// A multi-line parser message (TOML errors quote the offending line and point at it
/// with carets) as one line: the sentences, without the quote.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('|')
                && !l.contains(" | ")
                && !l.chars().all(|c| matches!(c, '^' | ' ' | '|'))
        })
        .collect::<Vec<_>>()
        .join(": ")
}

/// The default outbox table.
pub(crate) fn default_table() -> Identifier {
    match Identifier::parse("table", OUTBOX_TABLE) {
        Ok(t) => t,
        Err(_) => unreachable!("the default table name is a valid identifier"),
    }
}

/// `--table NAME`: a validated identifier, so it can never smuggle SQL in.
pub(crate) fn parse_table(name: &str) -> Result<Identifier, String> {
    Identifier::parse("table", name).map_err(|e| e.to_string())
}

/// An RFC 3339 time (`2027-01-31T12:00:00Z`, `2027-01-31T13:00:00+01:00`).
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{e}; expected an RFC 3339 time such as 2027-01-31T12:00:00Z"))
}

/// A usage error found after clap's parsing (a missing database URL, contradictory
/// options): `finish` reports it and exits with [`EXIT_USAGE`].
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error as an `anyhow` error.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// Turns a [`Usage`] error into its message on stderr and exit code 2; every other
/// result goes back to `main` (which prints errors in one line and exits with 1, or 2
/// for an unsupported URL).
pub(crate) fn finish(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(e) => match e.chain().find_map(|c| c.downcast_ref::<Usage>()) {
            Some(u) => {
                eprintln!("error: {u}");
                Ok(ExitCode::from(EXIT_USAGE))
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// An open database and how to talk about it.
pub(crate) struct Admin {
    pub(crate) db: DatabaseConnection,
    /// The database, described without secrets.
    pub(crate) database: String,
    pub(crate) json: bool,
}

impl Admin {
    /// Connects to the database of `conn`. `command` names the command in the error
    /// when no URL is given. A `sqlite:` file that does not exist is an error (there
    /// is nothing to inspect, and connecting would create it).
    pub(crate) async fn open(conn: &Connection, command: &str) -> anyhow::Result<Self> {
        let Some(url) = conn
            .database_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
        else {
            return Err(usage(format!(
                "`outbox {command}` needs the database: pass --database-url URL or set \
                 {DATABASE_URL_ENV}"
            )));
        };
        if let Some(path) = database::sqlite_path(url)
            && !path.exists()
        {
            return Err(anyhow!("no SQLite database at {}", path.display()));
        }
        let db = database::connect(url).await?;
        let database = database::describe(url, db.get_database_backend());
        if !conn.json {
            println!("database: {database}");
        }
        Ok(Self {
            db,
            database,
            json: conn.json,
        })
    }

    /// A store on each of `tables`.
    pub(crate) fn stores(&self, tables: &[Identifier]) -> anyhow::Result<Vec<SeaOrmStore>> {
        tables
            .iter()
            .map(|t| {
                SeaOrmStore::new(
                    self.db.clone(),
                    StoreConfig::default().with_table(t.clone()),
                )
                .with_context(|| format!("open the outbox table {t}"))
            })
            .collect()
    }
}

/// The context of a failed read or write of an outbox table: most often the table is
/// missing.
pub(crate) fn table_context(verb: &str, store: &SeaOrmStore) -> String {
    let table = &store.config().table;
    if table.as_str() == OUTBOX_TABLE {
        format!(
            "{verb} the outbox table {table} (has `outbox migrate up` been run on this database?)"
        )
    } else {
        format!("{verb} the outbox table {table} (has `outbox migrate up --routes` created it?)")
    }
}

/// Asks the operator to type `yes` before `what` (for example "purge 12 dead
/// message(s)"), unless `yes` (`--yes`) was given. Without a terminal on stdin there is
/// nobody to ask: the step is refused.
pub(crate) fn confirm(what: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(anyhow!(
            "refusing to {what} without confirmation: stdin is not a terminal; pass --yes to \
             confirm"
        ));
    }
    eprint!("{what}? type yes to continue: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("read the confirmation")?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(anyhow!("not confirmed: did not {what}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(
            parse_time("2027-01-31T13:00:00+01:00").map(|t| t.to_rfc3339()),
            Ok("2027-01-31T12:00:00+00:00".to_owned())
        );
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn parser_messages_fit_on_one_line() {
        let toml = "TOML parse error at line 4, column 9\n  |\n4 | table = \"a b\"\n  |         \
                    ^^^^^\ninvalid Identifier `a b`: use a-z\n";
        assert_eq!(
            one_line(toml),
            "TOML parse error at line 4, column 9: invalid Identifier `a b`: use a-z"
        );
    }

    #[test]
    fn tables_are_identifiers() {
        assert!(parse_table("orders_outbox").is_ok());
        assert!(parse_table("orders; DROP TABLE x").is_err());
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let code = finish(Err(usage("bad")).map(|()| ExitCode::SUCCESS));
        assert_eq!(
            format!("{:?}", code.ok()),
            format!("{:?}", Some(ExitCode::from(EXIT_USAGE)))
        );
        assert!(finish(Err(anyhow!("failed"))).is_err());
    }
}
