//! `outbox migrate`: apply, roll back and inspect the outbox-rs schema migrations
//! (`outbox-migrations`) on a database.

use crate::database::{self, DATABASE_URL_ENV};
use crate::output::print_json;
use anyhow::Context;
use outbox_domain::Identifier;
use outbox_migrations::schema::OUTBOX_TABLE;
use outbox_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::MigrationStatus;
use std::process::ExitCode;

/// Options of `outbox migrate`.
#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    #[command(subcommand)]
    action: Action,
    /// Database to migrate: `postgres://…`, `mysql://…` or `sqlite:FILE` (created if
    /// missing). Required, here or in the environment.
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// Print one JSON document instead of text: `database`, `migrations` (name and
    /// status), `applied`, `rolled_back`, `reapplied` and `route_tables` (table and
    /// whether it exists).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Apply the pending migrations (all, or the next N), then create the outbox table
    /// of every service in `--routes`.
    Up {
        /// Apply only the next N pending migrations.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        steps: Option<u32>,
        #[command(flatten)]
        routes: RoutesArg,
    },
    /// Roll back the newest applied migrations (one by default). Rolling back drops
    /// the outbox tables that migration created, with their rows.
    Down {
        /// How many applied migrations to roll back, newest first.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        steps: u32,
    },
    /// Print each outbox-rs migration and whether it is Applied or Pending, and with
    /// `--routes`, whether each service's outbox table exists.
    Status {
        #[command(flatten)]
        routes: RoutesArg,
    },
    /// Roll back every outbox-rs migration, then apply them all again (only the outbox
    /// tables: unlike sea-orm-cli's `fresh`, it never drops the application's tables).
    ///
    /// This drops and recreates the outbox-rs tables (outbox_messages, outbox_inbox,
    /// outbox_cursors, outbox_compensations) and loses their rows; every other table
    /// is left alone. It is NOT sea-orm-cli's `migrate fresh`, which drops every table
    /// in the database, the application's own included: in a database shared with the
    /// application, that would destroy its data.
    Fresh,
}

/// `--routes FILE`: the routing configuration whose per-service tables to create.
#[derive(Debug, clap::Args)]
struct RoutesArg {
    /// A routing file (TOML, `[[services]]` and `[[events]]`, see docs/routing.md):
    /// each service's outbox table is created (`up`) or checked (`status`). The file
    /// is read and validated before the database is touched.
    #[arg(long, value_name = "FILE")]
    routes: Option<std::path::PathBuf>,
}

impl RoutesArg {
    /// The distinct outbox tables the routes name, other than the default one (which
    /// the migrations create), read and validated.
    fn tables(&self) -> anyhow::Result<Vec<Identifier>> {
        let Some(path) = &self.routes else {
            return Ok(Vec::new());
        };
        let mut tables = crate::admin::route_tables(path)?;
        tables.retain(|t| t.as_str() != OUTBOX_TABLE);
        Ok(tables)
    }
}

/// Exit code when no database URL was given (a usage error, like clap's own).
const EXIT_USAGE: u8 = 2;

pub(crate) async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let Some(url) = args.database_url.filter(|url| !url.trim().is_empty()) else {
        eprintln!(
            "error: `outbox migrate` needs the database: pass --database-url URL or set {DATABASE_URL_ENV}"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    // A bad routes file stops everything before the database is touched.
    let route_tables = match &args.action {
        Action::Up { routes, .. } | Action::Status { routes } => routes.tables()?,
        Action::Down { .. } | Action::Fresh => Vec::new(),
    };
    let db = database::connect(&url).await?;
    let database = database::describe(&url, db.get_database_backend());
    let before = statuses(&db).await?;
    if !matches!(args.action, Action::Status { .. }) {
        match &args.action {
            Action::Up { steps, .. } => Migrator::up(&db, *steps)
                .await
                .context("apply the migrations")?,
            Action::Down { steps } => Migrator::down(&db, Some(*steps))
                .await
                .context("roll back the migrations")?,
            Action::Fresh => Migrator::refresh(&db)
                .await
                .context("roll back and re-apply the migrations")?,
            Action::Status { .. } => {}
        }
        for table in &route_tables {
            outbox_migrations::prepare_outbox_table(&db, table.as_str())
                .await
                .with_context(|| format!("create the outbox table {table}"))?;
        }
    }
    let after = statuses(&db).await?;
    let changed = |from: MigrationStatus, to: MigrationStatus| {
        before
            .iter()
            .zip(&after)
            .filter(move |(b, a)| b.1 == from && a.1 == to)
            .map(|(b, _)| b.0.clone())
            .collect::<Vec<_>>()
    };
    let (applied, rolled_back, reapplied) = if matches!(args.action, Action::Status { .. }) {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        (
            changed(MigrationStatus::Pending, MigrationStatus::Applied),
            changed(MigrationStatus::Applied, MigrationStatus::Pending),
            changed(MigrationStatus::Applied, MigrationStatus::Applied),
        )
    };
    let mut present = Vec::with_capacity(route_tables.len());
    for table in &route_tables {
        present.push((table.to_string(), table_exists(&db, table).await));
    }

    if args.json {
        print_json(&serde_json::json!({
            "database": database,
            "migrations": after
                .iter()
                .map(|(name, status)| serde_json::json!({
                    "name": name,
                    "status": format!("{status:?}"),
                }))
                .collect::<Vec<_>>(),
            "applied": applied,
            "rolled_back": rolled_back,
            "reapplied": reapplied,
            "route_tables": present
                .iter()
                .map(|(table, exists)| serde_json::json!({ "table": table, "present": exists }))
                .collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("database: {database}");
    match args.action {
        Action::Status { .. } => {}
        Action::Fresh => println!(
            "rolled back and re-applied {} migration(s), applied {} pending one(s)",
            reapplied.len(),
            applied.len()
        ),
        Action::Up { .. } if applied.is_empty() => {
            println!("nothing to apply: every migration is applied");
        }
        Action::Down { .. } if rolled_back.is_empty() => {
            println!("nothing to roll back: no migration is applied");
        }
        _ => {
            for name in &applied {
                println!("applied      {name}");
            }
            for name in &rolled_back {
                println!("rolled back  {name}");
            }
        }
    }
    print_statuses(&after);
    for (table, exists) in &present {
        let state = if *exists { "present" } else { "missing" };
        println!("route table {table}  {state}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `table` exists (a `SELECT` that fails when it does not; the name is a
/// validated identifier).
async fn table_exists(db: &DatabaseConnection, table: &Identifier) -> bool {
    db.execute_unprepared(&format!("SELECT 1 FROM {table} WHERE 1 = 0"))
        .await
        .is_ok()
}

/// Each migration's name and status, oldest first, without writing anything (not
/// even the bookkeeping table, `outbox_migrations::MIGRATION_TABLE`, when it is missing).
async fn statuses(db: &DatabaseConnection) -> anyhow::Result<Vec<(String, MigrationStatus)>> {
    // sea-orm's read-only status needs sea-schema's backend features to find the
    // bookkeeping table; a plain catalog query does the same.
    let backend = db.get_database_backend();
    let table = Migrator::migration_table_name().to_string();
    let catalog = match backend {
        DbBackend::Sqlite => {
            "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = ?"
        }
        DbBackend::Postgres => {
            "SELECT 1 AS found FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        _ => {
            "SELECT 1 AS found FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = ?"
        }
    };
    let found = db
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            catalog,
            [table.into()],
        ))
        .await
        .context("read the migration status")?;
    if found.is_none() {
        return Ok(Migrator::migrations()
            .iter()
            .map(|m| (m.name().to_owned(), MigrationStatus::Pending))
            .collect());
    }
    Ok(Migrator::get_migration_with_status(db)
        .await
        .context("read the migration status")?
        .iter()
        .map(|m| (m.name().to_owned(), m.status()))
        .collect())
}

fn print_statuses(statuses: &[(String, MigrationStatus)]) {
    println!();
    for (name, status) in statuses {
        println!("{name}  {status}");
    }
}
